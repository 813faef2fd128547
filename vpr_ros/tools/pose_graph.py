"""
A planar pose graph that odometry builds and vpr_node's loop closures correct (GTSAM, iSAM2).

What the reference back-end (slam_backend.py) does with the messages, without ROS:

* **Nodes**: a Pose2 (x, y, yaw of the odometry's child frame on the ground plane) every
  `node_distance_m` driven or `node_angle_deg` turned. Pose2, not Pose3: a ground robot's
  odometry is planar, and a graph in 3D would need priors on height, roll and pitch that no
  factor here observes. **Odometry factors**: BetweenFactorPose2 of the odometry's increment,
  sigma growing with its length (5 % of the step, 1 deg per metre: wheel odometry).
* **Loop factors**, one per candidate row (up to `loops_per_query` per query), each between the
  graph nodes nearest in time to the two stamps (the odometry between a stamp and its node is
  composed in, as LIO-SAM attaches loops to its keyframes):
  - relative pose with metric scale (`scale_known` 1, from depth): BetweenFactorPose2 of it;
  - relative pose up to scale (monocular): its rotation (tight) and its translation
    *direction* (tight across it, `loop_sigma_range_m` along it: the scale is unknown, and the
    graph's odometry chain fixes it; the nominal range is the current estimate's);
  - parallax under `min_parallax_deg` (the direction is noise; the cameras are close):
    rotation and "same place" within `near_sigma_m`;
  - no relative pose (no camera_info, or `use_relative_pose` off): "same place" within
    `unposed_sigma_m`, heading within `unposed_sigma_yaw_deg` (`unposed_loops: weak`), or no
    factor (`skip`).
  The relative pose is in the cameras' optical frames (z forward): it is turned into the body
  frame (REP-103, x forward) with R_BODY_OPTICAL and the camera's mount in the odometry's child
  frame (`camera_mount`: x, y, yaw; the simulator's camera is that frame itself).
* A **robust kernel** (Cauchy by default) on every loop factor: a wrong loop's residual stays
  large and its weight small, so a few false loops cannot bend the map.
* **iSAM2**: each update adds the new nodes and factors; after loops, a few extra iterations
  (as LIO-SAM's mapOptimization does) let the relinearised robust weights settle.
"""
from dataclasses import dataclass
import math

import numpy as np

from vpr_ros.core.relative_pose import R_BODY_OPTICAL


@dataclass
class GraphConfig:
    """Keyframing, noise models and loop handling of the pose graph (see module docstring)."""

    node_distance_m: float = 0.5
    node_angle_deg: float = 10.0
    odom_sigma_m: float = 0.01             # per step, plus odom_sigma_per_m x its length
    odom_sigma_per_m: float = 0.05
    odom_sigma_yaw_deg: float = 0.1        # per step, plus per metre and per degree turned
    odom_sigma_yaw_deg_per_m: float = 1.0
    odom_sigma_yaw_per_turn: float = 0.05
    loop_sigma_yaw_deg: float = 2.0
    loop_sigma_dir_deg: float = 5.0        # of the translation direction (monocular)
    loop_sigma_range_m: float = 3.0        # along it: the unknown scale
    loop_max_range_m: float = 5.0          # nominal range is clipped to [0, this]
    loop_sigma_metric_m: float = 0.15      # translation known in metres (depth)
    min_parallax_deg: float = 1.0
    near_sigma_m: float = 0.5
    unposed_sigma_m: float = 1.5
    unposed_sigma_yaw_deg: float = 30.0
    unposed_loops: str = 'weak'            # 'weak' or 'skip'
    use_relative_pose: bool = True
    loops_per_query: int = 3
    robust_kernel: str = 'cauchy'          # 'cauchy', 'huber', 'dcs' or 'none'
    robust_k: float = 1.0
    extra_updates: int = 3
    camera_mount: tuple[float, float, float] = (0.0, 0.0, 0.0)   # x, y, yaw (deg) in the body


@dataclass
class LoopObservation:
    """One candidate row: the stamps and, when vpr/relative_pose gave one, the camera motion."""

    query_ns: int
    match_ns: int
    quaternion: np.ndarray | None = None   # query camera in the match camera (optical frames)
    translation: np.ndarray | None = None
    scale_known: bool = False
    parallax_deg: float = 0.0


def _compose(a, b) -> np.ndarray:
    """Planar a * b of (x, y, yaw) triples."""
    c, s = math.cos(a[2]), math.sin(a[2])
    return np.array([a[0] + c * b[0] - s * b[1], a[1] + s * b[0] + c * b[1], a[2] + b[2]])


def _inverse(a) -> np.ndarray:
    c, s = math.cos(a[2]), math.sin(a[2])
    return np.array([-c * a[0] - s * a[1], s * a[0] - c * a[1], -a[2]])


def _between(a, b) -> np.ndarray:
    """a^-1 * b, yaw wrapped to (-pi, pi]."""
    d = _compose(_inverse(a), b)
    d[2] = math.atan2(math.sin(d[2]), math.cos(d[2]))
    return d


def camera_motion(obs: LoopObservation) -> tuple[float, np.ndarray]:
    """(yaw, planar translation) of the query camera in the match camera, body axes (x forward)."""
    from scipy.spatial.transform import Rotation
    r = R_BODY_OPTICAL @ Rotation.from_quat(obs.quaternion).as_matrix() @ R_BODY_OPTICAL.T
    t = R_BODY_OPTICAL @ np.asarray(obs.translation, dtype=np.float64)
    return math.atan2(r[1, 0], r[0, 0]), t[:2]


class PoseGraph:
    """Odometry nodes, loop factors, iSAM2 (gtsam is imported here: only this tool needs it)."""

    def __init__(self, config: GraphConfig | None = None) -> None:
        import gtsam
        self.gtsam = gtsam
        self.config = config or GraphConfig()
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(0.01)
        params.relinearizeSkip = 1
        self.isam = gtsam.ISAM2(params)
        self.stamps: list[int] = []
        self.odom: list[np.ndarray] = []       # odometry (x, y, yaw) at each node
        self.z: list[float] = []               # odometry height at each node (for the path)
        self.estimate = np.zeros((0, 3))
        self.latest: tuple[int, np.ndarray, float] | None = None  # newest odometry sample
        self._graph = gtsam.NonlinearFactorGraph()
        self._values = gtsam.Values()
        self._loops_added = False
        self.counters = {'odometry': 0, 'odometry_out_of_order': 0, 'loop_factors': 0,
                         'loops_metric': 0, 'loops_direction': 0, 'loops_near': 0,
                         'loops_unposed': 0, 'loops_skipped': 0, 'loops_out_of_range': 0}

    # -- odometry ---------------------------------------------------------------------------
    def add_odometry(self, stamp_ns: int, x: float, y: float, yaw: float, z: float = 0.0
                     ) -> bool:
        """Take one odometry sample; return True when it became a new graph node."""
        g, cfg = self.gtsam, self.config
        pose = np.array([x, y, yaw], dtype=np.float64)
        if self.latest is not None and stamp_ns <= self.latest[0]:
            self.counters['odometry_out_of_order'] += 1
            return False
        self.counters['odometry'] += 1
        self.latest = (int(stamp_ns), pose, float(z))
        if not self.stamps:
            self._values.insert(0, g.Pose2(*pose))
            self._graph.add(g.PriorFactorPose2(0, g.Pose2(*pose),
                                               g.noiseModel.Isotropic.Sigma(3, 1e-4)))
            self._append(stamp_ns, pose, z, pose)
            return True
        delta = _between(self.odom[-1], pose)
        length = math.hypot(delta[0], delta[1])
        if length < cfg.node_distance_m and abs(delta[2]) < math.radians(cfg.node_angle_deg):
            return False
        k = len(self.stamps)
        sxy = cfg.odom_sigma_m + cfg.odom_sigma_per_m * length
        syaw = (math.radians(cfg.odom_sigma_yaw_deg + cfg.odom_sigma_yaw_deg_per_m * length)
                + cfg.odom_sigma_yaw_per_turn * abs(delta[2]))
        self._graph.add(g.BetweenFactorPose2(k - 1, k, g.Pose2(*delta),
                                             g.noiseModel.Diagonal.Sigmas([sxy, sxy, syaw])))
        guess = _compose(self.estimate[-1], delta)
        self._values.insert(k, g.Pose2(*guess))
        self._append(stamp_ns, pose, z, guess)
        return True

    def _append(self, stamp_ns: int, pose: np.ndarray, z: float, guess: np.ndarray) -> None:
        self.stamps.append(int(stamp_ns))
        self.odom.append(pose)
        self.z.append(float(z))
        self.estimate = np.vstack([self.estimate, guess])

    def odometry_at(self, stamp_ns: int) -> np.ndarray | None:
        """Odometry (x, y, yaw) at a stamp, interpolated between nodes (None: not covered)."""
        if not self.stamps or stamp_ns < self.stamps[0] or stamp_ns > self.latest[0]:
            return None
        i = int(np.searchsorted(self.stamps, stamp_ns, side='right')) - 1
        a_ns, a = self.stamps[i], self.odom[i]
        b_ns, b = ((self.stamps[i + 1], self.odom[i + 1]) if i + 1 < len(self.stamps)
                   else (self.latest[0], self.latest[1]))
        if b_ns == a_ns:
            return a.copy()
        f = (stamp_ns - a_ns) / (b_ns - a_ns)
        d = _between(a, b)
        return _compose(a, d * f)

    def nearest_node(self, stamp_ns: int) -> int:
        i = int(np.searchsorted(self.stamps, stamp_ns))
        near = [j for j in (i - 1, i) if 0 <= j < len(self.stamps)]
        return min(near, key=lambda j: abs(self.stamps[j] - stamp_ns))

    # -- loops ------------------------------------------------------------------------------
    def covers(self, stamp_ns: int) -> bool:
        """Whether odometry has reached the stamp (a loop at a later stamp has to wait)."""
        return self.latest is not None and stamp_ns <= self.latest[0]

    def add_loop(self, obs: LoopObservation) -> str:
        """Add the factor of one loop observation; return its kind (or why none was added)."""
        o_q, o_m = self.odometry_at(obs.query_ns), self.odometry_at(obs.match_ns)
        if o_q is None or o_m is None:
            self.counters['loops_out_of_range'] += 1
            return 'out_of_range'
        nq, nm = self.nearest_node(obs.query_ns), self.nearest_node(obs.match_ns)
        if nq == nm:
            self.counters['loops_out_of_range'] += 1
            return 'out_of_range'
        a = _between(self.odom[nm], o_m)          # match node -> match stamp
        b = _between(o_q, self.odom[nq])          # query stamp -> query node
        current = _between(_compose(self.estimate[nm], a),
                           _compose(self.estimate[nq], _inverse(b)))
        kind, z, cov = self._measurement(obs, current)
        if z is None:
            self.counters['loops_skipped'] += 1
            return kind
        g = self.gtsam
        z_nodes = _compose(_compose(a, z), b)
        ad = g.Pose2(*_inverse(b)).AdjointMap()
        noise = self._robust(g.noiseModel.Gaussian.Covariance(ad @ cov @ ad.T))
        self._graph.add(g.BetweenFactorPose2(nm, nq, g.Pose2(*z_nodes), noise))
        self.counters['loop_factors'] += 1
        self.counters[f'loops_{kind}'] += 1
        self._loops_added = True
        return kind

    def _measurement(self, obs: LoopObservation, current: np.ndarray):
        """(kind, body-frame Pose2 triple or None, 3x3 covariance in its tangent space)."""
        cfg = self.config
        if obs.quaternion is None or not cfg.use_relative_pose:
            if cfg.unposed_loops == 'skip':
                return 'skipped', None, None
            s, sy = cfg.unposed_sigma_m, math.radians(cfg.unposed_sigma_yaw_deg)
            return 'unposed', np.zeros(3), np.diag([s * s, s * s, sy * sy])
        yaw, t = camera_motion(obs)
        syaw2 = math.radians(cfg.loop_sigma_yaw_deg) ** 2
        if obs.scale_known:
            s2 = cfg.loop_sigma_metric_m ** 2
            z, cov, kind = np.array([t[0], t[1], yaw]), np.diag([s2, s2, syaw2]), 'metric'
        elif obs.parallax_deg < cfg.min_parallax_deg or np.linalg.norm(t) < 0.5:
            s2 = cfg.near_sigma_m ** 2
            z, cov, kind = np.array([0.0, 0.0, yaw]), np.diag([s2, s2, syaw2]), 'near'
        else:
            d = t / np.linalg.norm(t)
            rng = float(np.clip(current[:2] @ d, 0.0, cfg.loop_max_range_m))
            across = max(rng, 1.0) * math.radians(cfg.loop_sigma_dir_deg)
            c, s = math.cos(yaw), math.sin(yaw)
            u = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]])  # d in the query frame
            cov = np.zeros((3, 3))
            cov[:2, :2] = across ** 2 * np.eye(2) + (cfg.loop_sigma_range_m ** 2
                                                     - across ** 2) * np.outer(u, u)
            cov[2, 2] = syaw2
            z, kind = np.array([d[0] * rng, d[1] * rng, yaw]), 'direction'
        mount = np.array([*self.config.camera_mount[:2], math.radians(cfg.camera_mount[2])])
        if mount.any():  # the camera's motion seen from the body: E Z E^-1
            z = _compose(_compose(mount, z), _inverse(mount))
            ad = self.gtsam.Pose2(*mount).AdjointMap()
            cov = ad @ cov @ ad.T
        return kind, z, cov

    def _robust(self, base):
        g, cfg = self.gtsam, self.config
        kernels = {'cauchy': g.noiseModel.mEstimator.Cauchy,
                   'huber': g.noiseModel.mEstimator.Huber, 'dcs': g.noiseModel.mEstimator.DCS}
        if cfg.robust_kernel == 'none':
            return base
        return g.noiseModel.Robust.Create(kernels[cfg.robust_kernel].Create(cfg.robust_k), base)

    # -- optimisation and results -----------------------------------------------------------
    def update(self) -> bool:
        """Run iSAM2 on what was added since the last update; return whether anything was."""
        if self._graph.size() == 0 and self._values.size() == 0:
            return False
        self.isam.update(self._graph, self._values)
        if self._loops_added:
            for _ in range(self.config.extra_updates):
                self.isam.update()
        self._graph = self.gtsam.NonlinearFactorGraph()
        self._values = self.gtsam.Values()
        self._loops_added = False
        self.estimate = self.gtsam.utilities.extractPose2(self.isam.calculateEstimate())
        return True

    def correction(self) -> np.ndarray | None:
        """Planar map -> odom transform (x, y, yaw) of the newest node: estimate * odometry^-1."""
        if not self.stamps:
            return None
        return _compose(self.estimate[-1], _inverse(self.odom[-1]))
