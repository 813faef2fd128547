"""
Sequence evidence and distinctiveness: what the descriptors know beyond one frame.

One frame at night scores its true place barely above a hundred look-alikes; the last few
frames together rarely do (SeqSLAM). A candidate keyframe is therefore supported by the query's
recent keyframes agreeing with the map keyframes that precede (or follow) the candidate in
their own session's order, and judged by how far its support stands above the best place
outside its neighbourhood.

Alignment. Each map session is a track: its keyframes in order with a travel coordinate, the
distance driven along its poses (metres) when it has poses, else its stamps (seconds). The
query's history is its own session's last keyframes, `delta_j` behind the query on the same kind
of coordinate. For a candidate at coordinate `p` the history sample `j` is compared with the
map keyframe nearest to `p - d * v * delta_j`, for a few speed ratios `v` (distance already
removes speed, so v only absorbs odometry scale error; time needs the wider set) and both
directions `d` (a revisit driven the other way). A candidate's sequence score is the mean
cosine over the samples found (the candidate itself is sample 0), maximised over (v, d); fewer
than `min_samples` samples give no sequence score.

Distinctiveness. The `margin` of the best-supported candidate is its sequence score minus the
best score of any candidate outside its neighbourhood (same session, within `neighbourhood` on
the travel coordinate or, with poses, in the plane). Two views of a place revisited in the
same session are one place, not competitors. With no competitor among the candidates the
lowest candidate's single-frame score stands in, which bounds every keyframe not retrieved.

Memory is O(map): a coordinate per keyframe. Map descriptors are read through a callback and
kept in a bounded cache, since consecutive frames look at the same stretch of the map.
"""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# A stamp jumping back this far starts a new stretch of the track: never aligned across.
_GAP = 1e9
SPEEDS_DISTANCE = (0.8, 1.0, 1.25)
SPEEDS_TIME = (0.5, 0.71, 1.0, 1.41, 2.0)


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


class SessionTracks:
    """The map's keyframes per session in travel order; grows with every keyframe added."""

    def __init__(self) -> None:
        self._tracks: dict[int, _Track] = {}
        self._where: dict[int, tuple[int, int]] = {}  # id -> (session, index in its track)

    def add(self, kid: int, session: int, stamp_ns: int, position: np.ndarray | None) -> None:
        """Append a keyframe (ids grow within a session); `position` (3,) or None."""
        tr = self._tracks.setdefault(int(session), _Track([], [], [], []))
        xy = (np.nan, np.nan) if position is None else (float(position[0]),
                                                        float(position[1]))
        t, dist = self.coordinates(int(session), stamp_ns, position)
        if tr.ids and t < tr.time[-1] - 1.0:  # a new stretch (bag restarted): never aligned
            tr.offset = tr.time[-1] + _GAP - stamp_ns * 1e-9
            t = tr.time[-1] + _GAP
            dist = tr.dist[-1] + _GAP
        self._where[int(kid)] = (int(session), len(tr.ids))
        tr.ids.append(int(kid))
        tr.dist.append(dist)
        tr.time.append(t)
        tr.xy.append(xy)

    def coordinates(self, session: int, stamp_ns: int, position: np.ndarray | None
                    ) -> tuple[float, float]:
        """(time, distance) a frame of `session` at this stamp and position would have."""
        tr = self._tracks.get(int(session))
        t = stamp_ns * 1e-9 + (tr.offset if tr is not None else 0.0)
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

    def track(self, session: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._tracks[int(session)].arrays()

    def recent(self, session: int, n: int) -> list[int]:
        """Return the last `n` keyframe ids of a session, newest first."""
        tr = self._tracks.get(int(session))
        return [] if tr is None else tr.ids[::-1][:n]


@dataclass(frozen=True)
class SequenceConfig:
    """How far back the query looks and what counts as one place; see the module docstring."""

    length: int = 10                 # history keyframes besides the query itself
    min_samples: int = 4             # fewer aligned samples: no sequence evidence
    tolerance_m: float = 1.0         # a history sample needs a map keyframe this close ...
    tolerance_s: float = 3.0         # ... or, on time, this close
    neighbourhood_m: float = 5.0     # one place: within this on the track or in the plane
    neighbourhood_s: float = 10.0
    cache: int = 4096                # map descriptors kept (x dim x 4 bytes)


@dataclass(frozen=True)
class Query:
    """The query frame and its history: descriptors (H, D), offsets behind it, coordinate kind."""

    descs: np.ndarray
    offsets: np.ndarray   # (H,) >= 0, offsets[0] == 0 (the query itself)
    metric: bool          # offsets in metres (poses) or seconds


class SequenceScorer:
    """Sequence scores and the margin of candidates; map descriptors through `fetch(id)`."""

    def __init__(self, tracks: SessionTracks, fetch: Callable[[int], np.ndarray],
                 config: SequenceConfig | None = None) -> None:
        self.tracks = tracks
        self.config = config or SequenceConfig()
        self._fetch = fetch
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def descriptor(self, kid: int) -> np.ndarray:
        d = self._cache.get(kid)
        if d is None:
            d = np.asarray(self._fetch(kid), np.float32)
            self._cache[kid] = d
            while len(self._cache) > self.config.cache:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(kid)
        return d

    def forget(self) -> None:
        self._cache.clear()

    def remember(self, kid: int, desc: np.ndarray) -> None:
        """Cache a descriptor just added to the map (the next frames' history reads it)."""
        self._cache[int(kid)] = np.asarray(desc, np.float32)
        while len(self._cache) > self.config.cache:
            self._cache.popitem(last=False)

    def _aligned(self, kid: int, q: Query) -> list[np.ndarray]:
        """Per (speed, direction): the map keyframe id aligned with each history sample, -1."""
        where = self.tracks.locate(kid)
        if where is None:
            return []
        ids, dist, time, _ = self.tracks.track(where[0])
        coord = dist if q.metric else time
        if not np.isfinite(coord[where[1]]):
            return []
        tol = self.config.tolerance_m if q.metric else self.config.tolerance_s
        speeds = SPEEDS_DISTANCE if q.metric else SPEEDS_TIME
        out = []
        for v in speeds:
            for d in (1.0, -1.0):
                target = coord[where[1]] - d * v * q.offsets
                k = np.clip(np.searchsorted(coord, target), 1, len(coord) - 1)
                k = np.where(np.abs(coord[k - 1] - target) <= np.abs(coord[k] - target), k - 1, k)
                hit = np.abs(coord[k] - target) <= tol
                out.append(np.where(hit, ids[k], -1))
        return out

    def scores(self, kids: Sequence[int], q: Query, allowed: Callable[[int], bool]
               ) -> list[float | None]:
        """
        Sequence score of each candidate, None without `min_samples` aligned samples.

        All aligned map keyframes are read once and compared with the history in one product.
        """
        per = [self._aligned(int(k), q) for k in kids]
        need = sorted({int(a) for al in per for row in al for a in row if a >= 0})
        ok = {a for a in need if allowed(a)}
        need = [a for a in need if a in ok]
        if not need:
            return [None] * len(kids)
        col = {a: i for i, a in enumerate(need)}
        sims = q.descs @ np.stack([self.descriptor(a) for a in need]).T  # (H, n)
        out: list[float | None] = []
        rows = np.arange(len(q.offsets))
        for al in per:
            best = None
            for row in al:
                use = np.array([a >= 0 and int(a) in ok for a in row])
                if use.sum() < self.config.min_samples:
                    continue
                cols = np.array([col[int(a)] for a in row[use]])
                s = float(sims[rows[use], cols].mean())
                best = s if best is None else max(best, s)
            out.append(best)
        return out

    def same_place(self, a: int, b: int, metric: bool) -> bool:
        """Whether two map keyframes are one place (same session, near on track or plane)."""
        wa, wb = self.tracks.locate(a), self.tracks.locate(b)
        if wa is None or wb is None or wa[0] != wb[0]:
            return False
        _, dist, time, xy = self.tracks.track(wa[0])
        c = self.config
        if metric and np.isfinite(dist[wa[1]]) and np.isfinite(dist[wb[1]]):
            if abs(dist[wa[1]] - dist[wb[1]]) <= c.neighbourhood_m:
                return True
            return bool(np.hypot(*(xy[wa[1]] - xy[wb[1]])) <= c.neighbourhood_m)
        return abs(time[wa[1]] - time[wb[1]]) <= c.neighbourhood_s


def margins(scorer: SequenceScorer, ids: Sequence[int], singles: Sequence[float], q: Query,
            allowed: Callable[[int], bool]) -> tuple[list, int | None, float | None]:
    """
    Sequence score per candidate, the best-supported one and its margin (None: no sequence).

    A candidate without a sequence score competes with its single-frame score, which is
    higher than its sequence score would be unless the place really repeats.
    """
    seq = scorer.scores(ids, q, allowed)
    have = [i for i, s in enumerate(seq) if s is not None]
    if not have:
        return seq, None, None
    b = max(have, key=lambda i: seq[i])
    rivals = [seq[i] if seq[i] is not None else singles[i] for i in range(len(ids))
              if i != b and not scorer.same_place(int(ids[b]), int(ids[i]), q.metric)]
    rival = max(rivals) if rivals else float(min(singles))
    return seq, b, float(seq[b] - rival)


class SequenceEvidence:
    """
    The detector's sequence bookkeeping: tracks of the map, the query history, the margins.

    `on_keyframe` after every map add, `evaluate` for a frame's candidates before the decision.
    A map keyframe of the query's own session within `exclusion_s` of it is never a sample (the
    same recent past the map search excludes).
    """

    def __init__(self, place_map, config: SequenceConfig | None = None) -> None:
        self.place_map = place_map
        self.config = config or SequenceConfig()
        self.tracks = SessionTracks.from_records(place_map.records())
        self.scorer = SequenceScorer(self.tracks, place_map.descriptor, self.config)

    def reset(self) -> None:
        """Forget everything (the map was reset)."""
        self.tracks.clear()
        self.scorer.forget()

    def on_keyframe(self, kid: int, stamp_ns: int, position: np.ndarray | None,
                    desc: np.ndarray) -> None:
        self.tracks.add(kid, self.place_map.session, stamp_ns, position)
        self.scorer.remember(kid, desc)  # no read-back from the index

    def query(self, desc: np.ndarray, stamp_ns: int, position: np.ndarray | None,
              length: int | None = None) -> Query:
        """Return the frame and its session's last keyframes, with their offsets behind it."""
        session = self.place_map.session
        t, dist = self.tracks.coordinates(session, stamp_ns, position)
        metric = bool(np.isfinite(dist))
        descs, offsets = [np.asarray(desc, np.float32)], [0.0]
        hist = self.tracks.recent(session, self.config.length if length is None else length)
        if hist:
            _, tdist, ttime, _ = self.tracks.track(session)
            n = len(ttime)
            for k, kid in enumerate(hist):
                off = (dist - tdist[n - 1 - k]) if metric else (t - ttime[n - 1 - k])
                if not np.isfinite(off) or off < 0 or off >= _GAP / 2:
                    break  # another stretch, or poses missing: the history ends here
                descs.append(self.scorer.descriptor(kid))
                offsets.append(float(off))
        return Query(np.stack(descs), np.asarray(offsets), metric)

    def evaluate(self, desc: np.ndarray, stamp_ns: int, position: np.ndarray | None,
                 ids: Sequence[int], singles: Sequence[float], exclusion_s: float,
                 length: int | None = None) -> tuple[list, int | None, float | None]:
        """Sequence score per candidate, the best-supported index and its margin."""
        if not len(ids):
            return [], None, None
        q = self.query(desc, stamp_ns, position, length)
        session = self.place_map.session
        t_now = self.tracks.coordinates(session, stamp_ns, position)[0]

        def allowed(kid: int) -> bool:
            where = self.tracks.locate(kid)
            if where is None or where[0] != session:
                return where is not None
            return t_now - self.tracks.track(session)[2][where[1]] > exclusion_s
        return margins(self.scorer, ids, singles, q, allowed)
