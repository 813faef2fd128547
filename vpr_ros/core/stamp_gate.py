"""
Plausibility of image stamps: refuse frames stamped years ahead, far back, or twice.

A keyframe is stored with its stamp forever, and the detector's temporal exclusion, the keyframe
policy and every `/vpr/matches` row read that stamp. One frame from a driver with a broken clock
(stamp years ahead, or the epoch) used to become a permanent keyframe that later queries matched
outside any exclusion window. The gate judges each frame's stamp against two references:

- the recent frames: the last accepted stamp, plus the time that passed since it (a paused
  camera or node may resume far ahead, but never further ahead than the time that passed), give
  or take `window_s`;
- the pose stream: the newest pose stamp, likewise plus the time since it arrived, give or take
  `window_s`. The caller gives the pose stream's consistent newest stamp (PoseBuffer.latest:
  a lone pose stamped far ahead is held there, so it cannot vouch for an image).

Time is the caller's clock (`clock`, or `now_s` per call): the node passes its ROS clock, which
follows /clock under use_sim_time, so a bag replayed faster than real time or a simulation is
judged by its own time, not the wall clock's (issue 20 #5).

A frame is plausible when it agrees with at least one reference (a pose stream that stopped, or
a camera clock that disagrees with odometry, must not refuse every frame), and refused when it
agrees with none. A stamp equal to one of the recently accepted ones is a duplicate, refused
whatever the references say. A real jump of the camera clock (a bag that restarts without
poses) is accepted once `confirm_frames` consecutive refused frames agree with each other: one
glitch is refused, a new timeline is followed after a few frames. But a live pose stream (a
pose arrived within `pose_live_s`) outvotes such a run: a camera whose stamps jump while
odometry goes on is wrong, not a new timeline (3 frames a year ahead used to become a
keyframe). ROS-free; the node feeds it.
"""
from collections import deque
import time
from typing import Callable, NamedTuple

OK = ''
DUPLICATE = 'image_stamp_duplicate'
IMPLAUSIBLE = 'image_stamp_implausible'
NEW_TIMELINE = 'image_stamp_new_timeline'


class StampVerdict(NamedTuple):
    """`kind` is OK, NEW_TIMELINE (both accepted) or DUPLICATE / IMPLAUSIBLE (refused)."""

    kind: str
    reason: str

    @property
    def accepted(self) -> bool:
        return self.kind in (OK, NEW_TIMELINE)


def _within(stamp_ns: int, ref_ns: int, elapsed_s: float, window_ns: int) -> bool:
    """Whether a stamp lies in [ref - window, ref + elapsed time + window]."""
    ahead_ns = int(max(0.0, elapsed_s) * 1e9) + window_ns
    return ref_ns - window_ns <= stamp_ns <= ref_ns + ahead_ns


class StampGate:
    """
    Judge image stamps against recent frames and the pose stream (see the module docstring).

    `window_s` 0 turns the gate off (every stamp accepted). Times are seconds of `clock` (the
    node: its ROS clock; default the monotonic wall clock), stamps integer nanoseconds; the
    times a caller passes (`now_s`, `pose_seen_s`) must come from the same clock. Not
    thread-safe: the node's worker owns it.
    """

    def __init__(self, window_s: float = 10.0, confirm_frames: int = 3,
                 remember: int = 32, clock: Callable[[], float] = time.monotonic,
                 pose_live_s: float = 2.0) -> None:
        if window_s < 0 or confirm_frames < 2 or remember < 1 or pose_live_s < 0:
            raise ValueError('window_s must be >= 0, confirm_frames >= 2, remember >= 1 and '
                             'pose_live_s >= 0')
        self.window_ns = int(window_s * 1e9)
        self.confirm_frames = int(confirm_frames)
        self.clock = clock
        self.pose_live_s = float(pose_live_s)
        self._recent: deque = deque(maxlen=remember)
        self._last: tuple[int, float] | None = None   # (stamp_ns, now_s) of the last accepted
        self._pending: list[tuple[int, float]] = []   # refused frames agreeing with each other
        self.counters = {DUPLICATE: 0, IMPLAUSIBLE: 0, NEW_TIMELINE: 0}

    def reset(self) -> None:
        """Forget the frame history (after a map reset, the next frame starts afresh)."""
        self._recent.clear()
        self._last = None
        self._pending.clear()

    def agrees(self, stamp_ns: int, now_s: float | None = None,
               pose_stamp_ns: int | None = None, pose_seen_s: float | None = None) -> bool:
        """Whether `check` would find a reference agreeing with the stamp (no state change)."""
        if self.window_ns == 0 or (self._last is None and pose_stamp_ns is None):
            return True
        now_s = self.clock() if now_s is None else now_s
        refs = [] if self._last is None else [self._last]
        if pose_stamp_ns is not None:
            refs.append((int(pose_stamp_ns), now_s if pose_seen_s is None else pose_seen_s))
        return any(_within(int(stamp_ns), ref, now_s - w, self.window_ns) for ref, w in refs)

    def pose_live(self, now_s: float, pose_stamp_ns: int | None,
                  pose_seen_s: float | None) -> bool:
        """Whether the pose stream counts as live: a pose arrived within `pose_live_s`."""
        return pose_stamp_ns is not None and (
            pose_seen_s is None or now_s - pose_seen_s <= self.pose_live_s)

    def check(self, stamp_ns: int, now_s: float | None = None,
              pose_stamp_ns: int | None = None, pose_seen_s: float | None = None
              ) -> StampVerdict:
        """
        Accept (and remember) or refuse the frame stamped `stamp_ns`, processed at `now_s`.

        `now_s` defaults to `clock()`. `pose_stamp_ns` is the pose stream's consistent newest
        stamp and `pose_seen_s` when the last pose arrived (same clock), or None without a pose
        stream.
        """
        stamp_ns = int(stamp_ns)
        now_s = self.clock() if now_s is None else now_s
        if stamp_ns in self._recent:
            self.counters[DUPLICATE] += 1
            return StampVerdict(DUPLICATE, 'the same stamp as a recent frame (a duplicate)')
        if self.agrees(stamp_ns, now_s, pose_stamp_ns, pose_seen_s):
            return self._accept(stamp_ns, now_s, OK, '')
        live = self.pose_live(now_s, pose_stamp_ns, pose_seen_s)
        if live:
            self._pending.clear()   # odometry goes on where it was: these stamps are wrong
        elif self._confirms_new_timeline(stamp_ns, now_s):
            self.counters[NEW_TIMELINE] += 1
            return self._accept(stamp_ns, now_s, NEW_TIMELINE,
                                f'{self.confirm_frames} consecutive frames agree on a new '
                                'timeline, and no pose stream disagrees: following it')
        self.counters[IMPLAUSIBLE] += 1
        refs = [] if self._last is None else [('the previous frame', self._last[0])]
        if pose_stamp_ns is not None:
            refs.append(('the newest pose', int(pose_stamp_ns)))
        parts = [f'{(stamp_ns - ref) / 1e9:+.3f} s from {name}' for name, ref in refs]
        return StampVerdict(IMPLAUSIBLE, ', '.join(parts) + f' (window {self.window_ns / 1e9:g}'
                            ' s plus the time since)' + ('; the pose stream is live, so a new '
                                                         'timeline is not followed' if live
                                                         else ''))

    def _confirms_new_timeline(self, stamp_ns: int, now_s: float) -> bool:
        """Record a refused frame; True when it completes `confirm_frames` agreeing ones."""
        if self._pending:
            prev, w = self._pending[-1]
            if not (prev < stamp_ns and _within(stamp_ns, prev, now_s - w, self.window_ns)):
                self._pending.clear()
        self._pending.append((stamp_ns, now_s))
        return len(self._pending) >= self.confirm_frames

    def _accept(self, stamp_ns: int, now_s: float, kind: str, reason: str) -> StampVerdict:
        self._recent.append(stamp_ns)
        self._last = (stamp_ns, now_s)
        self._pending.clear()
        return StampVerdict(kind, reason)
