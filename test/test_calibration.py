"""Tests for the calibrated operating point: hand-worked cases, ties, inliers, no positives."""
import json

import numpy as np
import pytest

from vpr_ros.core.calibration import calibrate, OperatingPoint, precision_recall
from vpr_ros.core.errors import VPRError


def _accepted(point, scores, inliers=None):
    s = np.nan_to_num(np.asarray(scores, float), nan=-np.inf)
    ok = s >= point.score_threshold
    if inliers is not None:
        ok &= np.asarray(inliers) >= point.min_inliers
    return ok


def test_hand_worked_precision_one():
    # best-candidate scores, highest first: T T F T T F; one more query could close but got no
    # candidate (NaN), one query could not close a loop at all.
    scores = [0.95, 0.93, 0.90, 0.88, 0.85, 0.80, np.nan, 0.70]
    correct = [1, 1, 0, 1, 1, 0, 0, 0]
    can_close = [1, 1, 1, 1, 1, 1, 1, 0]
    p = calibrate(scores, correct, can_close, data={'name': 'hand'})
    # only 0.95 and 0.93 can be accepted without the false 0.90: recall 2 of 7 possible
    assert p.precision == 1.0 and p.recall == pytest.approx(2 / 7)
    assert p.score_threshold == pytest.approx((0.93 + 0.90) / 2)  # midway to the false one
    assert p.min_inliers is None and p.n_queries == 8 and p.usable
    assert p.data['name'] == 'hand' and p.data['n_possible'] == 7
    assert p.data['n_accepted'] == 2 and p.data['n_false'] == 0
    assert _accepted(p, scores).tolist() == [True, True] + [False] * 6


def test_lower_target_precision_keeps_more_recall():
    scores = [0.95, 0.93, 0.90, 0.88, 0.85, 0.80]
    correct = [1, 1, 0, 1, 1, 0]
    can_close = [1, 1, 1, 1, 1, 0]
    p = calibrate(scores, correct, can_close, target_precision=0.8)
    assert p.recall == pytest.approx(0.8) and p.precision == pytest.approx(0.8)
    assert 0.80 < p.score_threshold < 0.85
    assert calibrate(scores, correct, can_close, target_precision=1.0).recall == 0.4


def test_ties_are_accepted_or_rejected_together():
    # a true and a false candidate share the score 0.9: 0.9 can never be accepted at precision 1
    scores = [0.95, 0.9, 0.9, 0.7]
    correct = [1, 1, 0, 1]
    p = calibrate(scores, correct)
    assert p.recall == pytest.approx(1 / 4) and p.precision == 1.0
    assert 0.9 < p.score_threshold < 0.95
    # order of tied queries does not matter
    q = calibrate([0.9, 0.9, 0.95, 0.7], [0, 1, 1, 1])
    assert q.score_threshold == p.score_threshold and q.recall == p.recall
    # tie among true ones only: all accepted, threshold midway to the next lower score
    r = calibrate([0.9, 0.9, 0.8], [1, 1, 0])
    assert r.recall == pytest.approx(2 / 3) and r.score_threshold == pytest.approx(0.85)


def test_no_positive_accepts_nothing():
    # no query could close a loop: every accepted candidate is false
    p = calibrate([0.9, 0.8, np.nan], [0, 0, 0], [0, 0, 0])
    assert p.recall == 0.0 and not p.usable and p.precision == 1.0
    assert p.score_threshold > 0.9 and not _accepted(p, [0.9, 0.8, np.nan]).any()
    assert p.data['n_possible'] == 0 and p.data['n_accepted'] == 0
    # possible loops but the best-scoring candidate is wrong and the rest too
    p = calibrate([0.99, 0.5], [0, 0], [1, 1])
    assert p.recall == 0.0 and p.score_threshold > 0.99
    # only NaN scores (no candidate at all)
    p = calibrate([np.nan, np.nan], [0, 0], [1, 1])
    assert p.recall == 0.0 and np.isfinite(p.score_threshold)


def test_inliers_rescue_recall_lost_to_look_alikes():
    # blank walls: false candidates with high scores and few inliers, true ones with many
    scores = [0.99, 0.98, 0.97, 0.95, 0.90, 0.85]
    correct = [0, 1, 0, 1, 1, 1]
    inliers = [16, 80, 20, 60, 45, 30]
    no_inl = calibrate(scores, correct)
    assert no_inl.recall == 0.0  # the top score is false
    p = calibrate(scores, correct, can_close=correct, inliers=inliers)
    assert p.recall == 1.0 and p.precision == 1.0
    assert 20 < p.min_inliers <= 30 and p.min_inliers == 25  # midway between 20 and 30
    assert _accepted(p, scores, inliers).tolist() == [False, True, False, True, True, True]
    assert p.score_threshold <= 0.85


def test_unverified_candidates_are_never_accepted_with_verification():
    """The node's rule: with verification on, an accepted candidate has verified inliers."""
    p = calibrate([0.9, 0.8], [1, 1], inliers=[-1, 40])
    assert p.recall == 0.5 and p.min_inliers == 40 and p.score_threshold <= 0.8
    q = calibrate([0.9, 0.8, 0.95], [1, 1, 0], inliers=[-1, 40, 10])
    assert q.recall == pytest.approx(1 / 3) and 10 < q.min_inliers <= 40


def test_replayed_candidates_decide_as_the_node_does():
    """
    Decide each inlier level with `decide`, as the node would.

    A frame's first accepted candidate depends on the inlier threshold, so the fit cannot look
    at the best-scoring candidate alone.
    """
    from vpr_ros.core.calibration import calibrate_candidates
    from vpr_ros.core.decision import Candidate, decide

    def c(score, inl, ok):
        return (Candidate(0, 0, score, inl, None, verified=inl > 0), ok)
    frames = [[c(0.95, 12, False), c(0.90, 60, True)],  # look-alike first, true one verified
              [c(0.93, 70, True)], [c(0.92, 8, False)], []]
    p = calibrate_candidates(frames, [1, 1, 0, 1])
    assert p.precision == 1.0 and p.recall == pytest.approx(2 / 3)
    assert 12 < p.min_inliers <= 60
    rule = p.rule()
    firsts = [decide([x for x, _ in f], rule)[:1] for f in frames]
    assert [x[0].score if x else None for x in firsts] == [0.90, 0.93, None, None]


def test_serialises_to_plain_dict_and_back():
    p = calibrate([0.9, 0.8, 0.7], [1, 0, 1], inliers=[30, 10, 50],
                  data={'name': 'corridor', 'traverses': ['ref', 'query']})
    d = p.to_dict()
    back = OperatingPoint.from_dict(json.loads(json.dumps(d)))
    assert back == p
    assert 'corridor' in p.describe() and 'min_inliers' in p.describe()
    with pytest.raises(VPRError, match='missing'):
        OperatingPoint.from_dict({k: v for k, v in d.items() if k != 'recall'})
    with pytest.raises(VPRError, match='unknown'):
        OperatingPoint.from_dict({**d, 'extra': 1})
    with pytest.raises(VPRError, match='ill-typed'):
        OperatingPoint.from_dict({**d, 'recall': 'high'})


def test_bad_input_is_refused():
    with pytest.raises(VPRError):
        calibrate([0.9, 0.8], [1])
    with pytest.raises(VPRError):
        calibrate([0.9], [1], [0])  # correct but could not close a loop
    with pytest.raises(VPRError):
        calibrate([], [])
    with pytest.raises(VPRError):
        calibrate([0.9], [1], target_precision=0.0)


def test_random_fits_keep_their_counts():
    """Property: the reported precision and recall are what the thresholds give on the data."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        can = rng.random(n) < 0.8
        correct = can & (rng.random(n) < 0.6)
        scores = np.round(rng.random(n) + 0.3 * correct, 2)  # rounding makes ties
        scores[rng.random(n) < 0.1] = np.nan
        inl = rng.integers(0, 60, n) + 20 * correct if rng.random() < 0.5 else None
        target = float(rng.choice([1.0, 0.9]))
        p = calibrate(scores, correct, can, inl, target_precision=target)
        acc = _accepted(p, scores, inl)
        if p.usable:
            assert (acc & correct).sum() / acc.sum() == pytest.approx(p.precision)
            assert p.precision >= target - 1e-9
            assert (acc & correct).sum() / can.sum() == pytest.approx(p.recall)
        else:
            assert not (acc & correct).any()


def test_precision_recall_curve_over_possible_loops():
    prec, rec, thr = precision_recall([0.9, 0.8, 0.8, np.nan], [1, 0, 1, 0], [1, 1, 1, 1])
    assert thr.tolist() == [0.9, 0.8]
    assert prec.tolist() == [1.0, pytest.approx(2 / 3)]
    assert rec.tolist() == [0.25, 0.5]


def test_calibrated_config_keeps_what_the_user_set():
    """The node and bench_core share this rule: the point replaces only the untouched values."""
    from vpr_ros.core.calibration import calibrated_config
    from vpr_ros.core.detector import DetectorConfig

    point = OperatingPoint(score_threshold=0.93, min_inliers=14, target_precision=1.0,
                           precision=1.0, recall=0.9, n_queries=10, data={'name': 'x'})
    base = DetectorConfig()
    cfg = calibrated_config(base, point)
    assert (cfg.score_threshold, cfg.gv_min_inliers) == (0.93, 14)
    assert base.score_threshold != 0.93  # a copy, the input is not changed
    kept = calibrated_config(base, point, explicit=('score_threshold',))
    assert (kept.score_threshold, kept.gv_min_inliers) == (base.score_threshold, 14)
    assert calibrated_config(base, None) == base


def test_each_alignment_of_the_sequence_rule_gets_its_own_margin():
    """A look-alike at margin 0.26 without poses must not cost the loops poses vouch for."""
    from vpr_ros.core.calibration import calibrate_candidates, calibrated_config
    from vpr_ros.core.decision import Candidate, decide
    from vpr_ros.core.loop_config import DetectorConfig

    def seq(kid, margin, aligned_by, ok):  # too few inliers for the single-frame rule
        return [(Candidate(kid, 0, 0.5, 2, None, verified=True, sequence=0.5, margin=margin,
                           aligned_by=aligned_by), ok)]
    frames = ([seq(1, 0.05, 'distance', False), seq(2, 0.10, 'distance', True),
               seq(3, 0.15, 'distance', True)]
              + [seq(4, 0.26, 'time', False), seq(5, 0.30, 'time', True)])
    p = calibrate_candidates(frames, [1, 1, 1, 1, 1], sequence=True)
    assert p.confidence_threshold == pytest.approx((0.05 + 0.10) / 2)
    assert p.confidence_threshold_time == pytest.approx((0.26 + 0.30) / 2)
    assert p.precision == 1.0 and p.recall == pytest.approx(3 / 5)
    # (one margin for both would have been 0.28: the two distance-aligned loops lost)
    assert [bool(decide([c for c, _ in f], p.rule())) for f in frames] == \
        [False, True, True, False, True]
    # data without time-aligned histories: that kind stays off, in the rule and in a config
    only = calibrate_candidates(frames[:3], [1, 1, 1], sequence=True)
    assert only.confidence_threshold_time is None
    assert only.rule().margin_needed('time') is None
    config = calibrated_config(DetectorConfig(), only)
    assert config.sequence_evidence and config.rule().confidence_threshold_time is None
    assert config.rule().confidence_threshold == pytest.approx(only.confidence_threshold)
    # a point written when one margin served both reads back with it for both
    d = {**p.to_dict(), 'confidence_threshold': 0.2}
    del d['confidence_threshold_time']
    old = OperatingPoint.from_dict(d)
    assert old.confidence_threshold == old.confidence_threshold_time == 0.2
    # a point without any margin turns the sequence rule off (an unfitted margin is a guess)
    none = calibrated_config(DetectorConfig(), OperatingPoint(0.9, 14, 1.0, 1.0, 0.5, 10))
    assert not none.sequence_evidence and not none.rule().sequence_on
    # a replay gathering every margin (-inf) keeps both kinds on; +inf is off
    import math
    rule = DetectorConfig(confidence_threshold=-math.inf,
                          confidence_threshold_time=math.inf).rule()
    assert rule.confidence_threshold == -math.inf and rule.confidence_threshold_time is None
