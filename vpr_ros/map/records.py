"""
Keyframe records in columns, and the temporal exclusion of search results.

Records (id, stamp, pose, session, frame_id) live in columnar numpy arrays: a million keyframes
must not cost a million Python objects. The table also keeps this session's ids and stamps in
order, because the temporal exclusion (the one place it is applied) only ever concerns the
current session's recent keyframes.
"""
import bisect
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


@dataclass(frozen=True, eq=False)
class KeyframeRecord:
    """One keyframe's metadata; pose is [tx, ty, tz, qx, qy, qz, qw], all NaN when unknown."""

    id: int
    stamp_ns: int
    pose: np.ndarray = field(repr=False)
    session: int
    frame_id: str = ''

    @property
    def has_pose(self) -> bool:
        """Whether the pose is known, so callers need not test NaNs themselves."""
        return bool(np.all(np.isfinite(self.pose)))


@dataclass(frozen=True)
class Match:
    """A search result: keyframe id, cosine similarity (higher is better) and its record."""

    id: int
    score: float
    record: KeyframeRecord


class KeyframeTable:
    """
    Columnar keyframe records in id order, plus this session's ids and stamps.

    `reserve` (may fail: memory) is separate from `append` (cannot fail once reserved), so a
    map add can do everything fallible before it changes anything.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Drop every record (the arrays start small and double as they fill)."""
        cap = 1024
        self.n = 0
        self.ids = np.zeros(cap, np.int64)
        self.stamps = np.zeros(cap, np.int64)
        self.poses = np.zeros((cap, 7), np.float64)
        self.sessions = np.zeros(cap, np.int32)
        self.frame_ids: list[str] = []
        self.session_ids: list[int] = []        # this session's ids, in order added
        self.session_stamps: list[int] = []     # this session's stamps, sorted

    def __len__(self) -> int:
        return self.n

    def reserve(self, need: int) -> None:
        """Grow the columns to hold `need` rows; nothing visible changes."""
        cap = len(self.ids)
        if need <= cap:
            return
        new = max(need, cap * 2)
        grown = {}
        for name in ('ids', 'stamps', 'sessions'):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[:self.n] = old[:self.n]
            grown[name] = arr
        poses = np.zeros((new, 7), np.float64)
        poses[:self.n] = self.poses[:self.n]
        for name, arr in grown.items():
            setattr(self, name, arr)
        self.poses = poses

    def append(self, ids: np.ndarray, stamps: np.ndarray, poses: np.ndarray, session: int,
               frames: list[str]) -> None:
        """Append rows of the current session (after `reserve`)."""
        k = len(ids)
        sl = slice(self.n, self.n + k)
        self.ids[sl] = ids
        self.stamps[sl] = stamps
        self.poses[sl] = poses
        self.sessions[sl] = session
        self.frame_ids.extend(frames)
        self.n += k
        self.session_ids.extend(int(i) for i in ids)
        if k == 1:
            bisect.insort(self.session_stamps, int(stamps[0]))
        else:
            self.session_stamps = sorted(self.session_stamps + [int(s) for s in stamps])

    def load(self, ids: np.ndarray, stamps: np.ndarray, poses: np.ndarray,
             sessions: np.ndarray, frames: list[str]) -> None:
        """Replace the table with saved rows (of earlier sessions)."""
        self.clear()
        n = len(ids)
        self.reserve(n)
        self.ids[:n], self.stamps[:n], self.poses[:n], self.sessions[:n] = (
            ids, stamps, poses, sessions)
        self.frame_ids = frames
        self.n = n

    def record_at(self, i: int) -> KeyframeRecord:
        """Record of row `i`."""
        return KeyframeRecord(id=int(self.ids[i]), stamp_ns=int(self.stamps[i]),
                              pose=self.poses[i].copy(), session=int(self.sessions[i]),
                              frame_id=self.frame_ids[i])

    def check_ids(self, kids: np.ndarray) -> None:
        """KeyError naming the first of `kids` (an int64 array) that is not in the table."""
        known = self.ids[:self.n]
        missing = kids[~np.isin(kids, known)]
        if len(missing):
            raise KeyError(f'no keyframe with id {int(missing[0])} in the map')

    def row(self, kid: int) -> int:
        """Row of keyframe `kid` (KeyError when absent)."""
        i = int(np.searchsorted(self.ids[:self.n], kid))
        if i >= self.n or self.ids[i] != kid:
            raise KeyError(f'no keyframe with id {kid} in the map')
        return i

    # ------------------------------------------------------------ exclusion
    def fetch_bound(self, query_stamp_ns: Optional[int], excl_ns: int, exclusion_n: int) -> int:
        """Upper bound of excluded keyframes, so one FAISS call over-fetches enough."""
        bound = min(exclusion_n, len(self.session_ids))
        if query_stamp_ns is not None and excl_ns > 0:
            lo = bisect.bisect_left(self.session_stamps, query_stamp_ns - excl_ns)
            hi = bisect.bisect_right(self.session_stamps, query_stamp_ns + excl_ns)
            bound += max(0, hi - lo)
        return bound

    def exclude(self, dist: np.ndarray, labels: np.ndarray, session: int,
                query_stamp_ns: Optional[int], excl_ns: int, exclusion_n: int,
                k: int) -> list[Match]:
        """
        Keep the first k search results that are not this session's recent past.

        The one definition of the temporal exclusion: a keyframe of the current `session` is
        excluded when its stamp is within `excl_ns` of the query's (|dt| <= excl_ns, exact
        integer nanoseconds), or it is among the last `exclusion_n` added; keyframes of earlier
        sessions never are.
        """
        valid = labels >= 0
        lab = labels[valid]
        sc = dist[valid]
        rows = np.searchsorted(self.ids[:self.n], lab)
        excluded = np.zeros(len(rows), bool)
        cur = self.sessions[rows] == session
        if exclusion_n > 0 and self.session_ids:
            first = self.session_ids[-min(exclusion_n, len(self.session_ids))]
            excluded |= cur & (lab >= first)
        if query_stamp_ns is not None and excl_ns > 0:
            # Bounds clipped to int64 instead of a difference that could overflow.
            lo = max(query_stamp_ns - excl_ns, _INT64_MIN)
            hi = min(query_stamp_ns + excl_ns, _INT64_MAX)
            st = self.stamps[rows]
            excluded |= cur & (st >= lo) & (st <= hi)
        keep = np.flatnonzero(~excluded)[:k]
        return [Match(id=int(lab[j]), score=float(sc[j]), record=self.record_at(int(rows[j])))
                for j in keep]
