"""
The compact searcher (vpr_ros.map.compact): PCA-reduced HNSW candidates, exact re-rank.

Data with the structure of CNN descriptors: non-negative, most variance in a few directions, the
rest a small isotropic floor; queries are keyframes moved by noise (cosine ~0.95).
"""
import numpy as np
import pytest

from vpr_ros.core.errors import MapError
from vpr_ros.map.compact import CompactSearch, fit_projection


def _data(n: int, d: int = 256, rank: int = 24, nq: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)).astype(np.float32)
    scale = (1.0 / np.arange(1, rank + 1) ** 0.5).astype(np.float32)
    mean = np.abs(rng.standard_normal(d)).astype(np.float32) * 2

    def make(z):
        x = mean + (z * scale) @ basis + 0.05 * rng.standard_normal((len(z), d))
        x = np.maximum(x, 0).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    z = rng.standard_normal((n, rank)).astype(np.float32)
    src = rng.choice(n, nq, replace=False)
    return make(z), make(z[src] + 0.15 * rng.standard_normal((nq, rank)).astype(np.float32))


def test_recall_and_exact_scores():
    x, q = _data(20000)
    cs = CompactSearch(fit_projection(x, 32), m=16, ef_search=64, k_factor=20)
    cs.add(x)
    assert len(cs) == len(x)
    hits = []
    for v in q:
        pos, sc = cs.search(x, v, 5)
        exact = np.argsort(-(x @ v))[:5]
        hits.append(len(set(pos.tolist()) & set(exact.tolist())) / 5)
        # Scores are the full vectors' inner products, best first.
        np.testing.assert_allclose(sc, x[pos] @ v, rtol=1e-5)
        assert np.all(np.diff(sc) <= 0)
    assert np.mean(hits) >= 0.99
    assert cs.bytes_per_vector < 4 * x.shape[1]  # smaller than one full vector


def test_candidates_bound_and_small_maps():
    x, q = _data(300, nq=3)
    cs = CompactSearch(fit_projection(x, 16), m=8)
    assert cs.search(x, q[0], 5)[0].size == 0  # empty graph
    cs.add(x)
    pos, _ = cs.search(x, q[0], 1000)  # more than the map: all of it, exact order
    np.testing.assert_array_equal(pos, np.argsort(-(x @ q[0]), kind='stable'))


def test_projection_is_pca_and_refuses_bad_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 8)).astype(np.float32) * np.array([5, 4, 3, 1, 1, 1, 1, 1],
                                                                     np.float32)
    b = fit_projection(x, 3)
    assert b.shape == (3, 8)
    np.testing.assert_allclose(b @ b.T, np.eye(3), atol=1e-5)
    # The three large-variance axes, largest first.
    assert [int(np.argmax(np.abs(r))) for r in b] == [0, 1, 2]
    with pytest.raises(MapError):
        fit_projection(x[:3], 3)
    with pytest.raises(MapError):
        fit_projection(x, 9)
    with pytest.raises(MapError):
        CompactSearch(np.zeros((9, 8), np.float32))
