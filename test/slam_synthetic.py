"""
A drifting simulated traverse and the loop closures a good place recognizer would report on it.

For the back-end's tests without rendering or a vpr_node: ground truth from the simulator's
trajectory sampler on a garden route, odometry from the simulator's drift model
(vpr_ros/sim/odometry.py, the demo's profile), and loop observations as vpr_node publishes them:
camera frames at 2.5 Hz, keyframes 1 m apart, for each frame the (up to 3) earlier keyframes
outside a 30 s window whose field of view overlaps it (ψ > 0.5), each with the relative pose of
the known camera poses in the optical frames, perturbed like the node's estimates (rotation
0.5 deg, translation direction 5 deg; measured: median 0.33 deg and 4.7 deg), scale unknown.
`false_loops` draws wrong pairs (more than 15 m apart) with random relative poses, as the demo
does (vpr_ros/tools/false_loops.py).
"""
from dataclasses import dataclass
import functools

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.fov import fov_overlap_many
from vpr_ros.core.psi import planar
from vpr_ros.core.relative_pose import relative_from_poses
from vpr_ros.sim.odometry import DriftingOdometry, WHEEL_ODOMETRY
from vpr_ros.sim.trajectories import sample_traverse, TraverseSpec
from vpr_ros.tools.false_loops import draw_false_loops
from vpr_ros.tools.pose_graph import LoopObservation

POSE_RATE_HZ = 20.0
CAMERA_EVERY = 8          # 2.5 Hz camera frames among the 20 Hz poses
KEYFRAME_M = 1.0
EXCLUSION_S = 30.0


@dataclass
class Traverse:
    stamps_ns: np.ndarray     # (N,) at POSE_RATE_HZ
    gt: np.ndarray            # (N, 7)
    odom: np.ndarray          # (N, 7)


@functools.lru_cache(maxsize=8)
def drifting_traverse(route: str = 'laps', seed: int = 0) -> Traverse:
    from vpr_ros.sim.world import generate_world
    stamps, gt = sample_traverse(TraverseSpec(route=route, rate_hz=POSE_RATE_HZ),
                                 generate_world(0))
    odometry = DriftingOdometry(WHEEL_ODOMETRY, seed)
    odom = np.array([odometry.step(int(s), p) for s, p in zip(stamps, gt)])
    return Traverse(stamps, gt, odom)


def _perturbed(q: np.ndarray, t: np.ndarray, rng, rot_deg: float, dir_deg: float):
    r = Rotation.from_rotvec(rng.normal(size=3) * np.radians(rot_deg) / np.sqrt(3))
    q = (r * Rotation.from_quat(q)).as_quat()
    t = t / max(np.linalg.norm(t), 1e-9)
    axis = np.cross(t, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    t = Rotation.from_rotvec(axis * np.radians(dir_deg) * abs(rng.normal())).apply(t)
    return q, t


def node_like_loops(tr: Traverse, seed: int = 0, per_query: int = 3, rot_deg: float = 0.5,
                    dir_deg: float = 5.0) -> list[LoopObservation]:
    """Loop observations of every camera frame, best (highest ψ) first per query."""
    rng = np.random.default_rng([seed, 7])
    cams = np.arange(0, len(tr.stamps_ns), CAMERA_EVERY)
    keys, last = [], None
    for i in cams:
        if last is None or np.linalg.norm(tr.gt[i, :2] - tr.gt[last, :2]) >= KEYFRAME_M:
            keys.append(i)
            last = i
    keys = np.array(keys)
    xy, yaw = planar(tr.gt)
    out = []
    for i in cams:
        old = keys[tr.stamps_ns[keys] < tr.stamps_ns[i] - int(EXCLUSION_S * 1e9)]
        if not len(old):
            continue
        psi = fov_overlap_many(np.repeat(xy[i:i + 1], len(old), 0), np.repeat(yaw[i], len(old)),
                               xy[old], yaw[old])
        for j in old[np.argsort(-psi)][:per_query][np.sort(-psi)[:per_query] < -0.5]:
            q, t = relative_from_poses(tr.gt[i], tr.gt[j])
            parallax = np.degrees(np.linalg.norm(t) / 5.0)
            q, t = _perturbed(q, t, rng, rot_deg, dir_deg)
            out.append(LoopObservation(int(tr.stamps_ns[i]), int(tr.stamps_ns[j]), q, t, False,
                                       float(parallax)))
    return out


def false_loops(tr: Traverse, n: int, seed: int = 0, busy: tuple = ()) -> list[LoopObservation]:
    """`n` wrong loops between camera frames (the demo's generator); queries not in `busy`."""
    cams = np.arange(0, len(tr.stamps_ns), CAMERA_EVERY)
    return draw_false_loops(tr.stamps_ns[cams], tr.gt[cams, :2], n, seed, busy=busy)
