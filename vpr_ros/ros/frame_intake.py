"""
What comes in before a frame reaches the detector, and what the worker refuses on the way.

The camera callback only puts the message into a `DropOldestQueue` (it never waits for the CNN;
a frame overtaken before the worker got to it is dropped and counted). The pose callback feeds
`PoseInput`, the depth callback `DepthInput`. The worker then takes the waiting frames and
`FrameIntake.check`s each: it decodes the message, looks the pose up at the image stamp
(waiting up to `pose_wait_s` for a pose still in flight), gates the stamp and pairs the depth
image. Every refused frame is counted under exactly one kind and gets its `/vpr/status` row
(clients pacing themselves on that row would otherwise wait forever), so the counters always add
up to what was sent. The checks, cheapest first:

- decoding with the size the header declares checked against `max_image_pixels` before any
  pixel is decoded (msg_convert): `bad_encoding` for encodings the node cannot read,
  `bad_image_data` for everything else wrong with the bytes;
- a minimum side of MIN_IMAGE_SIDE pixels: a 1-pixel-high or -wide image describes no place,
  and OpenCV's ORB pyramid asserts on it (it used to escape as an uncounted processing error);
- the stamp gate (core/stamp_gate.py): stamps that agree with neither the recent frames nor
  the pose stream, and repeated stamps, never become keyframes. Time is the node's ROS clock
  (`clock`), which follows /clock under use_sim_time: a bag replayed faster than real time is
  judged by its own time. Pose arrival times are read from the same clock.

`refusal_kind` names whatever a frame raised later on (OpenCV errors are image problems too), so
the worker can count it and publish the row instead of losing the frame silently. Poses often
arrive a little after the image they belong to (odometry runs behind the camera), hence the
wait; a silent pose topic is not waited for. A pose stamped ahead of the stream that the next
pose contradicts is dropped by the pose buffer and counted as `pose_outlier`. Depth (registered
to the colour image, 16UC1 mm or 32FC1 m) within 10 ms of a frame's stamp is that frame's
depth: it makes relative poses metric.
ROS-free (duck-typed messages), so it is tested without a graph.
"""
from collections import deque
from dataclasses import dataclass
import threading
import time
from typing import Any, Callable

import numpy as np

from vpr_ros.core.errors import ImageError, VPRError
from vpr_ros.core.msg_convert import any_image_from_msg, depth_from_msg, stamp_ns, stamp_s
from vpr_ros.core.pose_buffer import Pose, PoseBuffer
from vpr_ros.core.stamp_gate import NEW_TIMELINE, StampGate


class DropOldestQueue:
    """
    Bounded queue whose `put` never blocks: when full, the oldest item is dropped and counted.

    One lock + condition; `put` is O(1) so it can run in a DDS callback at camera rate.
    """

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize < 1:
            raise ValueError(f'maxsize must be >= 1, got {maxsize}')
        self.maxsize = maxsize
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Enqueue; return True when an older item had to be dropped to make room."""
        with self._cond:
            dropped = False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any:
        """Oldest item, or None after `timeout` seconds or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return None

    def get_many(self, n: int, timeout: float | None = None) -> list:
        """
        Up to `n` items, oldest first, waiting up to `timeout` for the first; [] if none.

        Items beyond `n` stay queued (the next call takes them), so nothing is lost here: only
        `put` drops, and counts what it drops.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return [self._items.popleft() for _ in range(min(max(1, n), len(self._items)))]

    def resize(self, maxsize: int) -> int:
        """Hold at most `maxsize` items from now on; drop (and count) the oldest beyond it."""
        if maxsize < 1:
            raise ValueError(f'maxsize must be >= 1, got {maxsize}')
        with self._cond:
            self.maxsize = maxsize
            n = 0
            while len(self._items) > maxsize:
                self._items.popleft()
                n += 1
            self.dropped += n
            return n

    def clear(self) -> int:
        """Drop everything queued (counted as dropped); return how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.dropped += n
            return n

    def close(self) -> None:
        """Wake the consumer for good, so a worker blocked in `get` can exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Accept a consumer again after `close` (a managed node activated once more)."""
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


RESET_BACK_NS = 10**9  # poses jumping back more than this: a restarted bag or sim time reset


class PoseInput:
    """
    PoseBuffer of the pose topic, with the wait for late poses and the staleness test.

    Arrival times are read from `clock` (seconds): the node's ROS clock, the same clock its
    stamp gate judges by, so under use_sim_time both follow /clock.
    """

    def __init__(self, max_gap_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.buffer = PoseBuffer(max_gap_s=max_gap_s)
        self.clock = clock
        self._cond = threading.Condition()
        self.last_wall: float | None = None  # clock() when the last pose arrived
        self.frame_id = ''

    def add(self, sp) -> list[tuple[str, str]]:
        """Store a StampedPose; return (counter key, message) for each problem found."""
        problems = []
        self.last_wall = self.clock()
        buf = self.buffer
        with self._cond:
            # Compared with the newest *confirmed* pose: a provisional pose far ahead is a
            # glitch the next pose settles (outlier_dropped), not a reason to drop the history.
            newest = buf.latest_confirmed()
            if newest is not None and sp.stamp_ns < newest.stamp_ns - RESET_BACK_NS:
                # A bag restarted or sim time was reset: old history would refuse every pose.
                buf.clear()
                problems.append(('pose_time_reset', f'pose stamps jumped back to {sp.stamp_ns} '
                                 f'from {newest.stamp_ns}: pose history cleared'))
            before = dict(buf.counters)
            ok = buf.add(sp.stamp_ns, sp.position, sp.quaternion)
            after = dict(buf.counters)
            if ok:
                self.frame_id = sp.frame_id or self.frame_id
                self._cond.notify_all()
        if after['outlier_dropped'] > before['outlier_dropped']:
            problems.append(('pose_outlier', f'a pose stamped ahead of the stream was dropped: '
                             f'the pose at {sp.stamp_ns} continues where the stream was'))
        if ok:
            return problems
        if (after['nan_pose'] > before['nan_pose']
                or after['zero_quaternion'] > before['zero_quaternion']):
            problems.append(('bad_pose', f'pose at {sp.stamp_ns} refused: NaN/inf or zero '
                             'quaternion'))
        else:
            problems.append(('pose_out_of_order', f'pose at {sp.stamp_ns} refused: not newer '
                             'than the previous pose'))
        return problems

    def newest(self) -> tuple[int | None, float | None]:
        """Stamp of the newest pose and when the last pose arrived: the stamp gate's reference."""
        with self._cond:
            latest = self.buffer.latest()
        return (None if latest is None else latest.stamp_ns), self.last_wall

    def stale(self, timeout_s: float, now: float | None = None) -> bool:
        """No pose ever, or none for `timeout_s` (of `clock`): the pose topic counts as stopped."""
        now = self.clock() if now is None else now
        return self.last_wall is None or now - self.last_wall > timeout_s

    def pose_at(self, stamp_ns: int, wait_s: float, timeout_s: float
                ) -> tuple[Pose | None, str]:
        """
        Pose at the image stamp, waiting up to `wait_s` for poses to catch up; (None, why).

        It waits for a *confirmed* pose at or after the stamp: a provisional pose far ahead (a
        glitch the next pose may drop) must not end the wait before the right pose arrives,
        or the image would be looked up across the gap to the glitch and lose its pose.
        """
        stale = self.stale(timeout_s)
        with self._cond:
            if not stale and wait_s > 0:
                deadline = time.monotonic() + wait_s
                while True:
                    newest = self.buffer.latest_confirmed()
                    left = deadline - time.monotonic()
                    if (newest is not None and newest.stamp_ns >= stamp_ns) or left <= 0:
                        break
                    self._cond.wait(left)
            pose = self.buffer.pose_at(stamp_ns)
        if pose is not None:
            return pose, ''
        return None, ('the pose topic is silent' if stale
                      else 'no pose around this stamp (outside the pose range or in a gap)')

    def clear(self) -> None:
        with self._cond:
            self.buffer.clear()


DEPTH_MATCH_S = 0.010  # a depth image within 10 ms of the colour image is its depth


class DepthInput:
    """The latest depth images by stamp; `take(stamp)` pairs one with a colour frame."""

    def __init__(self, keep: int = 30) -> None:
        self._lock = threading.Lock()
        self._msgs: dict[int, object] = {}
        self._keep = keep

    def put(self, msg) -> None:
        with self._lock:
            self._msgs[stamp_ns(msg.header)] = msg
            while len(self._msgs) > self._keep:
                self._msgs.pop(min(self._msgs))

    def take(self, stamp: int) -> np.ndarray | None:
        """Return the depth image of the frame at `stamp` (decoded), None; VPRError if bad."""
        with self._lock:
            if not self._msgs:
                return None
            near = min(self._msgs, key=lambda s: abs(s - stamp))
            if abs(near - stamp) > DEPTH_MATCH_S * 1e9:
                return None
            msg = self._msgs.pop(near)
        return depth_from_msg(msg)


MIN_IMAGE_SIDE = 8
Item = tuple[Any, float]  # (message, monotonic receive time), as the image callback queues it


@dataclass(frozen=True)
class Checked:
    """A frame that passed the checks: pixels, stamp, pose at the stamp (or why none), depth."""

    image: Any
    encoding: str
    stamp: int
    pose: Pose | None
    why_no_pose: str
    note: str  # the stamp gate followed a new timeline: logged when the frame is processed
    depth: np.ndarray | None = None
    depth_error: str = ''


class Refused(Exception):
    """A frame the node will not process: `key` is its counter, the message says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def refusal_kind(err: BaseException) -> str:
    """Counter for an exception a frame raised: image problems are bad_image_data."""
    if isinstance(err, Refused):
        return err.key
    if isinstance(err, ImageError):
        return 'bad_encoding' if 'encoding' in str(err) else 'bad_image_data'
    if type(err).__module__ == 'cv2':  # cv2.error: OpenCV refused the image's size or content
        return 'bad_image_data'
    return 'processing_errors'


class FrameIntake:
    """
    The queue, the pose and depth streams, and the checks of the node's frames.

    Callbacks call `queue.put`, `poses.add`, `depth.put` (thread-safe); the single worker
    thread calls `take` (not thread-safe: one worker).
    """

    def __init__(self, max_pixels: int, stamp_window_s: float, max_batch: int = 1,
                 pose_max_gap_s: float = 0.5, use_poses: bool = True,
                 clock: Callable[[], float] = time.monotonic, pose_live_s: float = 2.0
                 ) -> None:
        self.max_pixels = int(max_pixels)
        # `clock`: the node's ROS clock in seconds (follows /clock under use_sim_time), so a
        # replay faster than real time is judged by its own time; pose arrivals use it too.
        self.gate = StampGate(window_s=stamp_window_s, clock=clock, pose_live_s=pose_live_s)
        self.queue = DropOldestQueue(max_batch)
        self.poses = PoseInput(pose_max_gap_s, clock) if use_poses else None
        self.depth = DepthInput()
        self.last_stamp: int | None = None

    def decode(self, msg) -> tuple[np.ndarray, str, int]:
        """Return (image, encoding, stamp_ns) of a frame the decoder takes, else raise Refused."""
        try:
            image, encoding = any_image_from_msg(msg, self.max_pixels)
        except ImageError as err:
            raise Refused(refusal_kind(err), f'image refused: {err}') from None
        h, w = image.shape[:2]
        if min(h, w) < MIN_IMAGE_SIDE:
            raise Refused('bad_image_data', f'image refused: {w}x{h} is smaller than '
                          f'{MIN_IMAGE_SIDE} pixels a side')
        return image, encoding, stamp_ns(msg.header)

    def _newest_pose(self) -> tuple[int | None, float | None]:
        return (None, None) if self.poses is None else self.poses.newest()

    def check_stamp(self, stamp: int, wait_s: float = 0.0,
                    newest_pose: Callable[[], tuple] | None = None) -> str:
        """
        Raise Refused unless the stamp gate accepts `stamp` (it then remembers it).

        A stamp no reference agrees with waits up to `wait_s` for poses still in flight: when a
        bag restarts, the image may arrive before the pose that vouches for it. Returns a note
        when the gate followed a new timeline ('' otherwise). `newest_pose()`: the pose
        stream's newest stamp and arrival time (default: this intake's pose input).
        """
        newest = newest_pose or self._newest_pose
        clock = self.gate.clock  # judged by the node's clock; the wait itself is wall time
        ref = newest()
        deadline = time.monotonic() + wait_s
        while (time.monotonic() < deadline
               and not self.gate.agrees(stamp, clock(), *ref)):
            time.sleep(0.005)
            ref = newest()
        verdict = self.gate.check(stamp, clock(), *ref)
        if not verdict.accepted:
            raise Refused(verdict.kind, f'image stamp {stamp_s(stamp):.3f} s refused: '
                          f'{verdict.reason}')
        if verdict.kind == NEW_TIMELINE:
            return f'image stamps moved to {stamp_s(stamp):.3f} s: {verdict.reason}'
        return ''

    def check(self, msg, pose_wait_s: float = 0.0, pose_timeout_s: float = 2.0) -> Checked:
        """Decode, look the pose up, gate the stamp, pair the depth image; Refused if refused."""
        image, encoding, stamp = self.decode(msg)
        pose, why = None, ''
        if self.poses is not None:  # first: a late pose is the stamp's reference
            pose, why = self.poses.pose_at(stamp, pose_wait_s, pose_timeout_s)
        note = self.check_stamp(stamp, pose_wait_s if self.poses is not None else 0.0)
        try:
            depth, depth_error = self.depth.take(stamp), ''
        except VPRError as err:
            depth, depth_error = None, f'depth image refused: {err}'
        return Checked(image, encoding, stamp, pose, why, note, depth, depth_error)

    def take(self, n: int, timeout: float, pose_wait_s: float = 0.0,
             pose_timeout_s: float = 2.0) -> list[tuple[Item, Checked | Exception]]:
        """
        Take the waiting frames (up to `n`; `timeout` for the first), checked, in stamp order.

        Each comes with its Checked or with what refused it, so refusals are reported in their
        place; equal stamps keep their arrival order.
        """
        items = sorted(self.queue.get_many(n, timeout), key=lambda it: stamp_ns(it[0].header))
        out: list[tuple[Item, Checked | Exception]] = []
        for item in items:
            try:
                out.append((item, self.check(item[0], pose_wait_s, pose_timeout_s)))
            except Exception as err:  # a refusal, or a bug: reported in order, never raised
                out.append((item, err))
        return out

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
        if c.depth_error:
            out.append(('bad_depth', c.depth_error))
        return out
