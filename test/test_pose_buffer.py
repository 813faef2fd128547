"""PoseBuffer: interpolation against scipy, refusals counted, bounded and fast."""
import math
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.errors import PoseError
from vpr_ros.core.pose_buffer import Pose, PoseBuffer

S = 1_000_000_000


def _q(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    return Rotation.from_euler('ZYX', [yaw_deg, pitch_deg, 0.0], degrees=True).as_quat()


def test_pose_vector_round_trip_and_yaw() -> None:
    p = Pose(5, [1.0, 2.0, 3.0], 2.0 * _q(30.0))  # not unit: normalised on the way in
    assert np.isclose(np.linalg.norm(p.quaternion), 1.0)
    assert math.isclose(math.degrees(p.yaw), 30.0, abs_tol=1e-9)
    back = Pose.from_vector(5, p.vector())
    assert np.allclose(back.vector(), p.vector())
    assert p.vector().shape == (7,)
    # pitch does not change the heading of the +x axis
    assert math.isclose(math.degrees(Pose(0, [0, 0, 0], _q(-120.0, 25.0)).yaw), -120.0,
                        abs_tol=1e-9)
    with pytest.raises(PoseError):
        Pose(0, [0, 0, np.nan], _q(0))
    with pytest.raises(PoseError):
        Pose(0, [0, 0, 0], [0, 0, 0, 0])


def test_interpolation_linear_and_slerp() -> None:
    buf = PoseBuffer(max_gap_s=1.0)
    assert buf.add(0, [0, 0, 0], _q(0))
    assert buf.add(S // 2, [1.0, 2.0, 0.0], _q(90))
    p = buf.pose_at(S // 8)
    assert np.allclose(p.position, [0.25, 0.5, 0.0])
    assert math.isclose(math.degrees(p.yaw), 22.5, abs_tol=1e-6)
    assert p.stamp_ns == S // 8
    # exact stamps give the stored pose
    assert np.allclose(buf.pose_at(S // 2).position, [1.0, 2.0, 0.0])
    # slerp takes the short way across ±180°
    buf2 = PoseBuffer()
    buf2.add(0, [0, 0, 0], _q(170))
    buf2.add(100, [0, 0, 0], _q(-170))
    assert math.isclose(abs(math.degrees(buf2.pose_at(50).yaw)), 180.0, abs_tol=1e-6)
    # q and -q are the same rotation: no detour
    buf3 = PoseBuffer()
    buf3.add(0, [0, 0, 0], _q(10))
    buf3.add(100, [0, 0, 0], -_q(20))
    assert math.isclose(math.degrees(buf3.pose_at(50).yaw), 15.0, abs_tol=1e-6)


def test_refuses_extrapolation_and_gaps_with_counters() -> None:
    buf = PoseBuffer(max_gap_s=0.5, tolerance_s=0.01)
    assert buf.pose_at(0) is None
    buf.add(1 * S, [0, 0, 0], _q(0))
    buf.add(int(1.2 * S), [1, 0, 0], _q(0))
    buf.add(int(2.2 * S), [2, 0, 0], _q(0))  # 1 s gap before this one
    assert buf.pose_at(int(0.5 * S)) is None
    assert buf.pose_at(int(3.0 * S)) is None
    assert buf.counters['outside_range'] == 3
    # within tolerance of the ends: the end pose, at the asked stamp
    near = buf.pose_at(int(2.2 * S) + 5_000_000)
    assert near is not None and np.allclose(near.position, [2, 0, 0])
    assert buf.pose_at(int(0.995 * S)) is not None
    assert buf.pose_at(int(1.5 * S)) is None
    assert buf.counters['gap'] == 1
    assert buf.pose_at(int(1.1 * S)) is not None
    # gap check off
    off = PoseBuffer(max_gap_s=None)
    off.add(0, [0, 0, 0], _q(0))
    off.add(10 * S, [10, 0, 0], _q(0))
    assert np.allclose(off.pose_at(5 * S).position, [5, 0, 0])


def test_bad_input_ignored_and_counted() -> None:
    buf = PoseBuffer()
    assert buf.add(10, [0, 0, 0], _q(0))
    assert not buf.add(20, [np.nan, 0, 0], _q(0))
    assert not buf.add(20, [0, 0, 0], [np.inf, 0, 0, 1])
    assert not buf.add(20, [0, 0, 0], [0, 0, 0, 0])
    assert not buf.add(5, [0, 0, 0], _q(0))
    assert not buf.add(10, [0, 0, 0], _q(0))
    assert buf.counters['nan_pose'] == 2
    assert buf.counters['zero_quaternion'] == 1
    assert buf.counters['out_of_order'] == 1
    assert buf.counters['duplicate'] == 1
    assert len(buf) == 1
    assert buf.add(30, [1, 0, 0], [0, 0, 0, 5.0])  # normalised
    assert np.allclose(buf.latest().quaternion, [0, 0, 0, 1])
    assert buf.latest().stamp_ns == 30


def test_capacity_drops_oldest() -> None:
    buf = PoseBuffer(capacity=5)
    for k in range(12):
        buf.add(k * S, [k, 0, 0], _q(0))
    assert len(buf) == 5
    assert buf.oldest().stamp_ns == 7 * S
    assert buf.counters['dropped_capacity'] == 7
    assert buf.pose_at(S) is None
    buf.clear()
    assert len(buf) == 0 and buf.latest() is None


def test_pose_at_is_fast_on_a_full_buffer() -> None:
    buf = PoseBuffer(capacity=10000, max_gap_s=None)
    rng = np.random.default_rng(0)
    for k in range(10000):
        buf.add(k * 10_000_000, rng.normal(size=3), Rotation.random(random_state=k).as_quat())
    stamps = rng.integers(0, 9999 * 10_000_000, size=500)
    t0 = time.perf_counter()
    for s in stamps:
        assert buf.pose_at(int(s)) is not None
    per_call = (time.perf_counter() - t0) / len(stamps)
    assert per_call < 2e-3, per_call  # bisect + one slerp, not a scan
    # against scipy's Slerp over the whole track
    k = 4321
    t = k * 10_000_000 + 2_500_000
    q0, q1 = buf.pose_at(k * 10_000_000).quaternion, buf.pose_at((k + 1) * 10_000_000).quaternion
    ref = Rotation.from_quat(q0).inv() * buf.pose_at(t).rotation
    whole = Rotation.from_quat(q0).inv() * Rotation.from_quat(q1)
    assert math.isclose(ref.magnitude(), 0.25 * whole.magnitude(), rel_tol=1e-6)
