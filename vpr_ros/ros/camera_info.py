"""
The optional ``camera/camera_info`` input: intrinsics for verification and relative poses.

With them verification uses the essential matrix and gives every verified candidate a relative
pose (`vpr/relative_pose`).

A sensor_msgs/CameraInfo's K (and plumb_bob / rational_polynomial D) must describe the images
as they are published (same width and height). Until one arrives, verification uses the
fundamental matrix and `vpr/relative_pose` stays silent. A new K reaches the detector between
frames (its `set_intrinsics` is read at the next frame).
"""
import threading
from typing import Callable

from vpr_ros.core.errors import VPRError
from vpr_ros.core.relative_pose import Intrinsics
from vpr_ros.ros import topics

_DISTORTION_MODELS = ('', 'plumb_bob', 'rational_polynomial')


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

    def __init__(self, node, detector, qos, group, count: Callable[[str, str], None]) -> None:
        from sensor_msgs.msg import CameraInfo

        self._detector = detector
        self._log = node.get_logger()
        self._count = count
        self._lock = threading.Lock()
        self.current: Intrinsics | None = None
        self.sub = node.create_subscription(CameraInfo, topics.CAMERA_INFO, self._on_info, qos,
                                            callback_group=group)
        self.topic = self.sub.topic_name

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
                       f'on {topics.RELATIVE_POSE}')
