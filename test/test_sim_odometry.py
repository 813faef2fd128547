"""
The simulator's drifting odometry (vpr_ros/sim/odometry.py) and the trajectory error (evo).

Exact increments must give ground truth back; the documented profile must drift the way a
robot's odometry does (ATE growing with the distance driven, reproducible per seed); the
bag writer must keep a non-drifting bag as before (odometry = ground truth, bit for bit) and
write the drifting one. The trajectory error wrapper is checked against cases whose ATE and
RPE are known by construction.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vpr_ros.sim.odometry import DriftingOdometry, OdomNoise, WHEEL_ODOMETRY  # noqa: E402
from vpr_ros.sim.trajectories import sample_traverse, TraverseSpec  # noqa: E402
from vpr_ros.sim.world import generate_world  # noqa: E402


@pytest.fixture(scope='module')
def laps():
    return sample_traverse(TraverseSpec(route='laps', rate_hz=20.0), generate_world(0))


def integrate(stamps, gt, noise: OdomNoise, seed: int = 0) -> np.ndarray:
    odo = DriftingOdometry(noise, seed)
    return np.array([odo.step(int(s), p) for s, p in zip(stamps, gt)])


def test_exact_increments_give_ground_truth(laps) -> None:
    stamps, gt = laps
    odom = integrate(stamps, gt, OdomNoise())
    assert np.abs(odom[:, :3] - gt[:, :3]).max() < 1e-9
    dots = np.abs(np.sum(odom[:, 3:] * gt[:, 3:], axis=1))
    assert dots.min() > 1 - 1e-12


def test_drift_grows_with_distance_and_is_seeded(laps) -> None:
    stamps, gt = laps
    odom = integrate(stamps, gt, WHEEL_ODOMETRY, seed=3)
    err = np.linalg.norm(odom[:, :2] - gt[:, :2], axis=1)
    thirds = np.array_split(err, 3)
    assert err[0] == 0.0
    assert thirds[0].mean() < thirds[1].mean() < thirds[2].mean()
    assert np.array_equal(odom, integrate(stamps, gt, WHEEL_ODOMETRY, seed=3))
    assert not np.array_equal(odom, integrate(stamps, gt, WHEEL_ODOMETRY, seed=4))
    assert np.allclose(odom[:, 2], gt[:, 2])  # height and attitude as ground truth
    # the scale error alone: the distance driven is 3 % longer
    scaled = integrate(stamps, gt, OdomNoise(scale_error=0.03))
    length = lambda p: np.linalg.norm(np.diff(p[:, :2], axis=0), axis=1).sum()  # noqa: E731
    assert length(scaled) == pytest.approx(1.03 * length(gt), rel=1e-3)


def test_ate_of_the_profile_is_what_the_docs_say(laps) -> None:
    pytest.importorskip('evo')
    from vpr_ros.tools.trajectory_error import trajectory_errors
    stamps, gt = laps
    ates = [trajectory_errors(stamps, gt, stamps, integrate(stamps, gt, WHEEL_ODOMETRY, s))
            ['ate_m'] for s in range(3)]
    assert all(2.2 < a < 2.8 for a in ates), ates  # odometry.py: 'laps' 168 m 2.4-2.7 m


def test_trajectory_error_known_cases(laps) -> None:
    pytest.importorskip('evo')
    from scipy.spatial.transform import Rotation

    from vpr_ros.tools.trajectory_error import trajectory_errors
    stamps, gt = laps
    # a rigidly moved copy: ATE 0 after alignment
    r = Rotation.from_euler('z', 30, degrees=True)
    moved = gt.copy()
    moved[:, :3] = r.apply(gt[:, :3]) + [5.0, -3.0, 0.0]
    moved[:, 3:] = (r * Rotation.from_quat(gt[:, 3:])).as_quat()
    e = trajectory_errors(stamps, gt, stamps, moved)
    assert e['ate_m'] < 1e-6 and e['rpe_m'] < 1e-6
    # every position off by 0.2 m sideways, alternating: the mean offset cannot be aligned away
    noisy = gt.copy()
    noisy[:, 1] += np.where(np.arange(len(gt)) % 2, 0.2, -0.2)
    assert trajectory_errors(stamps, gt, stamps, noisy)['ate_m'] == pytest.approx(0.2, rel=0.02)
    # a 10 % scale error on the first, straight 10 m: RPE over 2 m (evo measures the 2 m along
    # the estimate, i.e. 2 / 1.1 m of ground truth) is 0.1 x 2 / 1.1 m
    straight = np.linalg.norm(gt[:, :2] - gt[0, :2], axis=1) < 10.0
    straight[np.argmin(straight):] = False
    st, ref = stamps[straight], gt[straight]
    scaled = ref.copy()
    scaled[:, :2] = ref[0, :2] + 1.1 * (ref[:, :2] - ref[0, :2])
    e = trajectory_errors(st, ref, st, scaled, rpe_delta_m=2.0)
    assert e['rpe_m'] == pytest.approx(0.2 / 1.1, rel=0.03)


def test_bag_writer_odometry(tmp_path, laps) -> None:
    """odom_drift 0 writes ground truth as odometry; a level or an OdomNoise drifts."""
    from vpr_ros.sim.scene import Intrinsics
    from vpr_ros.sim.writers import BagWriter, GT_TOPIC, ODOM_TOPIC, read_bag_poses
    stamps, gt = laps
    intr = Intrinsics.from_hfov(64, 48, 90.0)
    out = {}
    for name, drift in (('exact', 0.0), ('level', 1.0), ('noise', WHEEL_ODOMETRY)):
        bag = BagWriter(str(tmp_path / name), intr, 10**18, drift, seed=5)
        for s, p in zip(stamps[:400], gt[:400]):
            bag.add_pose(int(s), p)
        bag.close()
        _, g = read_bag_poses(str(tmp_path / name), GT_TOPIC)
        _, o = read_bag_poses(str(tmp_path / name), ODOM_TOPIC)
        out[name] = o
        assert np.array_equal(g, gt[:400])
    assert np.array_equal(out['exact'], gt[:400])
    assert np.array_equal(out['level'], out['noise'])
    assert np.array_equal(out['level'], integrate(stamps[:400], gt[:400], WHEEL_ODOMETRY, 5))
