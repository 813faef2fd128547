"""
Time-ordered pose history, so an image can be given the pose at its own stamp.

Poses (from PoseStamped or Odometry, converted by the node) arrive at their own rate; images
arrive at theirs. `PoseBuffer.pose_at` interpolates between the two poses around an image stamp:
linear in translation, slerp in rotation (scipy). It refuses what it cannot know: stamps before
the first or after the last pose (beyond a small tolerance) and stamps inside a gap longer than
`max_gap_s`, because a made-up pose would poison the map and the training labels. Bad input
(NaN/inf, zero quaternion, stamps not increasing) is dropped and counted, never raised, because
one bad message must not stop a robot's node.

A lone pose stamped ahead (a driver glitch) used to become the newest pose, and every correct
pose after it was refused as out of order, so the following images lost their pose (issue 20
#7). A pose that jumps ahead of the stream by more than a few of its usual intervals is now
provisional until the next pose: a newer one confirms the jump (`jump_confirmed`), one that
continues where the stream was drops it (`outlier_dropped`) and is stored in its place. A jump
of more than `trust_jump_s` (a clock gone wrong by hours, years, or to the epoch; bags and
simulations skip by seconds or minutes) is not even stored until confirmed (`held_ahead`), so
it is never `latest()`, the reference the stamp gate judges image stamps by, and a lone pose a
year ahead cannot vouch for an image stamped like it. A provisional pose within `trust_jump_s`
is stored and used at once: a stream that really skipped ahead with one pose is indistinguishable
from a glitch until its next pose, and refusing it would refuse every replay that skips.
"""
import bisect
from dataclasses import dataclass, field
import logging
import math

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from vpr_ros.core.errors import PoseError

_LOG = logging.getLogger(__name__)

COUNTER_KEYS = ('nan_pose', 'zero_quaternion', 'out_of_order', 'duplicate', 'dropped_capacity',
                'outside_range', 'gap', 'held_ahead', 'outlier_dropped', 'jump_confirmed')
# A pose further ahead of the newest than HOLD_FACTOR x the stream's median interval (and at
# least HOLD_MIN_S) is provisional until the next pose says whether the stream jumped with it.
HOLD_FACTOR = 4
HOLD_MIN_S = 0.1
TRUST_JUMP_S = 600.0
_INTERVALS = 16


@dataclass(frozen=True, eq=False)
class Pose:
    """A stamped 6DOF pose: position (3,) and unit quaternion (4,) in scipy's xyzw order."""

    stamp_ns: int
    position: np.ndarray = field(repr=False)
    quaternion: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.position, dtype=np.float64).reshape(3)
        q = np.asarray(self.quaternion, dtype=np.float64).reshape(4)
        n = float(np.linalg.norm(q))
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            raise PoseError('pose has NaN or inf values')
        if n < 1e-12:
            raise PoseError('pose quaternion has zero norm')
        object.__setattr__(self, 'stamp_ns', int(self.stamp_ns))
        object.__setattr__(self, 'position', p)
        object.__setattr__(self, 'quaternion', q / n)

    @property
    def yaw(self) -> float:
        """Heading of the +x (forward, REP-103) axis on the x-y plane, radians."""
        fwd = Rotation.from_quat(self.quaternion).apply([1.0, 0.0, 0.0])
        return math.atan2(fwd[1], fwd[0])

    @property
    def rotation(self) -> Rotation:
        """The orientation as a scipy Rotation, for callers that compare orientations."""
        return Rotation.from_quat(self.quaternion)

    def vector(self) -> np.ndarray:
        """[tx, ty, tz, qx, qy, qz, qw], the TB-Places order used by indices and the map."""
        return np.concatenate([self.position, self.quaternion])

    @classmethod
    def from_vector(cls, stamp_ns: int, v) -> 'Pose':
        """Inverse of `vector`, for poses read back from an index or the map."""
        v = np.asarray(v, dtype=np.float64).reshape(7)
        return cls(stamp_ns, v[:3], v[3:])

    def __repr__(self) -> str:
        p = ', '.join(f'{x:.3f}' for x in self.position)
        return f'Pose(stamp_ns={self.stamp_ns}, position=[{p}], yaw={math.degrees(self.yaw):.1f}°)'


class PoseBuffer:
    """
    Bounded, time-ordered poses with interpolation at arbitrary stamps.

    Stamps must strictly increase; the oldest pose is dropped past `capacity`. `pose_at` is a
    bisect plus one slerp, so it stays cheap at camera rate whatever the buffer size.
    """

    def __init__(self, max_gap_s: float | None = 0.5, capacity: int = 10000,
                 tolerance_s: float = 0.01, trust_jump_s: float = TRUST_JUMP_S) -> None:
        if capacity < 2:
            raise PoseError(f'capacity must be >= 2, got {capacity}')
        if tolerance_s < 0:
            raise PoseError(f'tolerance_s must be >= 0, got {tolerance_s}')
        self.max_gap_ns = None if not max_gap_s or max_gap_s <= 0 else int(max_gap_s * 1e9)
        self.capacity = int(capacity)
        self.tolerance_ns = int(tolerance_s * 1e9)
        self._stamps: list[int] = []
        self._pos: list[np.ndarray] = []
        self._quat: list[np.ndarray] = []
        self._held: tuple[int, np.ndarray, np.ndarray] | None = None   # beyond trust_jump_s
        self._provisional = False   # the newest stored pose jumped ahead, not yet confirmed
        self.trust_jump_ns = int(trust_jump_s * 1e9)
        self.counters: dict[str, int] = {k: 0 for k in COUNTER_KEYS}

    def __len__(self) -> int:
        return len(self._stamps)

    def clear(self) -> None:
        """Forget all poses (e.g. the clock jumped back when a bag restarts); keeps counters."""
        self._stamps.clear()
        self._pos.clear()
        self._quat.clear()
        self._held = None
        self._provisional = False

    def _count(self, key: str, detail: str) -> None:
        self.counters[key] += 1
        n = self.counters[key]
        if n == 1 or n % 100 == 0:  # throttled: first and every 100th, with the running count
            _LOG.warning('pose buffer: %s (%s, %d so far)', detail, key, n)

    def add(self, stamp_ns: int, position, quaternion) -> bool:
        """
        Append a pose; False (and counted) when it is NaN/inf, has a zero quaternion or is old.

        A stamp equal to or older than the newest stored one is refused rather than inserted, so
        the buffer never reorders history that interpolation may already have used. A pose far
        ahead of the stream is provisional, or held (True: accepted, not yet stored) beyond
        `trust_jump_s`, until the next one (see the module docstring).
        """
        p = np.asarray(position, dtype=np.float64).reshape(3)
        q = np.asarray(quaternion, dtype=np.float64).reshape(4)
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            self._count('nan_pose', 'pose with NaN/inf ignored')
            return False
        n = float(np.linalg.norm(q))
        if n < 1e-12:
            self._count('zero_quaternion', 'pose with zero-norm quaternion ignored')
            return False
        stamp_ns = int(stamp_ns)
        if self._held is not None and not self._resolve_held(stamp_ns):
            return False
        if self._provisional:
            self._settle_provisional(stamp_ns)
        if self._stamps:
            last = self._stamps[-1]
            if stamp_ns == last:
                self._count('duplicate', f'pose with duplicate stamp {stamp_ns} ignored')
                return False
            if stamp_ns < last:
                self._count('out_of_order',
                            f'pose stamp {stamp_ns} older than newest {last} ignored')
                return False
            if stamp_ns - last > self.trust_jump_ns:
                self._held = (stamp_ns, p, q / n)
                self.counters['held_ahead'] += 1
                return True
            self._provisional = stamp_ns - last > self._hold_ns()
        self._append(stamp_ns, p, q / n)
        return True

    def _settle_provisional(self, stamp_ns: int) -> None:
        """Settle a provisional pose: a newer pose confirms it, one in between drops it."""
        st = self._stamps
        if stamp_ns > st[-1]:
            self._provisional = False
            self.counters['jump_confirmed'] += 1
        elif len(st) >= 2 and st[-2] < stamp_ns < st[-1]:
            self._provisional = False
            self._count('outlier_dropped', f'pose stamped {st[-1]} ahead of the stream dropped')
            del st[-1], self._pos[-1], self._quat[-1]

    def _hold_ns(self) -> float:
        """How far ahead of the newest a pose may be before it is held (inf: too few poses)."""
        st = self._stamps
        if len(st) < 3:
            return float('inf')
        interval = float(np.median(np.diff(st[-_INTERVALS - 1:])))
        return max(HOLD_MIN_S * 1e9, HOLD_FACTOR * interval)

    def _resolve_held(self, stamp_ns: int) -> bool:
        """Settle a held pose by the next one: confirm or drop it; False: refuse this pose."""
        held, hp, hq = self._held
        if stamp_ns == held:
            self._count('duplicate', f'pose with duplicate stamp {stamp_ns} ignored')
            return False
        if self._stamps and stamp_ns <= self._stamps[-1]:
            return True       # a straggler says nothing about the held pose (refused below)
        self._held = None
        if stamp_ns > held:   # the stream went on past it: it really jumped
            self.counters['jump_confirmed'] += 1
            self._append(held, hp, hq)
        else:                 # the stream goes on where it was: the held pose was a glitch
            self._count('outlier_dropped', f'pose stamped {held} ahead of the stream dropped')
        return True

    def _append(self, stamp_ns: int, p: np.ndarray, q: np.ndarray) -> None:
        self._stamps.append(stamp_ns)
        self._pos.append(p)
        self._quat.append(q)
        if len(self._stamps) > self.capacity:
            del self._stamps[0], self._pos[0], self._quat[0]
            self.counters['dropped_capacity'] += 1

    def latest(self) -> Pose | None:
        """Return the newest stored pose (None when empty): never a held one."""
        if not self._stamps:
            return None
        return Pose(self._stamps[-1], self._pos[-1], self._quat[-1])

    def latest_confirmed(self) -> Pose | None:
        """
        Return the newest pose that is not provisional (None when none).

        What a caller compares a new pose with to tell a restarted stream (far behind it) from
        the stream going on after a provisional glitch (a reset there would drop the history).
        """
        k = len(self._stamps) - (2 if self._provisional else 1)
        return None if k < 0 else Pose(self._stamps[k], self._pos[k], self._quat[k])

    def oldest(self) -> Pose | None:
        """Return the oldest pose still held (None when empty), to report the covered span."""
        if not self._stamps:
            return None
        return Pose(self._stamps[0], self._pos[0], self._quat[0])

    def pose_at(self, stamp_ns: int) -> Pose | None:
        """
        Pose at stamp_ns, interpolated; None (counted) outside the range or across a gap.

        Within `tolerance_s` beyond either end the end pose is returned (with the asked stamp),
        because a camera frame a few ms newer than the last odometry message is the normal case.
        """
        stamp_ns = int(stamp_ns)
        st = self._stamps
        if not st:
            self._count('outside_range', 'no pose yet')
            return None
        if stamp_ns <= st[0] or stamp_ns >= st[-1]:
            end = 0 if stamp_ns <= st[0] else len(st) - 1
            if abs(stamp_ns - st[end]) <= self.tolerance_ns:
                return Pose(stamp_ns, self._pos[end], self._quat[end])
            self._count('outside_range',
                        f'stamp {stamp_ns} outside poses [{st[0]}, {st[-1]}]')
            return None
        k = bisect.bisect_left(st, stamp_ns)  # st[k-1] < stamp_ns <= st[k]
        if st[k] == stamp_ns:
            return Pose(stamp_ns, self._pos[k], self._quat[k])
        t0, t1 = st[k - 1], st[k]
        if self.max_gap_ns is not None and t1 - t0 > self.max_gap_ns:
            self._count('gap', f'stamp {stamp_ns} inside a {(t1 - t0) / 1e9:.3f} s pose gap')
            return None
        frac = (stamp_ns - t0) / (t1 - t0)
        pos = (1.0 - frac) * self._pos[k - 1] + frac * self._pos[k]
        slerp = Slerp([0.0, 1.0], Rotation.from_quat([self._quat[k - 1], self._quat[k]]))
        quat = slerp([frac]).as_quat()[0]
        return Pose(stamp_ns, pos, quat)
