"""Relative pose from matched keypoints: synthetic 3D points seen from two known camera poses."""
import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.errors import VPRError
from vpr_ros.core.relative_pose import (
    direction_error_deg,
    estimate_relative_pose,
    inlier_spread,
    Intrinsics,
    relative_from_poses,
    rotation_error_deg,
)

W, H = 640, 480
CAM = Intrinsics(500.0, 505.0, 320.0, 240.0)


def _scene(rng, n=200, R=None, t=None, noise_px=0.5, outliers=0.0, cam=CAM):
    """
    Points in front of the match camera, seen by the match camera and by the query camera.

    The query camera's pose in the match frame is (R, t): X_match = R X_query + t.
    Returns pixel coordinates (query, match), the query-frame depths and the truth.
    """
    R = Rotation.from_euler('xyz', [3, -12, 2], degrees=True).as_matrix() if R is None else R
    t = np.array([0.8, 0.05, 0.3]) if t is None else np.asarray(t, float)
    Xm = np.c_[rng.uniform(-4, 4, n), rng.uniform(-3, 3, n), rng.uniform(5, 12, n)]
    Xq = (Xm - t) @ R  # R^T (Xm - t)
    K = cam.K

    def proj(X):
        p = (K @ X.T).T
        return p[:, :2] / p[:, 2:3]

    pq = proj(Xq) + rng.normal(0, noise_px, (n, 2))
    pm = proj(Xm) + rng.normal(0, noise_px, (n, 2))
    keep = ((Xq[:, 2] > 0.5) & (pq[:, 0] >= 0) & (pq[:, 0] < W) & (pq[:, 1] >= 0)
            & (pq[:, 1] < H) & (pm[:, 0] >= 0) & (pm[:, 0] < W) & (pm[:, 1] >= 0)
            & (pm[:, 1] < H))
    pq, pm, depth_q = pq[keep], pm[keep], Xq[keep, 2]
    n_out = int(outliers * len(pq))
    if n_out:
        pm[:n_out] = rng.uniform([0, 0], [W, H], (n_out, 2))
    return pq, pm, depth_q, Rotation.from_matrix(R).as_quat(), t


def test_rotation_and_translation_direction_recovered():
    rng = np.random.default_rng(0)
    pq, pm, _, q_true, t_true = _scene(rng, outliers=0.3)
    res = estimate_relative_pose(pq, pm, CAM, (H, W))
    assert res.ok, res.reason
    rot_err = rotation_error_deg(res.quaternion, q_true)
    dir_err = direction_error_deg(res.translation, t_true)
    print(f'rotation error {rot_err:.3f} deg, direction error {dir_err:.3f} deg, '
          f'inliers {res.inliers}/{res.n_matches}')
    assert rot_err < 0.5 and dir_err < 1.0
    assert np.linalg.norm(res.translation) == pytest.approx(1.0) and not res.scale_known
    assert 0.6 < res.inlier_ratio < 0.75  # 30 % outliers were planted
    assert not res.inlier_mask[:int(0.3 * len(pq)) - 5].all()
    assert res.spread > 0.5


def test_sideways_and_forward_motion():
    rng = np.random.default_rng(1)
    for t in ([-1.0, 0.0, 0.0], [0.1, 0.0, 1.5], [0.5, 0.4, -0.5]):
        R = Rotation.from_euler('y', rng.uniform(-20, 20), degrees=True).as_matrix()
        pq, pm, _, q_true, t_true = _scene(rng, R=R, t=t)
        res = estimate_relative_pose(pq, pm, CAM, (H, W))
        assert res.ok, res.reason
        assert rotation_error_deg(res.quaternion, q_true) < 0.5
        assert direction_error_deg(res.translation, t_true) < 1.5


def test_metric_scale_from_a_depth_image():
    rng = np.random.default_rng(2)
    pq, pm, depth_q, q_true, t_true = _scene(rng, n=300)
    depth = np.zeros((H, W), np.uint16)  # millimetres, sparse: only where a point projects
    u, v = np.round(pq).astype(int).T
    depth[v, u] = np.round(depth_q * 1000).astype(np.uint16)
    depth[v[:10], u[:10]] = 200  # a few wrong depths (0.2 m): the median ignores them
    res = estimate_relative_pose(pq, pm, CAM, (H, W), depth=depth)
    assert res.ok and res.scale_known
    scale_err = abs(np.linalg.norm(res.translation) - np.linalg.norm(t_true))
    assert scale_err < 0.03 * np.linalg.norm(t_true)
    assert direction_error_deg(res.translation, t_true) < 1.5
    # float metres, half resolution (registered, other size): still metric
    small = np.full((H // 2, W // 2), np.nan, np.float32)
    small[v // 2, u // 2] = depth_q
    res = estimate_relative_pose(pq, pm, CAM, (H, W), depth=small)
    assert res.scale_known
    assert abs(np.linalg.norm(res.translation) - np.linalg.norm(t_true)) < 0.1
    # no valid depth at all: unit direction, scale unknown
    res = estimate_relative_pose(pq, pm, CAM, (H, W), depth=np.zeros((H, W), np.uint16))
    assert res.ok and not res.scale_known
    assert np.linalg.norm(res.translation) == pytest.approx(1.0)


def test_distortion_is_removed_before_the_geometry():
    rng = np.random.default_rng(3)
    pq, pm, _, q_true, t_true = _scene(rng, noise_px=0.2)
    dist = np.array([-0.2, 0.05, 0.0, 0.0, 0.0])
    cam = Intrinsics.from_matrix(CAM.K.ravel().tolist(), dist)
    import cv2

    def distort(p):
        n = (p - [CAM.cx, CAM.cy]) / [CAM.fx, CAM.fy]
        pts3 = np.c_[n, np.ones(len(n))]
        out, _ = cv2.projectPoints(pts3, np.zeros(3), np.zeros(3), CAM.K, dist)
        return out.reshape(-1, 2)

    dq, dm = distort(pq), distort(pm)
    naive = estimate_relative_pose(dq, dm, CAM, (H, W))
    res = estimate_relative_pose(dq, dm, cam, (H, W))
    assert res.ok
    assert rotation_error_deg(res.quaternion, q_true) < 0.5
    assert direction_error_deg(res.translation, t_true) < 1.5
    assert res.inliers > naive.inliers


def test_random_matches_and_bad_input_never_raise():
    rng = np.random.default_rng(4)
    pq = rng.uniform([0, 0], [W, H], (100, 2))
    pm = rng.uniform([0, 0], [W, H], (100, 2))
    res = estimate_relative_pose(pq, pm, CAM, (H, W))
    assert not res.ok or res.inlier_ratio < 0.5
    res = estimate_relative_pose(pq[:4], pm[:4], CAM)
    assert not res.ok and 'too few' in res.reason and res.quaternion is None
    with pytest.raises(VPRError):
        estimate_relative_pose(pq[:10], pm[:9], CAM)
    with pytest.raises(VPRError):
        Intrinsics(0.0, 500.0, 320.0, 240.0)
    with pytest.raises(VPRError):
        Intrinsics.from_matrix([1, 2, 3])


def test_spread_of_bunched_inliers_is_low():
    rng = np.random.default_rng(5)
    assert inlier_spread(rng.uniform([0, 0], [W, H], (200, 2)), (H, W)) == 1.0
    bunched = rng.uniform([10, 10], [100, 100], (200, 2))
    assert inlier_spread(bunched, (H, W)) == pytest.approx(1 / 16)
    assert inlier_spread(np.zeros((0, 2)), (H, W)) == 0.0


def test_ground_truth_from_body_poses_matches_the_estimate_convention():
    # match camera at the origin looking along +x (REP-103 body frame), query 1 m to its left
    # (+y) turned 10 degrees to the left (+yaw): in the optical frame the query sits at -x
    # (x right) and is rotated by -10 degrees about optical y (y down).
    yaw = Rotation.from_euler('z', 10, degrees=True).as_quat()
    q, t = relative_from_poses([0, 1, 0, *yaw], [0, 0, 0, 0, 0, 0, 1])
    assert np.allclose(t, [-1, 0, 0])
    assert rotation_error_deg(q, Rotation.from_euler('y', -10, degrees=True).as_quat()) < 1e-6
    q_body, t_body = relative_from_poses([0, 1, 0, *yaw], [0, 0, 0, 0, 0, 0, 1], optical=False)
    assert np.allclose(t_body, [0, 1, 0])


def test_pure_rotation_keeps_the_rotation_and_reports_no_parallax():
    """A revisit from the same spot: rotation still right, parallax ~0 flags the direction."""
    rng = np.random.default_rng(6)
    R = Rotation.from_euler('y', 15, degrees=True).as_matrix()
    pq, pm, _, q_true, _ = _scene(rng, R=R, t=[0.0, 0.0, 0.0], noise_px=0.3)
    res = estimate_relative_pose(pq, pm, CAM, (H, W))
    assert res.ok, res.reason
    assert rotation_error_deg(res.quaternion, q_true) < 0.5
    assert res.parallax_deg < 0.2 and res.inlier_ratio > 0.9
    moving = estimate_relative_pose(*_scene(rng)[:2], CAM, (H, W))
    assert moving.parallax_deg > 2.0


def _photo_views():
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from image_sequences import photo
    img = photo('astronaut')
    return img[60:300, 60:380], img[80:320, 100:420]


def test_verifier_with_intrinsics_carries_the_pose():
    from vpr_ros.core.verification import GeometricVerifier
    v = GeometricVerifier()
    a, b = _photo_views()
    fa, fb = v.extract(a), v.extract(b)
    plain = v.verify(fa, fb)
    assert plain.ok and plain.pose is None and plain.inlier_ratio > 0.9 and plain.spread >= 0.4
    cam = Intrinsics(300.0, 300.0, 160.0, 120.0)
    res = v.verify(fa, fb, intrinsics=cam)
    assert res.ok and res.pose is not None and res.pose.ok
    # the pose is re-estimated at 1 px: fewer inliers than the 3 px acceptance
    assert 0 < res.pose.inliers <= res.inliers and res.inlier_ratio > 0.9
    # a shifted crop of one flat photo is a homography: the rotation is small, whatever t is
    assert np.degrees(Rotation.from_quat(res.pose.quaternion).magnitude()) < 15


def _synthetic_features(rng, n_true, n_false, region=(320, 240)):
    """Exact-duplicate ORB descriptors: n_true moved by one shift, n_false to random places."""
    from vpr_ros.core.verification import Features
    n = n_true + n_false
    desc = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    kq = rng.uniform([0, 0], region, (n, 2)).astype(np.float32)
    km = kq + np.float32([12.0, 5.0])
    km[n_true:] = rng.uniform([0, 0], [320, 240], (n_false, 2))
    return (Features('orb', kq, desc, (240, 320)), Features('orb', km, desc.copy(), (240, 320)))


def test_verifier_rejects_low_inlier_ratio_and_bunched_inliers():
    from vpr_ros.core.verification import GeometricVerifier
    rng = np.random.default_rng(7)
    v = GeometricVerifier(ransac_threshold_px=1.0)
    good = v.verify(*_synthetic_features(rng, 60, 10))
    assert good.ok, good
    low = v.verify(*_synthetic_features(rng, 30, 70))
    assert not low.ok and 'inlier ratio' in low.reason and low.inliers >= 15, low
    bunched = v.verify(*_synthetic_features(rng, 40, 0, region=(70, 50)))
    assert not bunched.ok and 'spread' in bunched.reason and bunched.spread <= 1 / 16, bunched
    lenient = GeometricVerifier(ransac_threshold_px=1.0, min_inlier_ratio=0.0, min_spread=0.0)
    assert lenient.verify(*_synthetic_features(rng, 40, 0, region=(70, 50))).ok
    with pytest.raises(VPRError):
        GeometricVerifier(min_spread=1.5)


def test_small_frames_are_enlarged_for_features(corridor_dir):
    """160x120 corridor frames: enlarged to 320 px, ORB keeps its features, keypoints in place."""
    import cv2

    from vpr_ros.core.verification import GeometricVerifier
    img = cv2.imread(os.path.join(corridor_dir, 'ref', '0000010.jpg'))
    small, enlarged = GeometricVerifier(), GeometricVerifier(max_side=320, min_side=320)
    fs, fe = small.extract(img, 'bgr8'), enlarged.extract(img, 'bgr8')
    assert fe.image_size == fs.image_size == (120, 160)
    assert len(fe) > 1.5 * len(fs)
    assert fe.keypoints[:, 0].max() < 160 and fe.keypoints[:, 1].max() < 120
    q = cv2.imread(os.path.join(corridor_dir, 'query', '0000010.jpg'))
    res = enlarged.verify(enlarged.extract(q, 'bgr8'), fe)
    assert res.inliers > small.verify(small.extract(q, 'bgr8'), fs).inliers
    with pytest.raises(VPRError):
        GeometricVerifier(max_side=100, min_side=320)
