"""
Sequence evidence and distinctiveness: what the descriptors know beyond one frame.

One frame at night scores its true place barely above a hundred look-alikes; the last metres
of frames together rarely do (SeqSLAM). A candidate keyframe is therefore supported by the
query's recent frames agreeing with the map keyframes that precede it in its own session's
order, and judged by how far its support stands above the best place outside its
neighbourhood.

Alignment. Each map session is a track: its keyframes in order with a travel coordinate, the
distance driven along its poses (metres) when it has poses, else its stamps (seconds). The
query's history is every frame it processed over the last `length_m` metres (`length_s`
seconds without poses), `offset_j` behind it on the same kind of coordinate. For a candidate at
coordinate `p`, history frame `j` is compared with the map keyframe nearest to `p - v *
offset_j` (within the tolerance), for speed ratios `v` (distance removes speed, so only 1;
time needs a few). The sequence score is the mean similarity over the frames aligned, provided
they cover at least `coverage` of the history: a candidate at the start of a track, where only
the last metre aligns, is no sequence.

Pace. A pose-less history is aligned at the speed ratio the recent frames have fitted best
(vpr_ros/core/pace.py), the others must fit better by `speed_prior` to win: taking the best
of the ratios frame by frame made near-misses. Measured with the built-in model (README).

Centring. Light, fog and season shift every descriptor of a session the same way, which drags
the cosine of a night frame to all day keyframes together. Sequence similarities are therefore
taken between descriptors centred on their own session's mean: the current session's running
mean of the frames it processed, a stored session's mean of its keyframes. Measured on the
simulated cross-session set (day map; dusk, night, fog, winter), this took sequence R@1 on the
node's keyframes from 0.55 / 0.08 / 0.50 / 0.93 to 0.98 / 0.73 / 0.98 / 0.99.

Distinctiveness. The `margin` of the best-supported candidate is its sequence score minus the
best score of any candidate outside its neighbourhood (same session and within `neighbourhood`
on the track, or in the plane with poses: one place seen twice is not a rival). Candidates are
the search's own, those of a search with the centred query, and the previous frame's best ones
moved on by the distance the query moved, so a place once found stays a candidate.

Turns. Aligned by distance, two drives through one turn on different lines (a lateral offset
of half a metre) disagree about the distance by about the offset times the angle turned, and
the history then fits the keyframe a metre before the right one as well as the right one. On
the calibration garden every false sequence acceptance was such a near-miss in or just after a
sharp turn; the margin is therefore withheld while the query's path or the map track before
the candidate turned more than `max_turn_deg` over the last `turn_window_m` (the sequence score
itself is kept, and the candidate carried on).

Memory is O(map): a coordinate per keyframe, a mean per session, a bounded history and a
bounded cache of map descriptors (read through `place_map.descriptors`).
"""
from collections import deque, OrderedDict
from dataclasses import dataclass
from itertools import takewhile
from typing import Callable, Sequence

import numpy as np

from vpr_ros.core.pace import Pace, SPEEDS_TIME
from vpr_ros.core.session_tracks import seconds, SessionTracks, turn_deg, xy_of

SPEEDS_DISTANCE = (1.0,)
# The current session is centred once its running mean has this many frames behind it.
MIN_MEAN_FRAMES = 10
# Frames of history kept at most (10 m at 1 m/s and 30 Hz), whatever the frame rate.
HISTORY_FRAMES = 512


@dataclass(frozen=True)
class SequenceConfig:
    """How far back the query looks and what counts as one place; see the module docstring."""

    length_m: float = 10.0           # history with poses ...
    length_s: float = 15.0           # ... and without
    coverage: float = 0.6            # aligned frames must reach this share of the history
    speed_prior: float = 0.02        # similarity another speed ratio must gain (pace.py)
    max_samples: int = 24            # history frames compared (evenly spaced), for the cost
    min_samples: int = 4
    tolerance_m: float = 1.0         # a history frame needs a map keyframe this close ...
    tolerance_s: float = 3.0         # ... or, on time, this close
    neighbourhood_m: float = 5.0     # one place: within this on the track or in the plane
    neighbourhood_s: float = 10.0
    candidates: int = 20             # per search (raw and centred)
    carried: int = 3                 # the previous frame's best candidates moved on
    turn_window_m: float = 3.0       # no margin while the query or the map track turns more
    max_turn_deg: float = 15.0       # ... than this over its last turn_window_m (see below)
    cache: int = 4096                # map descriptors kept (x dim x 4 bytes)


@dataclass(frozen=True)
class Scored:
    """A candidate keyframe with its sequence score (None: no sequence) and margin."""

    kid: int
    sequence: float | None
    margin: float | None = None
    aligned_by: str = ''  # 'distance' or 'time': how the history met the map (with the margin)


class SequenceEvidence:
    """
    The detector's sequence bookkeeping: tracks, session means, the query history, margins.

    `observe` after every processed frame (with the keyframe id when it became one),
    `evaluate` for a frame's candidates before the decision, `reset` when the map is reset.
    """

    def __init__(self, place_map, config: SequenceConfig | None = None) -> None:
        self.place_map = place_map
        self.config = config or SequenceConfig()
        self.tracks = SessionTracks.from_records(place_map.records())
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._means: dict[int, np.ndarray] = {}      # stored sessions' keyframe means
        self._run_sum: np.ndarray | None = None      # the current session's frames
        self._run_n = 0
        self._history: deque = deque(maxlen=HISTORY_FRAMES)  # (desc, time, distance, xy)
        self._carried: list[tuple[int, float]] = []  # (keyframe id, query coordinate then)
        self._odo: tuple[np.ndarray | None, float] = (None, 0.0)  # last position, metres
        self._pace = Pace(self.config.speed_prior, self.config.length_s)

    # -------------------------------------------------------------- bookkeeping
    def reset(self) -> None:
        """Forget everything (the map was reset)."""
        self._odo = (None, 0.0)
        self.tracks.clear()
        self._cache.clear()
        self._means.clear()
        self._run_sum, self._run_n = None, 0
        self._history.clear()
        self._carried = []
        self._pace.reset()

    def new_sequence(self) -> None:
        """Stamps jumped back: the history, the carried candidates and the pace end here."""
        self._history.clear()
        self._carried = []
        self._pace.reset()
        self._odo = (None, 0.0)

    def _here(self, stamp_ns: int, position: np.ndarray | None) -> tuple[float, float]:
        """(time, distance driven) of a query frame: the query's own odometer, not the map's."""
        last, driven = self._odo
        if position is None:
            return seconds(stamp_ns), np.nan
        if last is None:
            return seconds(stamp_ns), driven
        return seconds(stamp_ns), driven + float(np.hypot(position[0] - last[0],
                                                        position[1] - last[1]))

    def observe(self, desc: np.ndarray, stamp_ns: int, position: np.ndarray | None,
                kid: int | None) -> None:
        """Add a processed frame to the history and the session mean (and to the map tracks)."""
        d = np.asarray(desc, np.float32)
        session = self.place_map.session
        t, dist = self._here(stamp_ns, position)
        if position is not None:
            self._odo = (np.asarray(position, float), dist)
        self._run_sum = d.astype(np.float64) if self._run_sum is None else self._run_sum + d
        self._run_n += 1
        self._history.appendleft((d, t, dist, xy_of(position)))
        while len(self._history) > 1 and self._too_old(self._history[-1], t, dist):
            self._history.pop()
        if kid is not None:
            self.tracks.add(kid, session, stamp_ns, position)
            self._remember(kid, d)

    def _too_old(self, h: tuple, t: float, dist: float) -> bool:
        c = self.config
        if np.isfinite(dist) and np.isfinite(h[2]):
            return dist - h[2] > 2 * c.length_m or t - h[1] > 4 * c.length_s
        return t - h[1] > 2 * c.length_s

    def _remember(self, kid: int, desc: np.ndarray) -> None:
        self._cache[int(kid)] = np.asarray(desc, np.float32)
        self._cache.move_to_end(int(kid))
        while len(self._cache) > self.config.cache:
            self._cache.popitem(last=False)

    def descriptor(self, kid: int) -> np.ndarray:
        return self.descriptors([kid])[0]

    def descriptors(self, kids) -> np.ndarray:
        """(n, dim) map descriptors: the cached ones, the rest read from the map in one call."""
        got = [self._cache.get(int(k)) for k in kids]
        miss = [int(k) for k, d in zip(kids, got) if d is None]
        if miss:
            read = iter(np.asarray(self.place_map.descriptors(miss), np.float32))
            got = [next(read) if d is None else d for d in got]
            missed = set(miss)
            for k, d in zip(kids, got):  # a bounded FIFO of what was read: a hit is a lookup
                if int(k) in missed:
                    self._remember(k, d)
        return np.stack(got) if got else np.zeros((0, self.place_map.dim), np.float32)

    def session_mean(self, session: int) -> np.ndarray | None:
        """Return the current session's running mean or a stored session's keyframe mean."""
        if session == self.place_map.session:
            return None if self._run_sum is None else self._run_sum / self._run_n
        if session not in self._means:
            ids = self.tracks.session_ids(session)
            if not ids:
                return None
            total = 0.0
            for i in range(0, len(ids), 4096):  # once per stored session, in bounded chunks
                total = total + np.asarray(self.place_map.descriptors(ids[i:i + 4096]),
                                           np.float64).sum(0)
            self._means[session] = total / len(ids)
        return self._means[session]

    # ------------------------------------------------------------------ scoring
    def _mean_for_centring(self, session: int) -> np.ndarray | None:
        """Return the session's mean to centre on (None: not centred: no mean, too few frames)."""
        mu = self.session_mean(session)
        if mu is None or (session == self.place_map.session and self._run_n < MIN_MEAN_FRAMES):
            return None
        return mu

    def _centred(self, x: np.ndarray, session: int) -> np.ndarray:
        """Rows of `x` minus the session's mean, unit length (unchanged without a mean)."""
        mu = self._mean_for_centring(session)
        if mu is None:
            return x
        y = np.asarray(x, np.float64) - mu
        return (y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-9)).astype(
            np.float32)

    def _query(self, desc: np.ndarray, stamp_ns: int, position: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, bool, float]:
        """(centred history descriptors, offsets behind the query, metric, query coordinate)."""
        c = self.config
        t, dist = self._here(stamp_ns, position)
        frames = [(np.asarray(desc, np.float32), t, dist, xy_of(position))] + list(self._history)
        # frames that lost their pose are left out, unless too few have one (then: by time)
        posed = [h for h in frames if np.isfinite(h[2])]
        metric = bool(np.isfinite(dist)) and (len(posed) == len(frames) or
                                              dist - posed[-1][2] >= c.coverage * c.length_m)
        frames = posed if metric else frames
        now, length = (dist, c.length_m) if metric else (t, c.length_s)
        offs = np.array([now - (h[2] if metric else h[1]) for h in frames])
        keep = np.flatnonzero((offs >= 0) & (offs <= length))
        if len(keep) > c.max_samples:  # evenly spaced over the history, the query first
            keep = keep[np.unique(np.round(np.linspace(0, len(keep) - 1, c.max_samples))
                                  .astype(int))]
        descs = self._centred(np.stack([frames[k][0] for k in keep]), self.place_map.session)
        return descs, offs[keep], metric, now

    def _aligned(self, kids: Sequence[int], offsets: np.ndarray, metric: bool) -> np.ndarray:
        """
        (candidates, speeds, history frames) map keyframe ids aligned with each history frame.

        For a candidate at coordinate `p` on its track, history frame `j` meets the keyframe
        nearest to `p - v * offset_j` for each speed `v`; -1 where none is within the
        tolerance, or the candidate is not on a track with that coordinate. One sorted search
        per session for all its candidates.
        """
        speeds = np.asarray(SPEEDS_DISTANCE if metric else SPEEDS_TIME, float)
        out = np.full((len(kids), len(speeds), len(offsets)), -1, np.int64)
        sessions, index = self.tracks.locate_many(kids)
        tol = self.config.tolerance_m if metric else self.config.tolerance_s
        for session in np.unique(sessions[sessions >= 0]):
            rows = np.flatnonzero(sessions == session)
            ids, dist, time, _ = self.tracks.track(int(session))
            coord = dist if metric else time
            here = coord[index[rows]]
            rows, here = rows[np.isfinite(here)], here[np.isfinite(here)]
            target = here[:, None, None] - speeds[None, :, None] * offsets[None, None, :]
            k = np.clip(np.searchsorted(coord, target), 1, max(1, len(coord) - 1))
            k = np.minimum(k, len(coord) - 1)
            k = np.where(np.abs(coord[k - 1] - target) <= np.abs(coord[k] - target), k - 1, k)
            out[rows] = np.where(np.abs(coord[k] - target) <= tol, ids[k], -1)
        return out

    def _allowed(self, kids, session: int, t_now: float, exclusion_s: float) -> np.ndarray:
        """Per id: on a track, and outside the exclusion window when of the current session."""
        sessions, index = self.tracks.locate_many(kids)
        ok = sessions >= 0
        mine = np.flatnonzero(sessions == session)
        if len(mine):
            time = self.tracks.track(session)[2]
            ok[mine] = t_now - time[index[mine]] > exclusion_s
        return ok

    def _scores(self, kids: Sequence[int], descs: np.ndarray, offsets: np.ndarray,
                metric: bool, allowed: Callable[[np.ndarray], np.ndarray]
                ) -> tuple[list[float | None], np.ndarray | None]:
        """
        Sequence score per candidate, and the best one's similarity per speed ratio.

        The score is the mean centred similarity of the aligned frames at the ratio that
        scores best after the pace's penalty; the per-ratio similarities of the best
        candidate (NaN: not aligned) are the pace's evidence.

        Vectorised: every (candidate, speed, history frame) alignment is one entry of an id
        array; the map keyframes they name are read and centred once, compared with the
        history in one product, and the means taken with a mask.
        """
        c = self.config
        length = c.length_m if metric else c.length_s
        ids = self._aligned(kids, offsets, metric)
        uniq = np.unique(ids[ids >= 0])
        uniq = uniq[allowed(uniq)]
        if not len(uniq):
            return [None] * len(kids), None
        sims = self._similarities(descs, uniq)  # (H, n)
        col = np.searchsorted(uniq, np.maximum(ids, 0))
        valid = (ids >= 0) & (uniq[np.minimum(col, len(uniq) - 1)] == ids)
        h = np.broadcast_to(np.arange(len(offsets)), ids.shape)
        vals = np.where(valid, sims[h, np.minimum(col, len(uniq) - 1)], 0.0)
        count = valid.sum(-1)
        reach = np.where(valid, offsets[None, None, :], -1.0).max(-1)
        mean = vals.sum(-1) / np.maximum(count, 1)
        ok = (count >= c.min_samples) & (reach >= c.coverage * length)
        fitted = np.where(ok, mean - (0.0 if metric else self._pace.penalty()), -np.inf)
        best = fitted.max(-1)
        top = int(np.argmax(best))
        per_speed = None if metric or not np.isfinite(best[top]) else np.where(ok[top], mean[top],
                                                                                 np.nan)
        return [float(b) if np.isfinite(b) else None for b in best], per_speed

    def _similarities(self, descs: np.ndarray, kids) -> np.ndarray:
        """
        (rows of `descs`, keyframes) cosine of the centred query rows with centred keyframes.

        Centring the keyframes row by row costs passes over every (keyframe, dim) value; the
        same numbers come from one product with the raw rows: (q . (m - mu)) / |m - mu|, with
        |m - mu|^2 = |m|^2 - 2 m . mu + |mu|^2.
        """
        mats = self.descriptors(kids)
        sims = descs @ mats.T
        if not len(mats):
            return sims
        sessions = self.tracks.locate_many(kids)[0]
        for session in np.unique(sessions):
            mu = self._mean_for_centring(int(session))
            if mu is None:
                continue  # not centred yet: raw cosine, as `_centred` leaves it
            rows = np.flatnonzero(sessions == session)
            m = mats[rows]
            mu32 = mu.astype(np.float32)
            sq = (np.einsum('ij,ij->i', m, m, dtype=np.float64) - 2.0 * (m @ mu32)
                  + float(mu @ mu))
            norm = np.sqrt(np.maximum(sq, 1e-18)).astype(np.float32)
            sims[:, rows] = (sims[:, rows] - (descs @ mu32)[:, None]) / norm[None, :]
        return sims

    def _centred_singles(self, kids: list[int], query: np.ndarray) -> dict[int, float]:
        """Centred cosine of the (centred) query with each keyframe, by id."""
        if not kids:
            return {}
        return dict(zip(kids, (float(v) for v in self._similarities(query[None], kids)[0])))

    def same_place_as(self, a: int, kids, metric: bool) -> np.ndarray:
        """Per keyframe of `kids`: one place with `a` (same session, near on track or plane)."""
        out = np.zeros(len(kids), bool)
        wa = self.tracks.locate(a)
        if wa is None or not len(kids):
            return out
        sessions, index = self.tracks.locate_many(kids)
        rows = np.flatnonzero(sessions == wa[0])
        if not len(rows):
            return out
        _, dist, time, xy = self.tracks.track(wa[0])
        c = self.config
        b = index[rows]
        by_time = np.abs(time[wa[1]] - time[b]) <= c.neighbourhood_s
        if metric and np.isfinite(dist[wa[1]]):
            with np.errstate(invalid='ignore'):
                near = ((np.abs(dist[wa[1]] - dist[b]) <= c.neighbourhood_m)
                        | (np.hypot(*(xy[wa[1]] - xy[b]).T) <= c.neighbourhood_m))
            out[rows] = np.where(np.isfinite(dist[b]), near, by_time)
        else:
            out[rows] = by_time
        return out

    def _turning(self, kid: int, now: float, position: np.ndarray | None) -> bool:
        """Whether the query's path or the map track before `kid` turns too much to align."""
        c = self.config
        # the history is newest first: only the frames within the window can change the turn
        past = list(takewhile(lambda h: now - h[2] <= c.turn_window_m,
                              (h for h in self._history if np.isfinite(h[2]))))[::-1]
        dist = np.array([h[2] for h in past] + [now], float)
        xy = np.array([h[3] for h in past] + [xy_of(position)], float)
        if turn_deg(dist, xy, now, c.turn_window_m) > c.max_turn_deg:
            return True
        where = self.tracks.locate(kid)
        if where is None:
            return False
        _, tdist, _, txy = self.tracks.track(where[0])
        return turn_deg(tdist, txy, float(tdist[where[1]]), c.turn_window_m) > c.max_turn_deg

    def _carried_on(self, now: float, metric: bool) -> list[int]:
        """Move the previous frame's best candidates on by the distance the query moved."""
        out = []
        for kid, then in self._carried:
            where = self.tracks.locate(kid)
            if where is None:
                continue
            ids, dist, time, _ = self.tracks.track(where[0])
            coord = dist if metric else time
            if not np.isfinite(coord[where[1]]):
                continue
            k = int(np.argmin(np.abs(coord - (coord[where[1]] + now - then))))
            out.append(int(ids[k]))
        return out

    def evaluate(self, desc: np.ndarray, stamp_ns: int, position: np.ndarray | None,
                 ids: Sequence[int], exclusion_s: float,
                 search: Callable[[np.ndarray, int], list[int]]
                 ) -> tuple[list[Scored], Scored | None]:
        """
        Score the candidates (the search's `ids`, the centred search's, the carried ones).

        Returns every candidate scored and the best-supported one with its margin (None: no
        candidate has a sequence score). `search(vector, k)` is the map search with the
        node's exclusion, for the centred query. The margin is taken over the best rival, or
        over 0 when every rival scores below it (centred, unrelated places score about 0).
        """
        descs, offsets, metric, now = self._query(desc, stamp_ns, position)
        centred = (search(descs[0], self.config.candidates)  # zero: the session's mean itself
                   if float(np.linalg.norm(descs[0])) > 0.5 else [])
        kids = list(dict.fromkeys([int(k) for k in ids] + [int(k) for k in centred] +
                                  self._carried_on(now, metric)))
        if not kids:
            self._carried = []
            return [], None
        session = self.place_map.session
        t_now = self.tracks.coordinates(session, stamp_ns, position)[0]

        def allowed(ids) -> np.ndarray:
            return self._allowed(ids, session, t_now, exclusion_s)
        kids = [k for k, ok in zip(kids, allowed(kids)) if ok]
        seq, per_speed = self._scores(kids, descs, offsets, metric, allowed)
        if per_speed is not None:
            self._pace.update(per_speed, now)
        scored = [Scored(k, s) for k, s in zip(kids, seq)]
        have = [x for x in scored if x.sequence is not None]
        self._carried = [(x.kid, now) for x in sorted(have, key=lambda x: -x.sequence)
                         [:self.config.carried]]
        if not have:
            return scored, None
        best = max(have, key=lambda x: x.sequence)
        rest = [x for x in scored if x.kid != best.kid]
        others = [x for x, same in zip(rest, self.same_place_as(best.kid, [x.kid for x in rest],
                                                                metric)) if not same]
        # a rival without a sequence score competes with its centred single-frame similarity:
        # the same scale, and higher than its sequence score would be unless the place repeats
        single = self._centred_singles([x.kid for x in others if x.sequence is None], descs[0])
        rivals = [x.sequence if x.sequence is not None else single[x.kid] for x in others]
        rival = max(rivals) if rivals else 0.0  # nothing else retrieved: beat "no place"
        margin = float(best.sequence - max(rival, 0.0))
        if metric and self._turning(best.kid, now, position):
            margin = None  # through a turn the distances of two drives disagree: no margin
        best = Scored(best.kid, best.sequence, margin, 'distance' if metric else 'time')
        return [best if x.kid == best.kid else x for x in scored], best
