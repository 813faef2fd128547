"""
Live parameter changes, as ros2/demos' `set_parameters_callback.py` does them.

A validate callback (`add_on_set_parameters_callback`) accepts or refuses a change before
anything is set, a post-set callback (`add_post_set_parameters_callback`) applies what was set.

Nothing is copied by hand: the new values become a new `RunningConfig`
(vpr_ros/ros/detector_config.py: the parameters validated by the table, the changed names
counted as set by the user), and the validate callback checks the very DetectorConfig the change
would apply, calibrated point included. After the set the node hands it to the detector
(`apply_config`: keyframe policy thresholds follow their `kf_*` fields, the verifier is rebuilt
when a `gv_*` field it is built from changed). `ros2 param set` of a read-only parameter is
refused with the reason 'restart needed'.
"""
from typing import Callable

from vpr_ros.core.errors import VPRError
from vpr_ros.ros.detector_config import RunningConfig
from vpr_ros.ros.params import BY_NAME, ParamError, validate


class ParamUpdates:
    """The validate and post-set parameter callbacks of one node."""

    def __init__(self, node, current: Callable[[], RunningConfig],
                 apply: Callable[[RunningConfig], None]) -> None:
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
        """Accept a change only when every value and the config it would apply are valid."""
        from rcl_interfaces.msg import SetParametersResult

        try:
            changes = self._changes(params)
            if changes:
                self._current().with_changes(changes).detector_config().validate()
        except (ParamError, VPRError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def apply(self, params) -> None:
        """After the set: the node's config and the detector follow the new values."""
        changes = {prm.name: prm.value for prm in params if prm.name in BY_NAME}
        if changes:
            self._apply(self._current().with_changes(changes))
