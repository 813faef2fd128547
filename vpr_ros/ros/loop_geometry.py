"""
The node's loop-closure geometry: camera_info in, `vpr/relative_pose` out, operating point.

* ``camera/camera_info`` (sensor_msgs/CameraInfo, optional, remappable like the image): its
  K (and plumb_bob / rational_polynomial D) switch verification to the essential matrix and
  give every verified candidate a relative pose. It must describe the images as they are
  published (same width and height). Until one arrives, verification uses the fundamental
  matrix and `vpr/relative_pose` stays silent.
* ``vpr/relative_pose`` (std_msgs/Float64MultiArray, reliable, depth 10): one message per
  processed query with at least one verified candidate that has a pose; layout as
  `vpr/matches`: ``dim[0]`` label ``candidates`` (rows, best first), ``dim[1]`` label
  `RELATIVE_POSE_COLUMNS`. ``qx, qy, qz, qw`` and ``tx, ty, tz`` are the query camera's
  orientation and position in the match camera's optical frame (z forward, x right, y down):
  a point X in the query camera frame is R X + t in the match camera frame, the edge a pose
  graph adds between the two keyframes' camera poses. t is a unit direction (``scale_known``
  0) unless depth made it metric (1). ``parallax_deg`` is the median ray angle once the
  rotation is removed: under ~1 degree the rotation is good but the direction of t is noise.
* ``camera/depth/image_raw`` (sensor_msgs/Image 16UC1 in mm or 32FC1 in m, registered to the
  colour camera, optional): paired with the colour frame of the same stamp (within 10 ms), it
  makes the translation metric (``scale_known`` 1).
* The operating point: when ``score_threshold`` (and ``gv_min_inliers``) are left at their
  defaults, the model's calibrated point (vpr_ros/model/operating_point.py) replaces them;
  set either and yours is used. The node logs which one it uses.
"""
import threading

import numpy as np

from vpr_ros.core.calibration import calibrated_config, OperatingPoint
from vpr_ros.core.detector import DetectorConfig
from vpr_ros.core.errors import VPRError
from vpr_ros.core.msg_convert import stamp_s
from vpr_ros.core.relative_pose import Intrinsics

RELATIVE_POSE = 'vpr/relative_pose'
CAMERA_INFO = 'camera/camera_info'
RELATIVE_POSE_COLUMNS = ('query_stamp,match_stamp,match_id,qx,qy,qz,qw,tx,ty,tz,inliers,'
                         'inlier_ratio,scale_known,parallax_deg')
_DISTORTION_MODELS = ('', 'plumb_bob', 'rational_polynomial')


def relative_pose_rows(result) -> list[list[float]]:
    """One row per candidate of a FrameResult that carries a relative pose, best first."""
    rows = []
    t_q = stamp_s(result.stamp_ns)
    for c in result.candidates:
        rp = getattr(c, 'relative_pose', None)
        if rp is None or not rp.ok:
            continue
        rows.append([t_q, stamp_s(c.match_stamp_ns), c.match_id, *rp.quaternion,
                     *rp.translation, rp.inliers, rp.inlier_ratio, float(rp.scale_known),
                     rp.parallax_deg])
    return rows


def relative_pose_message(result):
    """Build the vpr/relative_pose message of a FrameResult (None: no candidate has a pose)."""
    from vpr_ros.ros.messages import multiarray
    rows = relative_pose_rows(result)
    return multiarray(RELATIVE_POSE_COLUMNS, rows, 'candidates') if rows else None


def intrinsics_from_camera_info(msg) -> Intrinsics:
    """Intrinsics of a sensor_msgs/CameraInfo; VPRError naming what is unusable."""
    k = [float(v) for v in msg.k]
    if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
        raise VPRError(f'camera_info K {k} has no positive focal length (uncalibrated camera)')
    model = str(msg.distortion_model or '')
    d = [float(v) for v in msg.d]
    if model not in _DISTORTION_MODELS and any(d):
        raise VPRError(f'camera_info distortion model {model!r} is not supported (use '
                       'plumb_bob or rational_polynomial, or rectified images)')
    return Intrinsics.from_matrix(k, d)


class CameraInfoInput:
    """Subscribes to camera_info and hands new intrinsics to the detector (logged on change)."""

    def __init__(self, node, detector, qos, group, count) -> None:
        from sensor_msgs.msg import CameraInfo

        self._detector = detector
        self._log = node.get_logger()
        self._count = count
        self._lock = threading.Lock()
        self.current: Intrinsics | None = None
        sub = node.create_subscription(CameraInfo, CAMERA_INFO, self._on_info, qos,
                                       callback_group=group)
        self.topic = sub.topic_name

    def _on_info(self, msg) -> None:
        try:
            intr = intrinsics_from_camera_info(msg)
        except VPRError as err:
            self._count('bad_camera_info', f'camera_info on {self.topic} refused: {err}')
            return
        with self._lock:
            if intr == self.current:
                return
            self.current = intr
        self._detector.set_intrinsics(intr)
        self._log.info(f'intrinsics from {self.topic}: fx {intr.fx:.1f} fy {intr.fy:.1f} '
                       f'cx {intr.cx:.1f} cy {intr.cy:.1f}, {len(intr.dist)} distortion '
                       f'coefficients: verification uses the essential matrix, relative poses '
                       f'on {RELATIVE_POSE}')


def effective_config(params, point: OperatingPoint | None) -> DetectorConfig:
    """Build the parameters' DetectorConfig, calibrated where they left the defaults."""
    default = DetectorConfig()
    explicit = tuple(name for name in ('score_threshold', 'gv_min_inliers')
                     if getattr(params, name) != getattr(default, name))
    return calibrated_config(params.detector_config(), point, explicit)


def operating_point_note(params, point: OperatingPoint | None, why: str) -> str:
    """Say which score threshold the node runs with, and where it is from (one log line)."""
    default = DetectorConfig()
    config = effective_config(params, point)
    inl = (f', gv_min_inliers {config.gv_min_inliers}' if config.geometric_verification
           else '')
    if point is None:
        return (f'operating point: score_threshold {config.score_threshold:g}{inl} from the '
                f'parameters ({why})')
    if params.score_threshold != default.score_threshold:
        return (f'operating point: score_threshold {config.score_threshold:g}{inl} set '
                f"explicitly; the model's calibrated one is {point.describe()}")
    return f'operating point: calibrated, {point.describe()}; in use: ' \
           f'score_threshold {config.score_threshold:.4f}{inl}'


def gate_counters(detector) -> dict[str, int]:
    """Degenerate-frame counts for /diagnostics: total and per reason."""
    out = {'degenerate_frames': int(detector.counters.get('degenerate', 0))}
    for key, n in sorted(getattr(detector, 'degenerate_reasons', {}).items()):
        out[f'degenerate_{key}'] = int(n)
    return out


def model_point(params) -> tuple[OperatingPoint | None, str]:
    """Return (the model's calibrated point or None, why none) for the node's parameters."""
    import os

    from vpr_ros.core.errors import ModelFileError
    from vpr_ros.model.operating_point import model_operating_point
    from vpr_ros.ros.params import ParamError
    size = tuple(params.image_size)
    try:
        return model_operating_point(os.path.expanduser(params.model_path),
                                     None if size == (0, 0) else size)
    except ModelFileError as err:
        raise ParamError(f"parameter 'model_path': {err}") from None


DEPTH = 'camera/depth/image_raw'
DEPTH_MATCH_S = 0.010  # a depth image within 10 ms of the colour image is its depth
_DEPTH_DTYPES = {'16uc1': np.uint16, 'mono16': np.uint16, '32fc1': np.float32}


def depth_from_msg(msg) -> np.ndarray:
    """HxW depth of a sensor_msgs/Image: 16UC1 (mm) or 32FC1 (m), per REP-118; VPRError else."""
    enc = str(msg.encoding).lower()
    if enc not in _DEPTH_DTYPES:
        raise VPRError(f'depth encoding {msg.encoding!r} is not 16UC1 or 32FC1')
    dt = np.dtype(_DEPTH_DTYPES[enc]).newbyteorder('>' if msg.is_bigendian else '<')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = bytes(msg.data)
    if h <= 0 or w <= 0 or step < w * dt.itemsize or len(data) < h * step:
        raise VPRError(f'depth image {w}x{h} (step {step}) with {len(data)} bytes')
    rows = np.frombuffer(data, np.uint8, count=h * step).reshape(h, step)
    return rows[:, :w * dt.itemsize].copy().view(dt).reshape(h, w).astype(dt.newbyteorder('='))


class DepthInput:
    """
    Subscribes to a depth image registered to the camera; `take(stamp)` pairs it by stamp.

    Depth makes the relative pose metric (vpr_ros/core/relative_pose.py). Nothing changes when
    no depth topic is published; a depth image without a colour image within 10 ms is unused.
    """

    def __init__(self, node, qos, group, count, keep: int = 30) -> None:
        from sensor_msgs.msg import Image

        self._count = count
        self._lock = threading.Lock()
        self._msgs: dict[int, object] = {}
        self._keep = keep
        sub = node.create_subscription(Image, DEPTH, self._on_depth, qos, callback_group=group)
        self.topic = sub.topic_name

    def _on_depth(self, msg) -> None:
        from vpr_ros.core.msg_convert import stamp_ns
        with self._lock:
            self._msgs[stamp_ns(msg.header)] = msg
            while len(self._msgs) > self._keep:
                self._msgs.pop(min(self._msgs))

    def take(self, stamp: int) -> np.ndarray | None:
        """Return the depth image of the frame at `stamp` (decoded), or None."""
        with self._lock:
            if not self._msgs:
                return None
            near = min(self._msgs, key=lambda s: abs(s - stamp))
            if abs(near - stamp) > DEPTH_MATCH_S * 1e9:
                return None
            msg = self._msgs.pop(near)
        try:
            return depth_from_msg(msg)
        except VPRError as err:
            self._count('bad_depth', f'depth image on {self.topic} refused: {err}')
            return None
