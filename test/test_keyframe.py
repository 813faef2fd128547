"""KeyframePolicy: each criterion fires on its own, can be switched off, and time going back."""
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.keyframe import KeyframePolicy
from vpr_ros.core.pose_buffer import Pose

S = 1_000_000_000


def _pose(t: int, x: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> Pose:
    q = Rotation.from_euler('ZYX', [yaw, 0.0, roll], degrees=True).as_quat()
    return Pose(t, [x, 0.0, 0.0], q)


def test_first_then_distance_angle_interval() -> None:
    pol = KeyframePolicy(min_distance_m=1.0, min_angle_deg=15.0, max_interval_s=5.0)
    d = pol.decide(0, _pose(0))
    assert d.is_keyframe and d.reason == 'first'
    assert pol.decide(0, _pose(0)).is_keyframe  # decide does not mutate
    pol.accept(0, _pose(0))
    assert not pol.decide(S, _pose(S, x=0.9)).is_keyframe
    assert pol.decide(S, _pose(S, x=1.0)).reason == 'distance'
    assert not pol.decide(S, _pose(S, yaw=14.0)).is_keyframe
    assert pol.decide(S, _pose(S, yaw=-16.0)).reason == 'angle'
    # full 3D angle: a roll counts too
    assert pol.decide(S, _pose(S, roll=20.0)).reason == 'angle'
    assert pol.decide(5 * S, _pose(5 * S)).reason == 'interval'
    assert not pol.decide(4 * S, _pose(4 * S)).is_keyframe
    pol.accept(S, _pose(S, x=1.0))
    assert pol.last_stamp_ns == S
    assert not pol.decide(2 * S, _pose(2 * S, x=1.5)).is_keyframe
    assert pol.decide(2 * S, _pose(2 * S, x=2.0)).reason == 'distance'


def test_without_pose_time_and_novelty() -> None:
    pol = KeyframePolicy(novelty_threshold=0.85, max_interval_s=5.0, interval_no_pose_s=2.0)
    pol.accept(0, None)
    assert not pol.decide(S, None, 0.9).is_keyframe
    assert not pol.decide(S, None, None).is_keyframe
    assert pol.decide(S, None, 0.5).reason == 'novelty'
    # without a pose the shorter interval keeps the map dense in time (sequence alignment)
    assert pol.decide(2 * S, None, 0.97).reason == 'interval'
    # ... but not while the view stays the last keyframe's (standing still): the long interval
    assert pol.still_similarity == 0.985
    assert not pol.decide(2 * S, None, 0.99).is_keyframe
    assert pol.decide(5 * S, None, 0.99).reason == 'interval'
    unguarded = KeyframePolicy(max_interval_s=5.0, interval_no_pose_s=2.0, still_similarity=0)
    unguarded.accept(0, None)
    assert unguarded.decide(2 * S, None, 0.99).reason == 'interval'
    assert KeyframePolicy(interval_no_pose_s=0).decide(0, None).reason == 'first'
    no_short = KeyframePolicy(novelty_threshold=0.85, max_interval_s=5.0, interval_no_pose_s=0)
    no_short.accept(0, None)
    assert not no_short.decide(2 * S, None, 0.99).is_keyframe
    assert no_short.decide(6 * S, None, 0.99).reason == 'interval'
    # with a pose it is not used: a robot standing still adds one every max_interval_s
    posed = KeyframePolicy(max_interval_s=5.0, interval_no_pose_s=2.0)
    posed.accept(0, _pose(0))
    assert not posed.decide(2 * S, _pose(2 * S)).is_keyframe
    assert posed.decide(5 * S, _pose(5 * S)).reason == 'interval'
    # pose now but none at the last keyframe: distance unknown, novelty still works
    assert pol.decide(S, _pose(S, x=10.0), 0.5).reason == 'novelty'


def test_disabled_criteria() -> None:
    pol = KeyframePolicy(min_distance_m=0, min_angle_deg=None, max_interval_s=-1,
                         novelty_threshold=None)
    pol.accept(0, _pose(0))
    assert not pol.decide(100 * S, _pose(100 * S, x=50.0, yaw=90.0), 0.0).is_keyframe
    only_time = KeyframePolicy(min_distance_m=None, min_angle_deg=0, max_interval_s=2.0)
    only_time.accept(0, _pose(0))
    assert not only_time.decide(S, _pose(S, x=9.0)).is_keyframe
    assert only_time.decide(2 * S, _pose(2 * S)).is_keyframe


def test_stamps_going_backwards_and_reset() -> None:
    pol = KeyframePolicy(max_interval_s=5.0, reset_back_s=1.0)
    pol.accept(100 * S, _pose(100 * S))
    # small jitter back: no time elapsed, no crash, other criteria still apply
    j = pol.decide(100 * S - S // 2, _pose(0))
    assert not j.is_keyframe
    assert pol.decide(100 * S - S // 2, _pose(0, x=3.0)).reason == 'distance'
    # a big jump back (bag restarted): new sequence
    assert pol.decide(10 * S, _pose(10 * S)).reason == 'time_reset'
    pol.accept(10 * S, _pose(10 * S))
    assert not pol.decide(11 * S, _pose(11 * S)).is_keyframe
    pol.reset()
    assert pol.last_pose is None
    assert pol.decide(11 * S, _pose(11 * S)).reason == 'first'
    assert np.isclose(KeyframePolicy().min_distance_m, 1.0)


def test_defaults_have_one_home_the_node_s() -> None:
    """Policy, DetectorConfig and the shipped node config agree (issue 9: 0.85 vs 0.9)."""
    import os

    import yaml

    from vpr_ros.core.detector import DetectorConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, 'config', 'vpr.yaml')) as f:
        shipped = yaml.safe_load(f)['/**']['ros__parameters']
    pol, cfg = KeyframePolicy(), DetectorConfig()
    for name, ours, config in (('novelty_threshold', pol.novelty_threshold,
                                cfg.kf_novelty_threshold),
                               ('min_distance_m', pol.min_distance_m, cfg.kf_min_distance_m),
                               ('min_angle_deg', pol.min_angle_deg, cfg.kf_min_angle_deg),
                               ('max_interval_s', pol.max_interval_s, cfg.kf_max_interval_s),
                               ('interval_without_pose_s', pol.interval_no_pose_s,
                                cfg.kf_interval_no_pose_s),
                               ('still_similarity', pol.still_similarity,
                                cfg.kf_still_similarity)):
        assert ours == config == shipped[f'keyframe_{name}'], name
    assert cfg.geometric_verification is shipped['geometric_verification'] is True
