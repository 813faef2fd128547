"""
Live parameter changes without a graph.

The validate and post-set callbacks, and the table's one-name-one-default link to the core's
DetectorConfig.
"""
from dataclasses import fields
from types import SimpleNamespace

from rclpy.parameter import Parameter

from vpr_ros.core.detector import DetectorConfig
from vpr_ros.core.keyframe import KeyframePolicy
from vpr_ros.ros.param_updates import apply_config, ParamUpdates
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


def test_validate_then_apply() -> None:
    state = {'params': Params({})}
    node = _Node()
    ParamUpdates(node, lambda: state['params'], lambda p: state.update(params=p))
    (check,), (after,) = node.validators, node.post
    res = check([Parameter('top_k', value=500)])
    assert not res.successful and "'top_k'" in res.reason
    res = check([Parameter('map_dir', value='/elsewhere')])
    assert not res.successful and 'read-only' in res.reason
    assert check([Parameter('not_ours', value=1)]).successful  # another layer's parameter
    changes = [Parameter('top_k', value=2), Parameter('score_threshold', value=0.5)]
    assert check(changes).successful
    assert state['params'].top_k == 5  # nothing applied before the set
    after(changes)
    assert state['params'].top_k == 2 and state['params'].score_threshold == 0.5
