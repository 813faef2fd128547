"""
What the node's worker checks before a frame reaches the detector, and how refusals are named.

Every refused frame is counted under exactly one kind and gets its `/vpr/status` row (clients
pacing themselves on that row would otherwise wait forever), so the counters always add up to
what was sent. The checks, cheapest first:

- decoding with the size the header declares checked against `max_image_pixels` before any
  pixel is decoded (msg_convert): `bad_encoding` for encodings the node cannot read,
  `bad_image_data` for everything else wrong with the bytes;
- a minimum side of MIN_IMAGE_SIDE pixels: a 1-pixel-high or -wide image describes no place,
  and OpenCV's ORB pyramid asserts on it (it used to escape as an uncounted processing error);
- the stamp gate (core/stamp_gate.py): stamps that agree with neither the recent frames nor
  the pose stream, and repeated stamps, never become keyframes.

`refusal_kind` names whatever a frame raised later on (OpenCV errors are image problems too), so
the worker can count it and publish the row instead of losing the frame silently.

`check` is what the worker runs on each queued frame before the detector, `Checked` what it
keeps of it until the frame's turn comes (a batch checks all its frames first,
vpr_ros/ros/batching.py); `problems` are the counted remarks of a frame that is still processed.
"""
from dataclasses import dataclass
import time
from typing import Any, Callable

from vpr_ros.core.errors import ImageError
from vpr_ros.core.msg_convert import any_image_from_msg, stamp_ns, stamp_s
from vpr_ros.core.stamp_gate import NEW_TIMELINE, StampGate

MIN_IMAGE_SIDE = 8
PoseRef = Callable[[], tuple[int | None, float | None]]


def _no_pose() -> tuple[None, None]:
    return None, None


_NO_POSE: PoseRef = _no_pose


@dataclass(frozen=True)
class Checked:
    """A frame that passed the checks: pixels, stamp, pose at the stamp (or why none)."""

    image: Any
    encoding: str
    stamp: int
    pose: Any
    why_no_pose: str
    note: str  # the stamp gate followed a new timeline: logged when the frame is processed


class Refused(Exception):
    """A frame the node will not process: `key` is its counter, the message says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def refusal_kind(err: BaseException) -> str:
    """Counter for an exception a frame raised: image problems are bad_image_data."""
    if isinstance(err, ImageError):
        return 'bad_encoding' if 'encoding' in str(err) else 'bad_image_data'
    if type(err).__module__ == 'cv2':  # cv2.error: OpenCV refused the image's size or content
        return 'bad_image_data'
    return 'processing_errors'


class FrameIntake:
    """Decode, size-check and stamp-check frames for the worker (not thread-safe: one worker)."""

    def __init__(self, max_pixels: int, stamp_window_s: float) -> None:
        self.max_pixels = int(max_pixels)
        self.gate = StampGate(window_s=stamp_window_s)
        self.last_note = ''
        self.last_stamp: int | None = None

    def decode(self, msg):
        """Return (image, encoding, stamp_ns) of a frame the decoder takes, else raise Refused."""
        self.last_note = ''
        try:
            image, encoding = any_image_from_msg(msg, self.max_pixels)
        except ImageError as err:
            raise Refused(refusal_kind(err), f'image refused: {err}') from None
        h, w = image.shape[:2]
        if min(h, w) < MIN_IMAGE_SIDE:
            raise Refused('bad_image_data', f'image refused: {w}x{h} is smaller than '
                          f'{MIN_IMAGE_SIDE} pixels a side')
        return image, encoding, stamp_ns(msg.header)

    def check_stamp(self, stamp: int, newest_pose: PoseRef = _NO_POSE, wait_s: float = 0.0
                    ) -> None:
        """
        Raise Refused unless the stamp gate accepts `stamp` (it then remembers it).

        `newest_pose()` gives the newest pose's stamp and when the last pose arrived ((None,
        None) without a pose stream). A stamp no reference agrees with waits up to `wait_s` for
        poses still in flight: when a bag restarts, the image may arrive before the pose that
        vouches for it. `last_note` says when the gate followed a new timeline.
        """
        ref = newest_pose()
        deadline = time.monotonic() + wait_s
        while (time.monotonic() < deadline
               and not self.gate.agrees(stamp, time.monotonic(), *ref)):
            time.sleep(0.005)
            ref = newest_pose()
        verdict = self.gate.check(stamp, time.monotonic(), *ref)
        if not verdict.accepted:
            raise Refused(verdict.kind, f'image stamp {stamp_s(stamp):.3f} s refused: '
                          f'{verdict.reason}')
        if verdict.kind == NEW_TIMELINE:
            self.last_note = (f'image stamps moved to {stamp_s(stamp):.3f} s: '
                              f'{verdict.reason}')

    def accept(self, msg, newest_pose: PoseRef = _NO_POSE, wait_s: float = 0.0):
        """Decode and check the stamp in one call: (image, encoding, stamp_ns) or Refused."""
        image, encoding, stamp = self.decode(msg)
        self.check_stamp(stamp, newest_pose, wait_s)
        return image, encoding, stamp

    def check(self, msg, pose_for: Callable[[int], tuple[Any, str]],
              newest_pose: PoseRef = _NO_POSE, wait_s: float = 0.0) -> Checked:
        """Decode, look the pose up (`pose_for(stamp)`: pose or None, why), gate the stamp."""
        image, encoding, stamp = self.decode(msg)
        pose, why = pose_for(stamp)  # first: a late pose is the stamp's reference
        self.check_stamp(stamp, newest_pose, wait_s)
        return Checked(image, encoding, stamp, pose, why, self.last_note)

    def problems(self, c: Checked) -> list[tuple[str, str]]:
        """(counter, message) remarks on a frame about to be processed, in processing order."""
        out = []
        last, self.last_stamp = self.last_stamp, c.stamp
        if last is not None and c.stamp < last:
            out.append(('image_stamp_backwards', f'image stamp {stamp_s(c.stamp):.3f} s is '
                        f'older than the previous {stamp_s(last):.3f} s'))
        if c.why_no_pose:
            out.append(('no_pose', f'image at {stamp_s(c.stamp):.3f} s has no pose: '
                        f'{c.why_no_pose}; keyframes by time and novelty'))
        return out
