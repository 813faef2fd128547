"""
Live parameter changes, as ros2/demos' `set_parameters_callback.py` does them.

A validate callback (`add_on_set_parameters_callback`) accepts or refuses a change before
anything is set, a post-set callback (`add_post_set_parameters_callback`) applies what was set.

Nothing is copied by hand: the new values become a new `Params` (validated by the table), its
`detector_config()` (field names derived by the table) replaces the detector's config, and the
keyframe policy's thresholds follow their `kf_*` fields, and the verifier is rebuilt from its
`gv_*` fields when one changed (an ORB detector: microseconds; keyframes keep the features they
were stored with, whose keypoints are in full-frame pixels whatever side they were found at).
`ros2 param set` of a read-only parameter is refused with the reason 'restart needed'.
"""
from dataclasses import fields
from typing import Callable

from vpr_ros.core.detector import DetectorConfig
from vpr_ros.core.errors import VPRError
from vpr_ros.ros.params import BY_NAME, ParamError, Params, validate

POLICY_PREFIX = 'kf_'  # DetectorConfig.kf_x is KeyframePolicy.x
VERIFIER_PREFIX = 'gv_'  # DetectorConfig.gv_x builds the GeometricVerifier (make_verifier)
READ_EACH_FRAME = ('gv_first_only',)  # ... but these the detector reads from its config


def apply_config(detector, config: DetectorConfig) -> None:
    """Make a running LoopDetector use `config` (it reads its config at every frame)."""
    old = detector.config
    detector.config = config
    for f in fields(config):
        if f.name.startswith(POLICY_PREFIX):
            setattr(detector.policy, f.name[len(POLICY_PREFIX):], getattr(config, f.name))
    if getattr(detector, 'verifier', None) is not None and any(
            getattr(old, f.name) != getattr(config, f.name) for f in fields(config)
            if f.name.startswith(VERIFIER_PREFIX) and f.name not in READ_EACH_FRAME):
        detector.verifier = config.make_verifier()


class ParamUpdates:
    """The validate and post-set parameter callbacks of one node."""

    def __init__(self, node, current: Callable[[], Params],
                 apply: Callable[[Params], None]) -> None:
        self._current = current
        self._apply = apply
        node.add_on_set_parameters_callback(self.validate)
        node.add_post_set_parameters_callback(self.apply)

    @staticmethod
    def _changes(params) -> dict:
        """Return the validated values of the table's parameters among `params` (or raise)."""
        changes = {}
        for prm in params:
            spec = BY_NAME.get(prm.name)
            if spec is None:
                continue
            if spec.read_only:
                raise ParamError(f'{prm.name} is read-only (restart needed)')
            changes[prm.name] = validate(prm.name, prm.value)
        return changes

    def validate(self, params):
        """Accept a change only when every value and the resulting configuration are valid."""
        from rcl_interfaces.msg import SetParametersResult

        try:
            changes = self._changes(params)
            if changes:
                self._current().with_changes(changes).detector_config().validate()
        except (ParamError, VPRError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def apply(self, params) -> None:
        """After the set: the node's Params and the detector follow the new values."""
        changes = {prm.name: prm.value for prm in params if prm.name in BY_NAME}
        if changes:
            self._apply(self._current().with_changes(changes))
