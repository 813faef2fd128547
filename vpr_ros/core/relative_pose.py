"""
Relative pose between a query and its matched keyframe, from matched keypoints.

This is what a SLAM back-end needs to add a loop-closure edge, not just the fact that two
frames show one place.

With the camera intrinsics the matched keypoints give the essential matrix (5-point USAC with
local optimisation, `cv2.findEssentialMat`), and `cv2.recoverPose` picks the one of its four
(R, t) decompositions that puts the points in front of both cameras. Monocular geometry fixes
the translation only up to scale, so `translation` is a unit direction unless a depth image of
the query gives metres.

Convention (the transform a pose-graph edge match -> query wants): a point X in the query
camera's frame is ``R @ X + t`` in the match camera's frame, i.e. `quaternion` (x, y, z, w)
and `translation` are the query camera's orientation and position expressed in the match
camera's frame. Both frames are *optical* frames (z forward, x right, y down; ROS
``*_optical_frame``), because that is the frame the intrinsics describe.

Quality measures the caller can gate on: `inliers` (RANSAC inliers of the epipolar model),
`inlier_ratio` (of all matches given), `spread` (the fraction of the cells of a 4x4 grid over
the query image that hold at least one inlier: inliers bunched on one poster, spread 1/16, fix
the geometry poorly and are typical of a look-alike, not of the same place), `n_front` (inliers
in front of both cameras for the chosen decomposition) and `parallax_deg`, the median angle
between the two viewing rays of an inlier once the rotation is removed. A revisit from almost
the same spot (parallax well under 1 degree) still gives a good rotation, but its translation
direction is noise: measured on the simulated garden loop (baselines 0.05-0.3 m) the rotation
error was 0.3 degrees (median) and the direction error 30 degrees. A back-end should trust the
direction only with parallax (a few degrees) or with metric depth.

Metric scale (``depth`` given, registered to the query image: same viewpoint, any resolution):
each inlier keypoint with a valid depth d (median of the valid values in its 3x3 neighbourhood;
uint16 is millimetres, float metres, as REP-118 defines) is back-projected to X = d K^-1 [u v 1].
Its match ray m = K^-1 [u' v' 1] must be parallel to R X + s t, i.e. m x (R X) + s (m x t) = 0,
which gives one least-squares s per point; the scale is the median of those from points whose
ray is not nearly parallel to t (|m x t| > 0.05 |m|), and needs at least `min_depth_points` of
them. The median makes it robust to a few wrong depths (edges, reflections). `scale_known` says
whether `translation` is in metres.
"""
from dataclasses import dataclass
import math

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.errors import VPRError

SPREAD_GRID = 4
MIN_MATCHES = 5  # the 5-point algorithm's minimum
# USAC_ACCURATE (OpenCV >= 4.5) refines the model on its inliers; plain RANSAC keeps the minimal
# 5-point sample's model. Measured on test_relative_pose's scene (0.5 px noise): rotation error
# 1.26 vs 0.09 deg, translation direction 1.85 vs 0.24 deg, metric scale 23 % vs 1.4 % off.
_ESSENTIAL_METHOD = getattr(cv2, 'USAC_ACCURATE', cv2.RANSAC)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics (pixels) and optional distortion coefficients (OpenCV order)."""

    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        vals = (self.fx, self.fy, self.cx, self.cy) + tuple(self.dist)
        if not all(math.isfinite(float(v)) for v in vals):
            raise VPRError(f'intrinsics must be finite, got {vals}')
        if self.fx <= 0 or self.fy <= 0:
            raise VPRError(f'focal lengths must be > 0, got fx={self.fx} fy={self.fy}')

    @property
    def K(self) -> np.ndarray:
        """The 3x3 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_matrix(cls, K, dist=()) -> 'Intrinsics':
        """From a 3x3 matrix or its 9 row-major values (sensor_msgs/CameraInfo.k)."""
        K = np.asarray(K, dtype=np.float64).reshape(-1)
        if K.size != 9:
            raise VPRError(f'camera matrix needs 9 values, got {K.size}')
        dist = tuple(float(d) for d in np.asarray(dist, dtype=np.float64).ravel())
        if not any(dist):
            dist = ()
        return cls(float(K[0]), float(K[4]), float(K[2]), float(K[5]), dist)

    def undistort(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates with lens distortion removed (unchanged when there is none)."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if not self.dist or len(pts) == 0:
            return pts
        out = cv2.undistortPoints(pts.reshape(-1, 1, 2), self.K,
                                  np.asarray(self.dist, np.float64), P=self.K)
        return out.reshape(-1, 2)


@dataclass(frozen=True, eq=False)
class RelativePose:
    """Result of `estimate_relative_pose`; pose fields are None when `ok` is False."""

    ok: bool
    reason: str
    quaternion: np.ndarray | None   # (4,) x, y, z, w: query orientation in the match frame
    translation: np.ndarray | None  # (3,) query position in the match frame (unit or metres)
    scale_known: bool
    inliers: int
    n_matches: int
    spread: float
    inlier_mask: np.ndarray | None = None
    n_front: int = 0
    parallax_deg: float = 0.0

    @property
    def inlier_ratio(self) -> float:
        """Inliers over all matches given (0 when there were none)."""
        return self.inliers / self.n_matches if self.n_matches else 0.0

    @property
    def rotation_matrix(self) -> np.ndarray | None:
        """R of the convention in the module docstring."""
        return None if self.quaternion is None else Rotation.from_quat(self.quaternion).as_matrix()


def _fail(reason: str, inliers: int = 0, n: int = 0, spread: float = 0.0) -> RelativePose:
    return RelativePose(False, reason, None, None, False, int(inliers), int(n), float(spread))


def inlier_spread(pts: np.ndarray, image_size: tuple[int, int], grid: int = SPREAD_GRID) -> float:
    """Fraction of the cells of a grid x grid partition of the image holding at least one point."""
    h, w = int(image_size[0]), int(image_size[1])
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0 or h <= 0 or w <= 0:
        return 0.0
    col = np.clip((pts[:, 0] * grid / w).astype(np.int64), 0, grid - 1)
    row = np.clip((pts[:, 1] * grid / h).astype(np.int64), 0, grid - 1)
    return len(set(zip(row.tolist(), col.tolist()))) / float(grid * grid)


def _depth_at(depth: np.ndarray, pts: np.ndarray, image_size: tuple[int, int],
              depth_scale: float | None) -> np.ndarray:
    """Metric depth at each keypoint (median of valid values in 3x3), NaN where none."""
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[:, :, 0]
    if d.ndim != 2 or d.size == 0:
        raise VPRError(f'depth image must be HxW, got shape {d.shape}')
    if depth_scale is None:
        depth_scale = 0.001 if np.issubdtype(d.dtype, np.integer) else 1.0
    d = d.astype(np.float64) * depth_scale
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    dh, dw = d.shape
    sx, sy = dw / float(image_size[1]), dh / float(image_size[0])
    u = np.clip(np.round(pts[:, 0] * sx).astype(np.int64), 0, dw - 1)
    v = np.clip(np.round(pts[:, 1] * sy).astype(np.int64), 0, dh - 1)
    padded = np.pad(d, 1, constant_values=np.nan)
    win = np.stack([padded[v + 1 + dy, u + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    out = np.full(len(pts), np.nan)
    valid = np.isfinite(win).any(axis=0)
    out[valid] = np.nanmedian(win[:, valid], axis=0)
    return out


def _metric_scale(R: np.ndarray, t: np.ndarray, pq: np.ndarray, pm: np.ndarray,
                  K: np.ndarray, depths: np.ndarray, min_points: int) -> float | None:
    """Median per-point scale s of the unit translation (module docstring), None if unknown."""
    ok = np.isfinite(depths)
    if ok.sum() < min_points:
        return None
    Kinv = np.linalg.inv(K)
    rq = (Kinv @ np.c_[pq[ok], np.ones(ok.sum())].T).T
    rm = (Kinv @ np.c_[pm[ok], np.ones(ok.sum())].T).T
    X = rq * depths[ok][:, None]
    a = np.cross(rm, X @ R.T)
    b = np.cross(rm, np.broadcast_to(t, rm.shape))
    bb = np.einsum('ij,ij->i', b, b)
    good = np.sqrt(bb) > 0.05 * np.linalg.norm(rm, axis=1)
    if good.sum() < min_points:
        return None
    s = -np.einsum('ij,ij->i', a[good], b[good]) / bb[good]
    scale = float(np.median(s))
    return scale if scale > 0 and math.isfinite(scale) else None


def _best_decomposition(E: np.ndarray, pq: np.ndarray, pm: np.ndarray, K: np.ndarray,
                        mask: np.ndarray):
    """Run cv2.recoverPose on each candidate E (findEssentialMat may stack several)."""
    best = None
    for k in range(E.shape[0] // 3):
        m = mask.copy()
        n, R, t, m = cv2.recoverPose(E[3 * k:3 * k + 3], pq, pm, K, mask=m)
        if best is None or n > best[0]:
            best = (int(n), R, t.ravel(), m.ravel() > 0)
    return best


def estimate_relative_pose(pts_query, pts_match, intrinsics: Intrinsics,
                           image_size: tuple[int, int] | None = None,
                           ransac_threshold_px: float = 1.0, confidence: float = 0.999,
                           depth: np.ndarray | None = None, depth_scale: float | None = None,
                           min_depth_points: int = 5) -> RelativePose:
    """
    Relative pose of the query camera in the match camera's frame from matched keypoints.

    `pts_query`, `pts_match`: (N, 2) pixel coordinates, row i of one matching row i of the
    other (same camera, so one `intrinsics`). `image_size` (h, w) of the query image for the
    spread (default 2cy x 2cx). Never raises for bad geometry: ``ok=False`` with a reason.
    """
    pq = np.asarray(pts_query, dtype=np.float64).reshape(-1, 2)
    pm = np.asarray(pts_match, dtype=np.float64).reshape(-1, 2)
    if len(pq) != len(pm):
        raise VPRError(f'{len(pq)} query points for {len(pm)} match points')
    n = len(pq)
    if image_size is None:
        image_size = (max(1, round(2 * intrinsics.cy)), max(1, round(2 * intrinsics.cx)))
    if n < MIN_MATCHES:
        return _fail(f'too few matches for an essential matrix ({n})', n=n)
    K = intrinsics.K
    uq, um = intrinsics.undistort(pq), intrinsics.undistort(pm)
    try:
        E, mask = cv2.findEssentialMat(uq, um, K, _ESSENTIAL_METHOD, confidence,
                                       ransac_threshold_px)
    except cv2.error as exc:
        return _fail(f'essential matrix failed: {exc}', n=n)
    if E is None or mask is None or E.shape[0] < 3:
        return _fail('RANSAC found no essential matrix', n=n)
    try:
        n_front, R, t, front = _best_decomposition(E, uq, um, K, mask.astype(np.uint8))
    except cv2.error as exc:
        return _fail(f'recoverPose failed: {exc}', n=n)
    inl = mask.ravel() > 0
    n_in = int(inl.sum())
    spread = inlier_spread(pq[inl], image_size)
    reason = 'ok'
    if n_front < MIN_MATCHES and n_in >= MIN_MATCHES:
        # No triangulated point in front of both cameras: a (near) pure rotation, whose points
        # all lie at infinity. The rotation is still well defined; keep the decomposition's
        # rotation that maps the query rays onto the match rays, flag the translation.
        R, t = _rotation_only(E[:3], uq[inl], um[inl], K)
        front, reason = inl, 'no parallax: translation direction undetermined'
    if not np.all(np.isfinite(R)) or not np.all(np.isfinite(t)) or n_in < MIN_MATCHES:
        return _fail(f'{n_in} inliers, {n_front} in front of both cameras', n_in, n, spread)
    t = t / max(np.linalg.norm(t), 1e-12)
    scale_known = False
    if depth is not None:
        depths = _depth_at(depth, pq[front], image_size, depth_scale)
        scale = _metric_scale(R, t, uq[front], um[front], K, depths, min_depth_points)
        if scale is not None:
            t, scale_known = t * scale, True
    quat = Rotation.from_matrix(R).as_quat()
    return RelativePose(True, reason, quat, t, scale_known, n_in, n, spread, inl, n_front,
                        _parallax_deg(R, uq[inl], um[inl], K))


def _rotation_only(E: np.ndarray, pq: np.ndarray, pm: np.ndarray, K: np.ndarray):
    """Of the essential matrix's two rotations, the one with the least parallax; its t."""
    R1, R2, t = cv2.decomposeEssentialMat(E)
    R = min((R1, R2), key=lambda r: _parallax_deg(r, pq, pm, K))
    return R, t.ravel()


def _parallax_deg(R: np.ndarray, pq: np.ndarray, pm: np.ndarray, K: np.ndarray) -> float:
    """Median angle between each match ray and its rotated query ray (0 for pure rotation)."""
    Kinv = np.linalg.inv(K)
    rq = (Kinv @ np.c_[pq, np.ones(len(pq))].T).T @ R.T
    rm = (Kinv @ np.c_[pm, np.ones(len(pm))].T).T
    c = np.einsum('ij,ij->i', rq, rm) / (np.linalg.norm(rq, axis=1) * np.linalg.norm(rm, axis=1))
    return float(np.degrees(np.median(np.arccos(np.clip(c, -1.0, 1.0)))))


def rotation_error_deg(q_est, q_true) -> float:
    """Angle of the rotation between two quaternions (x, y, z, w), degrees."""
    r = Rotation.from_quat(q_est) * Rotation.from_quat(q_true).inv()
    return float(np.degrees(r.magnitude()))


def direction_error_deg(t_est, t_true) -> float:
    """Angle between two translation directions, degrees (scale ignored)."""
    a = np.asarray(t_est, dtype=np.float64)
    b = np.asarray(t_true, dtype=np.float64)
    c = a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


# Rotation from a REP-103 camera body frame (x forward, y left, z up) to its optical frame
# (z forward, x right, y down): the columns are the optical axes in body coordinates.
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def relative_from_poses(pose_query, pose_match, optical: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """
    Ground-truth (quaternion xyzw, translation) of the query in the match frame.

    Poses are 7-vectors [tx, ty, tz, qx, qy, qz, qw] of the camera body frames (REP-103) in
    one world frame; with `optical` the result is between the optical frames, as
    `estimate_relative_pose` reports it. For evaluating estimates against known poses.
    """
    pq = np.asarray(pose_query, dtype=np.float64).ravel()
    pm = np.asarray(pose_match, dtype=np.float64).ravel()
    if pq.size != 7 or pm.size != 7:
        raise VPRError('poses must be 7-vectors [tx, ty, tz, qx, qy, qz, qw]')
    Rq = Rotation.from_quat(pq[3:]).as_matrix()
    Rm = Rotation.from_quat(pm[3:]).as_matrix()
    R = Rm.T @ Rq
    t = Rm.T @ (pq[:3] - pm[:3])
    if optical:
        R = R_BODY_OPTICAL.T @ R @ R_BODY_OPTICAL
        t = R_BODY_OPTICAL.T @ t
    return Rotation.from_matrix(R).as_quat(), t
