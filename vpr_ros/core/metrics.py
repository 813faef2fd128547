"""
Retrieval metrics for visual place recognition: R@k, mAP@k, AP over all pairs.

One implementation shared by training (validation R@5), ``vpr-eval`` and the benchmarks, so
that every number in the project is computed the same way. Definitions follow the GCL paper
and the MSLS evaluation code:

* R@k: fraction of queries with at least one positive among the k nearest map images.
* mAP@k: per query, the sum of precision@i over the ranks i <= k that hold a positive, divided
  by ``min(#positives, k)``; averaged over queries.
* AP: area under the precision-recall curve of the binary classification of *all* query-map
  pairs, the pair scored by descriptor similarity.

Queries without any positive cannot be recalled; they are excluded from R@k and mAP@k (as in
MSLS) and counted so that a report can say how many there were.
"""
from typing import Iterable, Sequence

import faiss
import numpy as np
from scipy.spatial import cKDTree

from vpr_ros.core.psi import POSITIVE_PSI

DEFAULT_KS = (1, 5, 10, 20)


def _l2n(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows so that inner product is cosine similarity, whatever the caller gave."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f'descriptors must be 2-D (N, D), got shape {x.shape}')
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12))


def retrieve(query_desc: np.ndarray, map_desc: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Find the k most similar map descriptors per query (exact, faiss IndexFlatIP).

    Exact search keeps evaluation free of approximate-index noise. k is clamped to the map
    size, so the result may have fewer than k columns.
    """
    q = _l2n(query_desc)
    m = _l2n(map_desc)
    if q.shape[1] != m.shape[1]:
        raise ValueError(f'dimension mismatch: query {q.shape[1]} vs map {m.shape[1]}')
    k = int(min(max(k, 1), len(m)))
    if len(m) == 0 or len(q) == 0:
        return (np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64))
    index = faiss.IndexFlatIP(m.shape[1])
    index.add(m)
    scores, indices = index.search(q, k)
    return scores, indices.astype(np.int64)


def positives_from_psi(psi_rows, threshold: float = POSITIVE_PSI) -> list[np.ndarray]:
    """
    Turn graded similarity ψ into positive sets: map j is a hit for query i when ψ_ij > t.

    ``psi_rows`` is a dense (Q, M) array, a scipy sparse matrix, or a sequence of per-query
    rows; ψ > POSITIVE_PSI (0.5) is the paper's positive definition.
    """
    if hasattr(psi_rows, 'tocsr'):
        csr = psi_rows.tocsr()
        out = []
        for i in range(csr.shape[0]):
            lo, hi = csr.indptr[i], csr.indptr[i + 1]
            cols, vals = csr.indices[lo:hi], csr.data[lo:hi]
            out.append(np.sort(cols[vals > threshold]).astype(np.int64))
        return out
    return [np.flatnonzero(np.asarray(row, dtype=np.float64) > threshold).astype(np.int64)
            for row in psi_rows]


def positives_from_distance(query_xy: np.ndarray, map_xy: np.ndarray,
                            max_dist_m: float) -> list[np.ndarray]:
    """Positive sets by metric distance (GPS-style ground truth), via a k-d tree, not all pairs."""
    q = np.asarray(query_xy, dtype=np.float64)
    m = np.asarray(map_xy, dtype=np.float64)
    if len(m) == 0:
        return [np.zeros(0, np.int64) for _ in range(len(q))]
    tree = cKDTree(m)
    return [np.sort(np.asarray(r, dtype=np.int64))
            for r in tree.query_ball_point(q, r=float(max_dist_m))]


def _valid(positives: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([len(p) > 0 for p in positives], dtype=bool)


def count_without_positive(positives: Sequence[np.ndarray]) -> int:
    """Count queries that have no positive; they are left out of R@k and mAP@k."""
    return int((~_valid(positives)).sum())


def _hits(indices: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean (Q, K) matrix: is the map image retrieved at each rank a positive."""
    indices = np.asarray(indices)
    if len(indices) != len(positives):
        raise ValueError(f'{len(indices)} ranked lists for {len(positives)} positive sets')
    hits = np.zeros(indices.shape, dtype=bool)
    for i, pos in enumerate(positives):
        if len(pos):
            hits[i] = np.isin(indices[i], pos) & (indices[i] >= 0)
    return hits


def recall_at_k(indices: np.ndarray, positives: Sequence[np.ndarray],
                ks: Iterable[int] = DEFAULT_KS) -> dict[int, float]:
    """R@k over the queries that have a positive (NaN when none has)."""
    hits = _hits(indices, positives)
    valid = _valid(positives)
    out = {}
    for k in ks:
        k = int(k)
        if not valid.any():
            out[k] = float('nan')
            continue
        first = hits[valid, :k].any(axis=1)
        out[k] = float(first.mean())
    return out


def map_at_k(indices: np.ndarray, positives: Sequence[np.ndarray],
             ks: Iterable[int] = DEFAULT_KS) -> dict[int, float]:
    """MSLS/GCL mAP@k: mean over queries of Σ_{i≤k, hit} precision@i / min(#positives, k)."""
    hits = _hits(indices, positives)
    valid = _valid(positives)
    npos = np.array([len(p) for p in positives], dtype=np.float64)
    out = {}
    for k in ks:
        k = int(k)
        if not valid.any():
            out[k] = float('nan')
            continue
        h = hits[valid, :k].astype(np.float64)
        ranks = np.arange(1, h.shape[1] + 1, dtype=np.float64)
        prec = np.cumsum(h, axis=1) / ranks
        ap = (prec * h).sum(axis=1) / np.minimum(npos[valid], k)
        out[k] = float(ap.mean())
    return out


def precision_recall_curve(scores: np.ndarray,
                           labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Precision and recall at every distinct score threshold, highest threshold first.

    Tied scores form one threshold, so the curve does not depend on the order of equal scores.
    Returns ``(precision, recall, thresholds)``, each of length = number of distinct scores.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f'{s.size} scores for {y.size} labels')
    if s.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind='mergesort')
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = tp[last].astype(np.float64)
    n = (last + 1).astype(np.float64)
    precision = tp / n
    total = float(y.sum())
    recall = tp / total if total > 0 else np.zeros_like(tp)
    return precision, recall, s[last]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """
    AP = Σ (R_n − R_{n−1}) P_n over thresholds (step area under the PR curve, no interpolation).

    NaN when there is no positive pair, because AP is undefined then.
    """
    precision, recall, _ = precision_recall_curve(scores, labels)
    if recall.size == 0 or recall[-1] == 0:
        return float('nan')
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pair_labels(n_queries: int, n_map: int, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Dense (Q, M) boolean label matrix of all query-map pairs from the positive sets."""
    labels = np.zeros((n_queries, n_map), dtype=bool)
    for i, pos in enumerate(positives):
        if len(pos):
            labels[i, np.asarray(pos, dtype=np.int64)] = True
    return labels


def evaluate_descriptors(query_desc: np.ndarray, map_desc: np.ndarray,
                         positives: Sequence[np.ndarray],
                         ks: Iterable[int] = DEFAULT_KS,
                         curve_max_k: int = 25,
                         pr_points: int = 200) -> dict:
    """
    Every retrieval number for one descriptor set, so callers never mix definitions.

    Returns a JSON-serialisable dict: ``recall`` and ``map`` ({k: value}), ``ap`` (all pairs),
    ``recall_curve`` (R@k for k = 1..curve_max_k), ``pr_curve`` (subsampled precision/recall),
    and the counts ``n_queries``, ``n_map``, ``n_evaluated``, ``n_without_positive``.
    """
    ks = tuple(int(k) for k in ks)
    q = _l2n(query_desc)
    m = _l2n(map_desc)
    if len(positives) != len(q):
        raise ValueError(f'{len(positives)} positive sets for {len(q)} queries')
    kmax = max(max(ks), curve_max_k)
    _, indices = retrieve(q, m, kmax)
    recall = recall_at_k(indices, positives, ks)
    mapk = map_at_k(indices, positives, ks)
    curve_ks = list(range(1, min(curve_max_k, len(m)) + 1))
    curve = recall_at_k(indices, positives, curve_ks)
    sims = q @ m.T
    labels = pair_labels(len(q), len(m), positives)
    ap = average_precision(sims, labels)
    precision, rec, _ = precision_recall_curve(sims, labels)
    if precision.size > pr_points:
        pick = np.unique(np.linspace(0, precision.size - 1, pr_points).round().astype(int))
        precision, rec = precision[pick], rec[pick]
    n_without = count_without_positive(positives)
    return {
        'recall': recall,
        'map': mapk,
        'ap': ap,
        'recall_curve': {'k': curve_ks, 'recall': [curve[k] for k in curve_ks]},
        'pr_curve': {'precision': precision.tolist(), 'recall': rec.tolist()},
        'n_queries': int(len(q)),
        'n_map': int(len(m)),
        'n_evaluated': int(len(q) - n_without),
        'n_without_positive': n_without,
        'n_positive_pairs': int(labels.sum()),
    }
