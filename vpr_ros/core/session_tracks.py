"""
Where a map's keyframes lie along each session's drive, and how much a path turned.

The sequence evidence (vpr_ros/core/sequence.py) aligns the query's recent frames with the
keyframes before a candidate in the candidate's own session. A session's keyframes in id order
form its track: each with the distance driven along its poses (NaN without poses), its stamp
(seconds; a stamp jumping back starts a new stretch that is never aligned across) and its
position. `turn_deg` measures how much a path turned over a window of distance: through a turn
two drives disagree about the distance, so the sequence gives no margin there.
"""
from dataclasses import dataclass

import numpy as np

# A stamp jumping back this far starts a new stretch of a track: never aligned across.
_GAP = 1e9


def xy_of(position: np.ndarray | None) -> tuple[float, float]:
    """(x, y) of a position, NaN without one."""
    return (np.nan, np.nan) if position is None else (float(position[0]), float(position[1]))


def turn_deg(dist: np.ndarray, xy: np.ndarray, at: float, window: float) -> float:
    """
    How far the path turned over the `window` metres before distance `at`, in degrees.

    The heading of the path's second half against its first half (positions at `at - window`,
    `at - window / 2` and `at`, nearest by distance; `dist` ascending). 0 where the path is
    shorter than a quarter of the window or has no positions.
    """
    if not len(dist) or not np.isfinite(at):
        return 0.0
    k = np.clip(np.searchsorted(dist, [at - window, at - window / 2, at]), 0, len(dist) - 1)
    p = np.asarray(xy, float)[k]
    v1, v2 = p[1] - p[0], p[2] - p[1]
    if not (np.all(np.isfinite(p)) and min(np.hypot(*v1), np.hypot(*v2)) >= window / 4):
        return 0.0
    a = np.degrees(np.arctan2(v2[1], v2[0]) - np.arctan2(v1[1], v1[0]))
    return float(abs((a + 180.0) % 360.0 - 180.0))


@dataclass
class _Track:
    """One session's keyframes in id order: ids, distance (NaN without poses), time, xy."""

    ids: list
    dist: list
    time: list
    xy: list
    offset: float = 0.0  # added to stamps after a jump back, so time keeps increasing
    _arrays: tuple | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None or len(self._arrays[0]) != len(self.ids):
            self._arrays = (np.asarray(self.ids, np.int64), np.asarray(self.dist, float),
                            np.asarray(self.time, float), np.asarray(self.xy, float))
        return self._arrays


def seconds(stamp_ns: int) -> float:
    """
    Return a stamp in seconds, exact for whole seconds whatever the epoch.

    `stamp_ns * 1e-9` rounds differently at 1.7e9 s than at 0, and aligning by time breaks
    ties (a keyframe half-way between two targets) on such last bits: a node on wall-clock
    stamps and a replay counting from 0 then part ways.
    """
    sec, ns = divmod(int(stamp_ns), 1_000_000_000)
    return sec + ns / 1e9


class SessionTracks:
    """The map's keyframes per session in travel order; grows with every keyframe added."""

    def __init__(self) -> None:
        self._tracks: dict[int, _Track] = {}
        self._where: dict[int, tuple[int, int]] = {}  # id -> (session, index in its track)

    def add(self, kid: int, session: int, stamp_ns: int, position: np.ndarray | None) -> None:
        """Append a keyframe (ids grow within a session); `position` (3,) or None."""
        tr = self._tracks.setdefault(int(session), _Track([], [], [], []))
        xy = xy_of(position)
        t, dist = self.coordinates(int(session), stamp_ns, position)
        if tr.ids and t < tr.time[-1] - 1.0:  # a new stretch (bag restarted): never aligned
            tr.offset = tr.time[-1] + _GAP - seconds(stamp_ns)
            t, dist = tr.time[-1] + _GAP, tr.dist[-1] + _GAP
        self._where[int(kid)] = (int(session), len(tr.ids))
        tr.ids.append(int(kid))
        tr.dist.append(dist)
        tr.time.append(t)
        tr.xy.append(xy)

    def coordinates(self, session: int, stamp_ns: int, position: np.ndarray | None
                    ) -> tuple[float, float]:
        """(time, distance) a frame of `session` at this stamp and position would have."""
        tr = self._tracks.get(int(session))
        t = seconds(stamp_ns) + (tr.offset if tr is not None else 0.0)
        if tr is None or not tr.ids:
            return t, (0.0 if position is not None else np.nan)
        prev = np.array(tr.xy[-1])
        if position is None:
            return t, tr.dist[-1]
        if not np.all(np.isfinite(prev)) or not np.isfinite(tr.dist[-1]):
            return t, 0.0  # poses start here: distances count from this keyframe on
        return t, tr.dist[-1] + float(np.hypot(position[0] - prev[0], position[1] - prev[1]))

    @classmethod
    def from_records(cls, records) -> 'SessionTracks':
        """Tracks of a loaded map (records with id, stamp_ns, session, pose)."""
        out = cls()
        for r in sorted(records, key=lambda r: r.id):
            pose = np.asarray(r.pose, float)
            out.add(r.id, r.session, r.stamp_ns, pose[:3] if np.all(np.isfinite(pose)) else None)
        return out

    def clear(self) -> None:
        self._tracks.clear()
        self._where.clear()

    def locate(self, kid: int) -> tuple[int, int] | None:
        return self._where.get(int(kid))

    def locate_many(self, kids) -> tuple[np.ndarray, np.ndarray]:
        """(session, index in its track) per id as arrays; session -1 where unknown."""
        where = [self._where.get(int(k), (-1, -1)) for k in kids]
        arr = np.array(where, np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def track(self, session: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._tracks[int(session)].arrays()

    def session_ids(self, session: int) -> list[int]:
        tr = self._tracks.get(int(session))
        return [] if tr is None else list(tr.ids)
