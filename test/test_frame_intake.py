"""FrameIntake: what the node refuses before the detector, and under which counter."""
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vpr_ros.core.errors import ImageError
from vpr_ros.ros.frame_intake import FrameIntake, MIN_IMAGE_SIDE, refusal_kind, Refused

S = 10**9


def _image(img: np.ndarray, stamp: int, encoding: str = 'rgb8'):
    sec, nsec = divmod(stamp, S)
    return SimpleNamespace(height=img.shape[0], width=img.shape[1], encoding=encoding,
                           is_bigendian=0, step=int(img.strides[0]) if img.size else 0,
                           data=np.ascontiguousarray(img).tobytes(),
                           header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nsec)))


def _accept(intake: FrameIntake, msg, newest=None, wait_s: float = 0.0):
    """Decode and gate one frame as the worker does (no pose lookup); (image, enc, stamp)."""
    image, encoding, stamp = intake.decode(msg)
    intake.last_note = intake.check_stamp(stamp, wait_s, newest)
    return image, encoding, stamp


def _refused(intake: FrameIntake, msg) -> str:
    with pytest.raises(Refused) as err:
        _accept(intake, msg)
    return err.value.key


def test_good_frames_pass_and_each_refusal_has_its_kind() -> None:
    intake = FrameIntake(max_pixels=240 * 320, stamp_window_s=10.0)
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    t = 1_700_000_000 * S
    got, enc, stamp = _accept(intake, _image(img, t))
    assert got.shape == img.shape and enc == 'rgb8' and stamp == t
    assert _refused(intake, _image(img, t + S, 'no_such_encoding')) == 'bad_encoding'
    big = np.zeros((480, 640, 3), np.uint8)
    assert _refused(intake, _image(big, t + S)) == 'bad_image_data'  # over max_pixels
    for tiny in (img[:1], img[:, :1], img[:MIN_IMAGE_SIDE - 1]):
        assert _refused(intake, _image(np.ascontiguousarray(tiny), t + S)) == 'bad_image_data'
    assert _refused(intake, _image(img, t)) == 'image_stamp_duplicate'
    assert _refused(intake, _image(img, t + 10**8 * S)) == 'image_stamp_implausible'
    assert _accept(intake, _image(img, t + S))[2] == t + S
    # the pose stream vouches for a restart far back
    assert _accept(intake, _image(img, 5 * S), lambda: (5 * S, None))[2] == 5 * S
    assert intake.last_note == ''


def test_a_pose_in_flight_may_vouch_for_its_frame_within_wait_s() -> None:
    intake = FrameIntake(max_pixels=1 << 20, stamp_window_s=10.0)
    img = np.zeros((32, 32, 3), np.uint8)
    t = 1_700_000_000 * S
    _accept(intake, _image(img, t), lambda: (t, None))
    calls = []

    def late_pose():  # the restarted bag's first pose arrives on the third look
        calls.append(1)
        return (t, None) if len(calls) < 3 else (S, None)
    t0 = time.monotonic()
    assert _accept(intake, _image(img, S + 1), late_pose, wait_s=5.0)[2] == S + 1
    assert len(calls) == 3 and time.monotonic() - t0 < 1.0
    t0 = time.monotonic()  # nothing vouches: refused after wait_s
    assert _refused_waiting(intake, _image(img, 99 * S), lambda: (S, None), 0.2)
    assert 0.2 <= time.monotonic() - t0 < 2.0


def _refused_waiting(intake: FrameIntake, msg, newest, wait_s: float) -> bool:
    with pytest.raises(Refused) as err:
        _accept(intake, msg, newest, wait_s)
    return err.value.key == 'image_stamp_implausible'


def test_refusal_kind_names_opencv_and_other_errors() -> None:
    assert refusal_kind(ImageError('unsupported image encoding x')) == 'bad_encoding'
    assert refusal_kind(ImageError('image data truncated')) == 'bad_image_data'
    with pytest.raises(cv2.error) as err:
        cv2.ORB_create().detectAndCompute(np.zeros((1, 640), np.uint8), None)
    assert refusal_kind(err.value) == 'bad_image_data'
    assert refusal_kind(RuntimeError('boom')) == 'processing_errors'


def _sp(stamp: int, x: float = 0.0):
    from vpr_ros.core.msg_convert import StampedPose
    return StampedPose(stamp, 'odom', np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]))


def test_pose_glitch_ahead_is_dropped_counted_and_never_resets_the_history() -> None:
    """Issue 20 #7: a pose stamped ahead, then the right one: no reset, `pose_outlier`."""
    from vpr_ros.ros.frame_intake import PoseInput

    clock = [100.0]
    poses = PoseInput(0.5, clock=lambda: clock[0])
    t = 1_700_000_000 * S
    for k in range(10):
        assert poses.add(_sp(t + k * S // 10, k * 0.1)) == []
    assert poses.add(_sp(t + 30 * S // 10)) == []   # 2.1 s ahead: provisional
    keys = [key for key, _ in poses.add(_sp(t + 10 * S // 10, 1.0))]
    assert keys == ['pose_outlier']   # compared with latest(), this was a pose_time_reset
    assert len(poses.buffer) == 11 and poses.buffer.latest().stamp_ns == t + S
    # arrivals are read from the given clock (the node's ROS clock), not the wall clock
    assert poses.last_wall == 100.0 and not poses.stale(2.0)
    clock[0] = 103.0
    assert poses.stale(2.0)


def test_an_image_waits_past_a_provisional_pose_for_the_right_one() -> None:
    """A glitch ahead must not end the wait: the image would be looked up across the gap."""
    import threading

    from vpr_ros.ros.frame_intake import PoseInput

    poses = PoseInput(0.5)
    t = 1_700_000_000 * S
    for k in range(10):
        poses.add(_sp(t + k * S // 10, k * 0.1))
    poses.add(_sp(t + 18 * S // 10))   # 0.9 s ahead of the stream, before the right pose
    late = threading.Timer(0.05, poses.add, args=(_sp(t + S, 1.0),))
    late.start()
    pose, why = poses.pose_at(t + S, wait_s=10.0, timeout_s=60.0)
    late.join()
    assert pose is not None, why
    np.testing.assert_allclose(pose.position, [1.0, 0.0, 0.0])


def test_the_stamp_gate_judges_by_the_intake_clock() -> None:
    """Sparse frames 60 s apart replayed fast: the node's (sim) clock says 60 s passed."""
    sim = [0.0]
    intake = FrameIntake(max_pixels=1 << 20, stamp_window_s=10.0, use_poses=False,
                         clock=lambda: sim[0])
    img = np.zeros((32, 32, 3), np.uint8)
    t = 1_700_000_000 * S
    for k in range(5):
        sim[0] = 1000.0 + 60.0 * k
        assert _accept(intake, _image(img, t + k * 60 * S))[2] == t + k * 60 * S
    wall = FrameIntake(max_pixels=1 << 20, stamp_window_s=10.0, use_poses=False)
    _accept(wall, _image(img, t))
    assert _refused(wall, _image(img, t + 60 * S)) == 'image_stamp_implausible'
