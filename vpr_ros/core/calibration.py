"""
A calibrated operating point: the score (and inlier) threshold that reaches a target precision.

A false loop closure corrupts a SLAM pose graph while a missed one only costs a little drift, so
the node's acceptance threshold is not a taste but a measured point on a precision-recall curve:
the threshold that reaches the target precision (default 1.0) on named validation data and keeps
the most recall there. `calibrate` finds it from per-query results and `OperatingPoint` carries
it, with what it was fitted on, into the model file and the node's log.

Per query the input is the score of its best candidate (NaN: no candidate), optionally the
geometric-verification inlier count of that candidate, whether that candidate is correct, and
whether the query could close a loop at all (a true match exists in the map). A query is
*accepted* when ``score >= score_threshold`` and, with inliers, ``inliers >= min_inliers``: the
node's own rule. Precision = correct accepted / accepted; recall = correct accepted / queries
that could close a loop, so queries without a possible loop can only cost precision.

Choice of the point: highest recall at ``precision >= target``; ties go to the higher
precision, then the larger ``min_inliers`` (geometric evidence transfers between models better
than a score scale does). The threshold is then put midway between the lowest accepted value
and the highest rejected value below it, which changes none of the fitted counts but keeps the
largest margin on both sides for unseen data; with nothing below, it is the lowest accepted
value. Tied scores are accepted or rejected together, so the result never depends on order.
When no threshold reaches the target with any correct query (no possible loop, or every
high-scoring candidate wrong) the point accepts nothing: threshold just above the highest score,
recall 0, precision 1.0 (vacuously: no false positive), and `usable` is False.
"""
from dataclasses import asdict, dataclass, field, replace
import math
from typing import Sequence

import numpy as np

from vpr_ros.core.decision import Candidate, decide, DecisionRule
from vpr_ros.core.errors import VPRError

DEFAULT_TARGET_PRECISION = 1.0
_FIELDS = ('score_threshold', 'min_inliers', 'target_precision', 'precision', 'recall',
           'n_queries', 'data')
ALIGNMENTS = (('distance', 'confidence_threshold'), ('time', 'confidence_threshold_time'))
_SEQUENCE_FIELDS = tuple(name for _, name in ALIGNMENTS)  # optional fields of a point


@dataclass(frozen=True)
class OperatingPoint:
    """
    A fitted threshold pair and what it achieved on the data named in `data`.

    `min_inliers` is None when the fit had no inlier counts (verification off). `data` is a
    plain dict: the caller's description of the validation set (name, traverses, ground truth)
    plus the counts the fit saw (`n_possible`, `n_accepted`, `n_false`).
    """

    score_threshold: float
    min_inliers: int | None
    target_precision: float
    precision: float
    recall: float
    n_queries: int
    data: dict = field(default_factory=dict)
    # The sequence rule's margins (vpr_ros/core/sequence.py), for a history aligned by
    # distance and by time; None: fitted without it (points written before the sequence rule
    # existed read back with None), or no such sequences in the data (that kind stays off).
    confidence_threshold: float | None = None
    confidence_threshold_time: float | None = None

    def rule(self) -> DecisionRule:
        """Return the decision rule this point stands for (vpr_ros/core/decision.py)."""
        return DecisionRule(float(self.score_threshold), self.min_inliers,
                            self.confidence_threshold, self.confidence_threshold_time)

    @property
    def usable(self) -> bool:
        """Whether the point accepts anything at all (recall > 0) on its own data."""
        return self.recall > 0.0

    def to_dict(self) -> dict:
        """Plain dict of builtins (for torch.save with weights_only, JSON or YAML)."""
        out = asdict(self)
        out['data'] = dict(self.data)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> 'OperatingPoint':
        """Inverse of `to_dict`; a missing, unknown or ill-typed field raises a VPRError."""
        if not isinstance(d, dict):
            raise VPRError(f'operating point must be a dict, got {type(d).__name__}')
        missing = [k for k in _FIELDS if k not in d]
        unknown = sorted(set(d) - set(_FIELDS) - set(_SEQUENCE_FIELDS))
        if missing or unknown:
            raise VPRError(f'operating point: missing fields {missing}, unknown fields {unknown}')
        try:
            conf = [None if d.get(k) is None else float(d[k]) for k in _SEQUENCE_FIELDS]
            if 'confidence_threshold_time' not in d:  # written when one margin served both
                conf[1] = conf[0]
            point = cls(float(d['score_threshold']),
                        None if d['min_inliers'] is None else int(d['min_inliers']),
                        float(d['target_precision']), float(d['precision']),
                        float(d['recall']), int(d['n_queries']), dict(d['data']), *conf)
        except (TypeError, ValueError) as exc:
            raise VPRError(f'operating point has an ill-typed field: {exc}') from None
        values = [point.score_threshold] + [c for c in conf if c is not None]
        if not all(math.isfinite(v) for v in values):
            raise VPRError(f'operating point thresholds are {values}')
        return point

    def describe(self) -> str:
        """One line for a log: the thresholds, what they kept and on which data."""
        name = self.data.get('name', 'unnamed data')
        inl = '' if self.min_inliers is None else f', min_inliers {self.min_inliers}'
        for field_name in _SEQUENCE_FIELDS:
            if getattr(self, field_name) is not None:
                inl += f', {field_name} {getattr(self, field_name):.4f}'
        return (f'score_threshold {self.score_threshold:.4f}{inl} (precision '
                f'{self.precision:.3f}, recall {self.recall:.3f} at target precision '
                f'{self.target_precision:g}, fitted on {name}, {self.n_queries} queries)')


def _as_arrays(scores, correct, can_close, inliers):
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(correct, dtype=bool).ravel()
    n = s.size
    pos = np.ones(n, bool) if can_close is None else np.asarray(can_close, dtype=bool).ravel()
    if y.size != n or pos.size != n:
        raise VPRError(f'calibration: {n} scores, {y.size} correct flags, {pos.size} '
                       'can_close flags: one of each per query')
    if np.any(y & ~pos):
        raise VPRError('calibration: a query marked correct must be able to close a loop')
    inl = None
    if inliers is not None:
        inl = np.nan_to_num(np.asarray(inliers, dtype=np.float64).ravel(), nan=0.0)
        if inl.size != n:
            raise VPRError(f'calibration: {inl.size} inlier counts for {n} queries')
        inl = np.maximum(inl, 0.0).astype(np.int64)  # -1 (unverified) counts as no inliers
    s = np.where(np.isfinite(s), s, -np.inf)  # no candidate: never accepted
    return s, y, pos, inl


def _best_threshold(s: np.ndarray, y: np.ndarray, target: float):
    """(tp, n_accepted, lowest accepted score) of the highest-recall threshold, or None."""
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    if s.size == 0:
        return None
    order = np.argsort(-s, kind='mergesort')
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    n = last + 1
    ok = (tp > 0) & (tp >= target * n - 1e-9)
    if not ok.any():
        return None
    best = int(np.argmax(np.where(ok, tp, -1)))  # first max: highest threshold, fewest FPs
    return int(tp[best]), int(n[best]), float(s[last[best]])


def _midpoint(accepted_low: float, values_below: np.ndarray) -> float:
    """Midway between the lowest accepted value and the highest rejected one below it."""
    below = values_below[np.isfinite(values_below) & (values_below < accepted_low)]
    if below.size == 0:
        return accepted_low
    return 0.5 * (accepted_low + float(below.max()))


Labelled = tuple[Candidate, bool]  # a candidate with its evidence, and whether it is true


def _bests(frames: Sequence[Sequence[Labelled]], rule: DecisionRule):
    """Per frame: score, correctness and inliers of the candidate `decide` puts first."""
    s = np.full(len(frames), -np.inf)
    y = np.zeros(len(frames), bool)
    inl = np.zeros(len(frames), np.int64)
    for i, frame in enumerate(frames):
        truth = {c.match_id: ok for c, ok in frame}  # a frame's candidates are distinct keyframes
        accepted = decide([c for c, _ in frame], rule)
        if accepted:
            first = accepted[0]
            s[i], y[i], inl[i] = first.score, truth[first.match_id], first.inliers
    return s, y, inl


def calibrate_candidates(frames: Sequence[Sequence[Labelled]], can_close=None,
                         target_precision: float = DEFAULT_TARGET_PRECISION,
                         data: dict | None = None, verification: bool = True,
                         sequence: bool = False) -> OperatingPoint:
    """
    Fit the operating point on replayed frames, deciding with `decide` as the node does.

    `frames`: per query, the candidates the detector considered (FrameResult.considered of a
    replay that verified every candidate: score threshold -1) with whether each is a true
    match; a query counts as accepted when `decide` accepts a candidate, and as correct when
    the first accepted one is true (the best candidate, the one /vpr/loop_closure sends).
    `verification`: the rule requires verified inliers (min_inliers fitted) or not (None).
    `sequence`: also fit the sequence rule's margins (`confidence_threshold` for histories
    aligned by distance, `confidence_threshold_time` by time) for the frames the single-frame
    rule leaves (candidates carry `margin`: a replay with the sequence rule on).
    """
    if not 0.0 < target_precision <= 1.0:
        raise VPRError(f'target_precision must be in (0, 1], got {target_precision}')
    n = len(frames)
    if n == 0:
        raise VPRError('calibration needs at least one query')
    pos = np.ones(n, bool) if can_close is None else np.asarray(can_close, bool).ravel()
    if pos.size != n:
        raise VPRError(f'calibration: {n} queries, {pos.size} can_close flags')
    true_inl = {c.inliers for f in frames for c, ok in f if ok and c.verified}
    levels = sorted(true_inl | {1}) if verification else [None]
    best = None  # (tp, precision, level key, n_accepted, lowest accepted score, level)
    for m in levels:
        s, y, _ = _bests(frames, DecisionRule(-np.inf, m))
        if np.any(y & ~pos):
            raise VPRError('calibration: a query marked correct must be able to close a loop')
        found = _best_threshold(s, y, target_precision)
        if found is not None:
            tp, n_acc, low = found
            key = (tp, tp / n_acc, -1 if m is None else m)
            if best is None or key > best[:3]:
                best = key + (n_acc, low, m)
    info = {'n_possible': int(pos.sum())}
    info.update(data or {})
    if best is None:  # the single-frame rule accepts nothing
        top = max((c.score for f in frames for c, _ in f if np.isfinite(c.score)), default=None)
        most = max((c.inliers for f in frames for c, _ in f), default=0)
        point_rule = DecisionRule(1.0 if top is None else float(np.nextafter(top, np.inf)),
                                  int(most) + 1 if verification else None)
        tp = n_acc = 0
    else:
        tp, _, _, n_acc, low, m = best
        if verification:  # as far from the rejected inlier counts as from the accepted ones
            s, _, inl = _bests(frames, DecisionRule(-np.inf, m))
            lowest = float(inl[s >= low].min())
            below = np.array([c.inliers for f in frames for c, _ in f
                              if c.verified and c.score >= low and c.inliers < lowest], float)
            m = int(math.ceil(_midpoint(lowest, below)))
        s, _, _ = _bests(frames, DecisionRule(-np.inf, m))
        point_rule = DecisionRule(_midpoint(low, s), m)
    if sequence:  # each alignment its own margin, the pooled precision at the target
        for aligned_by, name in ALIGNMENTS:
            conf, tp, n_acc = _fit_confidence(frames, point_rule, aligned_by, tp, n_acc,
                                              target_precision)
            point_rule = replace(point_rule, **{name: conf})
    s, y, _ = _bests(frames, point_rule)
    accepted = np.isfinite(s)
    assert int((accepted & y).sum()) == tp and int(accepted.sum()) == n_acc  # margins keep counts
    info.update(n_accepted=n_acc, n_false=n_acc - tp)
    recall = tp / int(pos.sum()) if pos.any() else 0.0
    return OperatingPoint(float(point_rule.score_threshold), point_rule.min_inliers,
                          float(target_precision), tp / n_acc if n_acc else 1.0, float(recall),
                          n, info, point_rule.confidence_threshold,
                          point_rule.confidence_threshold_time)


def _fit_confidence(frames: Sequence[Sequence[Labelled]], base: DecisionRule, aligned_by: str,
                    tp: int, n_acc: int, target: float) -> tuple[float | None, int, int]:
    """
    Fit the sequence rule's margin threshold for one alignment on top of the rule so far.

    Frames the rule so far leaves, whose best-supported candidate's history was aligned by
    `aligned_by`, are accepted by the sequence rule best margin first; the threshold keeps the
    most true loops with the pooled precision at the target, midway to the next margin below.
    Returns (threshold, tp, n_accepted) of all rules together; the threshold is None (that
    kind of sequence stays off) when the data has no such frame: an unseen kind is not fitted.
    """
    name = dict(ALIGNMENTS)[aligned_by]
    found = []
    for frame in frames:
        truth = {c.match_id: ok for c, ok in frame}
        if decide([c for c, _ in frame], base):
            continue  # accepted already (the single-frame rule, or the other alignment)
        acc = decide([c for c, _ in frame], replace(base, **{name: -np.inf}))
        if acc and acc[0].accepted_by == 'sequence' and acc[0].aligned_by == aligned_by:
            found.append((float(acc[0].margin), bool(truth[acc[0].match_id])))
    if not found:
        return None, tp, n_acc
    m = np.array([f[0] for f in found], float)
    y = np.array([f[1] for f in found], bool)
    if m.size:
        order = np.argsort(-m, kind='mergesort')
        ms, ys = m[order], np.cumsum(y[order])
        last = np.r_[np.flatnonzero(np.diff(ms) != 0), ms.size - 1]  # end of each tie group
        ok = (ys[last] > 0) & (ys[last] + tp >= target * (last + 1 + n_acc) - 1e-9)
        if ok.any():
            k = int(np.argmax(np.where(ok, ys[last], -1)))  # first max: the fewest accepted
            return (_midpoint(float(ms[last[k]]), m), tp + int(ys[last[k]]),
                    n_acc + int(last[k] + 1))
    top = float(m.max()) if m.size else 0.0
    return float(np.nextafter(top, np.inf)), tp, n_acc


def calibrate(scores, correct, can_close=None, inliers=None,
              target_precision: float = DEFAULT_TARGET_PRECISION,
              data: dict | None = None) -> OperatingPoint:
    """
    Fit the operating point on one best candidate per query; see the module docstring.

    `scores` (N,) best-candidate score (NaN: none); `correct` (N,) bool; `can_close` (N,) bool
    (None: every query could close a loop); `inliers` (N,) counts or None (-1 or 0: not
    verified, never accepted once verification is part of the rule, as in the node). For
    per-query results such as published matches; a replay goes to `calibrate_candidates`.
    """
    s, y, pos, inl = _as_arrays(scores, correct, can_close, inliers)
    frames = [[] if not np.isfinite(s[i]) else
              [(Candidate(i, 0, float(s[i]), -1 if inl is None else int(inl[i]), None,
                          verified=None if inl is None else bool(inl[i] >= 1)), bool(y[i]))]
              for i in range(s.size)]
    if np.any(y & ~pos):
        raise VPRError('calibration: a query marked correct must be able to close a loop')
    return calibrate_candidates(frames, pos, target_precision, data,
                                verification=inl is not None)


def precision_recall(scores, correct, can_close=None) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """
    Precision and recall of best candidates at every distinct score, highest threshold first.

    Recall is over the queries that could close a loop (not over the published candidates), so
    the curve's end shows how much recall retrieval alone can reach. For the PR plot.
    """
    s, y, pos, _ = _as_arrays(scores, correct, can_close, None)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    if s.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind='mergesort')
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last].astype(np.float64)
    precision = tp / (last + 1)
    n_possible = int(pos.sum())
    recall = tp / n_possible if n_possible else np.zeros_like(tp)
    return precision, recall, s[last]


def calibrated_config(config, point: 'OperatingPoint | None', explicit: tuple[str, ...] = ()):
    """
    Return a copy of a DetectorConfig running at the model's calibrated operating point.

    One rule for the node, the evaluation and the benchmarks: `score_threshold`,
    `gv_min_inliers` and `confidence_threshold` take the point's values unless named in
    `explicit` (set by the user). The thresholds go together because they were fitted together
    (verification accepting from 1 inlier). A point fitted without the sequence rule (older
    model files) turns the sequence rule off unless the user set `confidence_threshold`: an
    uncalibrated margin would be a guess.
    """
    import dataclasses

    config = dataclasses.replace(config)
    if point is None:
        return config
    if 'score_threshold' not in explicit:
        config.score_threshold = float(point.score_threshold)
    if point.min_inliers is not None and 'gv_min_inliers' not in explicit:
        config.gv_min_inliers = max(1, int(point.min_inliers))
    for name in _SEQUENCE_FIELDS:  # a kind the point has no margin for stays off (+inf)
        if name not in explicit:
            value = getattr(point, name)
            setattr(config, name, math.inf if value is None else float(value))
    if all(math.isinf(getattr(config, name)) for name in _SEQUENCE_FIELDS):
        config.sequence_evidence = False
    return config
