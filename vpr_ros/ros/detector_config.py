"""
The DetectorConfig the node runs: its parameters, at the model's calibrated operating point.

The calibrated thresholds apply wherever the user did not set them.

A model file (and the built-in model) carries its calibrated operating point
(vpr_ros/model/operating_point.py): the `score_threshold` and `gv_min_inliers` that reached the
target precision on named validation data. The node runs it unless the user set a threshold: a
name counts as set when the node was started with it (params file, command line, launch
argument: the node's parameter overrides) or it was changed with `ros2 param set`. Never by
comparing the value with the default, so a user who sets `score_threshold` to the default value
on purpose keeps it. For the same reason `config/vpr.yaml` leaves the calibrated parameters out
(commented): the shipped params file must not pin them.

`RunningConfig` is the one value that turns into the detector's config, at start-up and for
every live change; the validate callback checks exactly the config the change would apply.
"""
from dataclasses import dataclass, fields, replace
import os

from vpr_ros.core.calibration import calibrated_config, OperatingPoint
from vpr_ros.core.detector import DetectorConfig
from vpr_ros.core.errors import ModelFileError
from vpr_ros.ros.params import ParamError, Params

CALIBRATED = ('score_threshold', 'gv_min_inliers', 'confidence_threshold')  # a point's
POLICY_PREFIX = 'kf_'  # DetectorConfig.kf_x is KeyframePolicy.x
VERIFIER_PREFIX = 'gv_'  # DetectorConfig.gv_x builds the GeometricVerifier (make_verifier)
READ_EACH_FRAME = ('gv_first_only', 'gv_min_inliers', 'gv_veto_matches')  # read per frame


def model_point(params: Params) -> tuple[OperatingPoint | None, str]:
    """Return (the model's calibrated point or None, why none) for the node's parameters."""
    from vpr_ros.model.operating_point import model_operating_point
    size = tuple(params.image_size)
    try:
        return model_operating_point(os.path.expanduser(params.model_path),
                                     None if size == (0, 0) else size)
    except ModelFileError as err:
        raise ParamError(f"parameter 'model_path': {err}") from None


def overridden_names(node) -> frozenset[str]:
    """
    Parameter names the node was started with (params files, command line, launch).

    rclpy keeps them in `Node._parameter_overrides` and offers no public accessor; without
    it (another rclpy) nothing counts as given at start-up, only live changes do.
    """
    return frozenset(getattr(node, '_parameter_overrides', {}) or {})


@dataclass(frozen=True)
class RunningConfig:
    """Parameters, the model's point (or why none) and the names the user set."""

    params: Params
    point: OperatingPoint | None
    why_no_point: str
    explicit: frozenset[str]

    @classmethod
    def start(cls, params: Params, explicit: frozenset[str]) -> 'RunningConfig':
        point, why = model_point(params)
        return cls(params, point, why, frozenset(explicit))

    def detector_config(self) -> DetectorConfig:
        """Return the config the detector runs: calibrated where the user set nothing."""
        mine = tuple(n for n in CALIBRATED if n in self.explicit)
        return calibrated_config(self.params.detector_config(), self.point, mine)

    def with_changes(self, changes: dict) -> 'RunningConfig':
        """Return the config after a live change; changed names count as set by the user."""
        return replace(self, params=self.params.with_changes(changes),
                       explicit=self.explicit | frozenset(changes))

    def note(self) -> str:
        """Say which thresholds the node runs with, and where they are from (one log line)."""
        config = self.detector_config()
        inl = (f', gv_min_inliers {config.gv_min_inliers}' if config.geometric_verification
               else '')
        inl += (f', confidence_threshold {config.confidence_threshold:.4f}'
                if config.sequence_evidence else ', sequence rule off')
        in_use = f'score_threshold {config.score_threshold:.4f}{inl}'
        if self.point is None:
            return f'operating point: {in_use} from the parameters ({self.why_no_point})'
        mine = [n for n in CALIBRATED if n in self.explicit]
        if mine:
            return (f'operating point: {in_use}, {" and ".join(mine)} set explicitly; the '
                    f"model's calibrated one is {self.point.describe()}")
        return f'operating point: calibrated, {self.point.describe()}; in use: {in_use}'


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
