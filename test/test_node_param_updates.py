"""
Live parameter changes without a graph.

The validate and post-set callbacks, and the table's one-name-one-default link to the core's
DetectorConfig.
"""
from dataclasses import fields
from types import SimpleNamespace

from rclpy.parameter import Parameter

from vpr_ros.core.calibration import OperatingPoint
from vpr_ros.core.detector import DetectorConfig
from vpr_ros.core.keyframe import KeyframePolicy
from vpr_ros.ros.detector_config import apply_config, RunningConfig
from vpr_ros.ros.param_updates import ParamUpdates
from vpr_ros.ros.params import Params, SPECS


def test_core_parameters_take_the_core_defaults_and_names() -> None:
    core = DetectorConfig()
    linked = [s for s in SPECS if s.field]
    assert {s.field for s in linked} >= {'top_k', 'score_threshold', 'exclusion_s',
                                         'kf_min_distance_m', 'kf_novelty_threshold',
                                         'geometric_verification'}
    for s in linked:
        assert s.default == getattr(core, s.field), s.name
    assert Params({}).detector_config() == core  # the node's defaults are the core's
    assert core.geometric_verification is True  # what the node has always shipped
    cfg = Params({'keyframe_min_distance_m': 2.5, 'exclusion_keyframes': 3}).detector_config()
    assert cfg.kf_min_distance_m == 2.5 and cfg.exclusion_n == 3


def test_apply_config_reaches_the_keyframe_policy() -> None:
    policy = KeyframePolicy()
    detector = SimpleNamespace(config=DetectorConfig(), policy=policy)
    for f in fields(DetectorConfig):
        if f.name.startswith('kf_'):
            assert hasattr(policy, f.name[3:]), f'KeyframePolicy has no {f.name[3:]}'
    new = Params({'keyframe_min_angle_deg': 40.0, 'top_k': 2}).detector_config()
    apply_config(detector, new)
    assert detector.config.top_k == 2 and policy.min_angle_deg == 40.0


class _Node:
    """What ParamUpdates needs of an rclpy node: the two callback registrations."""

    def __init__(self) -> None:
        self.validators, self.post = [], []

    def add_on_set_parameters_callback(self, cb) -> None:
        self.validators.append(cb)

    def add_post_set_parameters_callback(self, cb) -> None:
        self.post.append(cb)


def _running(params: Params, point=None, explicit=()) -> RunningConfig:
    return RunningConfig(params, point, 'no point', frozenset(explicit))


def test_validate_then_apply() -> None:
    state = {'run': _running(Params({}))}
    node = _Node()
    ParamUpdates(node, lambda: state['run'], lambda r: state.update(run=r))
    (check,), (after,) = node.validators, node.post
    res = check([Parameter('top_k', value=500)])
    assert not res.successful and "'top_k'" in res.reason
    res = check([Parameter('map_dir', value='/elsewhere')])
    assert not res.successful and 'read-only' in res.reason
    assert check([Parameter('not_ours', value=1)]).successful  # another layer's parameter
    changes = [Parameter('top_k', value=2), Parameter('score_threshold', value=0.5)]
    assert check(changes).successful
    assert state['run'].params.top_k == 5  # nothing applied before the set
    after(changes)
    assert state['run'].params.top_k == 2 and state['run'].params.score_threshold == 0.5
    assert {'top_k', 'score_threshold'} <= state['run'].explicit  # set by the user now


def _point(score: float, inliers: int | None = 14) -> OperatingPoint:
    return OperatingPoint(score, inliers, 1.0, 1.0, 0.5, 100, {'name': 'test'})


def test_a_change_is_validated_on_the_config_it_would_apply() -> None:
    """
    Issue 18: the validate callback checked the uncalibrated config, not the applied one.

    With a model point the detector would run at a threshold the parameters never show; a
    change must be refused when the config it would apply is invalid (here the point's
    threshold, out of range), and accepted once the user's own threshold replaces it.
    """
    state = {'run': _running(Params({}), _point(1.5))}
    node = _Node()
    ParamUpdates(node, lambda: state['run'], lambda r: state.update(run=r))
    (check,), _ = node.validators, node.post
    res = check([Parameter('top_k', value=3)])
    assert not res.successful and 'score_threshold' in res.reason
    assert check([Parameter('score_threshold', value=0.9)]).successful


def test_a_threshold_set_to_its_default_is_the_users() -> None:
    """
    Issue 18: a value counted as set by the user only when it differed from the default.

    Started with score_threshold 0.8 (the default) on purpose, the node must run 0.8, not the
    model's calibrated point; unset, the point applies.
    """
    point = _point(0.9231)
    default = Params({}).score_threshold
    given = _running(Params({'score_threshold': default}), point, {'score_threshold'})
    assert given.detector_config().score_threshold == default
    assert given.detector_config().gv_min_inliers == 14  # not given: the point's
    assert 'set explicitly' in given.note()
    unset = _running(Params({}), point)
    assert unset.detector_config().score_threshold == 0.9231
    live = unset.with_changes({'score_threshold': default})  # ros2 param set, to the default
    assert live.detector_config().score_threshold == default
