"""Tests for the retrieval metrics: hand-worked cases and a reference re-implementation."""
import numpy as np
import pytest

from vpr_ros.core.metrics import (
    average_precision,
    count_without_positive,
    evaluate_descriptors,
    map_at_k,
    positives_from_distance,
    positives_from_psi,
    precision_recall_curve,
    recall_at_k,
    retrieve,
)


def _apk_reference(pidx, rank, k):
    """Straight loop form of the MSLS apk, to check the vectorised one against."""
    rank = list(rank[:k])
    score, hits = 0.0, 0.0
    for i, p in enumerate(rank):
        if p in pidx and p not in rank[:i]:
            hits += 1.0
            score += hits / (i + 1.0)
    return score / min(len(pidx), k)


def test_retrieve_exact_and_normalised():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 8)).astype(np.float32)
    q = 3.0 * m[[4, 7, 9]] + 0.01 * rng.normal(size=(3, 8)).astype(np.float32)
    scores, idx = retrieve(q, m, 5)
    assert scores.shape == idx.shape == (3, 5)
    assert idx[:, 0].tolist() == [4, 7, 9]
    assert np.all(scores[:, 0] <= 1.0 + 1e-5) and np.all(np.diff(scores, axis=1) <= 1e-6)
    _, idx = retrieve(q, m[:3], 10)
    assert idx.shape == (3, 3)


def test_positives():
    psi = np.array([[0.6, 0.5, 0.0], [0.0, 0.0, 0.0], [0.9, 0.51, 1.0]])
    pos = positives_from_psi(psi)
    assert [p.tolist() for p in pos] == [[0], [], [0, 1, 2]]
    from scipy.sparse import csr_matrix
    assert [p.tolist() for p in positives_from_psi(csr_matrix(psi))] == [[0], [], [0, 1, 2]]
    pos = positives_from_distance([[0, 0], [10, 0]], [[0.5, 0], [3, 0], [0, 1.9]], 2.0)
    assert [p.tolist() for p in pos] == [[0, 2], []]
    assert count_without_positive(pos) == 1


def test_recall_and_map_hand_worked():
    idx = np.array([[3, 1, 2, 0], [0, 1, 2, 3], [2, 3, 1, 0]])
    pos = [np.array([1, 0]), np.array([], np.int64), np.array([2])]
    r = recall_at_k(idx, pos, (1, 2, 4))
    assert r == {1: 0.5, 2: 1.0, 4: 1.0}  # query 1 has no positive: left out
    m = map_at_k(idx, pos, (1, 2, 4))
    assert m[1] == pytest.approx((0 + 1) / 2)
    assert m[2] == pytest.approx((0.5 / 2 + 1) / 2)
    assert m[4] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1) / 2)


def test_map_matches_msls_reference():
    rng = np.random.default_rng(1)
    idx = np.array([rng.permutation(30)[:20] for _ in range(40)])
    pos = [rng.choice(30, size=rng.integers(1, 8), replace=False) for _ in range(40)]
    got = map_at_k(idx, pos, (1, 5, 10, 20))
    for k, v in got.items():
        ref = np.mean([_apk_reference(p.tolist(), r.tolist(), k) for p, r in zip(pos, idx)])
        assert v == pytest.approx(ref)


def test_average_precision():
    # Ranked: +, -, +, -  -> AP = (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert average_precision([1, 1, 1], [1, 0, 0]) == pytest.approx(1 / 3)  # one tied threshold
    assert average_precision([0.3, 0.2], [1, 1]) == pytest.approx(1.0)
    assert np.isnan(average_precision([0.3, 0.2], [0, 0]))
    p, r, t = precision_recall_curve([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0])
    assert p.tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([0.5, 0.5, 1, 1])
    assert t.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.1])


def test_evaluate_descriptors_perfect_and_counts():
    rng = np.random.default_rng(2)
    m = rng.normal(size=(30, 16)).astype(np.float32)
    q = m[:10] + 0.01 * rng.normal(size=(10, 16)).astype(np.float32)
    pos = [np.array([i]) for i in range(9)] + [np.array([], np.int64)]
    res = evaluate_descriptors(q, m, pos)
    assert res['recall'] == {1: 1.0, 5: 1.0, 10: 1.0, 20: 1.0}
    assert res['map'][1] == 1.0
    assert res['n_evaluated'] == 9 and res['n_without_positive'] == 1
    assert res['n_positive_pairs'] == 9
    assert 0.9 < res['ap'] <= 1.0
    assert res['recall_curve']['k'] == list(range(1, 26))
    assert len(res['pr_curve']['precision']) == len(res['pr_curve']['recall']) <= 200
