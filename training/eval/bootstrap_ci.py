"""
Bootstrap 95 % intervals of retrieval metrics, resampling queries, for comparing models honestly.

A difference of 0.02 in R@1 on 150 queries is noise; an interval says so. Every model of one
evaluation set is resampled with the same seeded query draws (a paired bootstrap), so the models
are compared on the same resampled sets. Per-query terms are computed once; a bootstrap sample
is then only a weighted mean (R@k, mAP@k) or a weighted pass over the pairs sorted once
(all-pairs AP), so thousands of samples cost seconds.
"""
from typing import Sequence

import numpy as np

from vpr_ros.core.metrics import retrieve

METRICS = ('r1', 'r5', 'r10', 'map5', 'ap')
LABELS = {'r1': 'R@1', 'r5': 'R@5', 'r10': 'R@10', 'map5': 'mAP@5', 'ap': 'AP (all pairs)'}
DEFAULT_BOOT = 1000


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def per_query_terms(query_desc: np.ndarray, map_desc: np.ndarray,
                    positives: Sequence[np.ndarray]) -> dict:
    """
    Per-query hits at 1/5/10, AP@5 (the MSLS/GCL mAP@k term) and the pairs sorted by score.

    The definitions are those of `vpr_ros.core.metrics` (R@k and mAP@k over queries with a
    positive, AP over all query-map pairs), so the bootstrap's centre equals vpr-eval's numbers.
    """
    q, m = _l2n(query_desc), _l2n(map_desc)
    valid = np.array([len(p) > 0 for p in positives], dtype=bool)
    _, idx = retrieve(q, m, 10)
    hits = np.zeros(idx.shape, dtype=bool)
    for i, pos in enumerate(positives):
        if len(pos):
            hits[i] = np.isin(idx[i], pos) & (idx[i] >= 0)
    terms = {f'r{k}': hits[:, :k].any(axis=1).astype(np.float64) for k in (1, 5, 10)}
    h5 = hits[:, :5].astype(np.float64)
    prec = np.cumsum(h5, axis=1) / np.arange(1, h5.shape[1] + 1)
    npos = np.array([max(len(p), 1) for p in positives], dtype=np.float64)
    terms['map5'] = (prec * h5).sum(axis=1) / np.minimum(npos, 5)
    sims = (q @ m.T).ravel()
    labels = np.zeros((len(q), len(m)), dtype=bool)
    for i, pos in enumerate(positives):
        labels[i, np.asarray(pos, dtype=np.int64)] = True
    order = np.argsort(-sims, kind='mergesort')
    s = sims[order]
    # tied scores are one threshold, as in metrics.precision_recall_curve
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.zeros(0, int)
    return {'valid': valid, **terms, 'pair_query': (order // max(len(m), 1)).astype(np.int64),
            'pair_label': labels.ravel()[order], 'tie_ends': ends}


def weighted_metrics(terms: dict, w: np.ndarray) -> dict[str, float]:
    """Every metric of one bootstrap sample: query i counted w[i] times (w = 1: the data)."""
    wv = w * terms['valid']
    n = wv.sum()
    out = {k: float((terms[k] * wv).sum() / n) if n else float('nan')
           for k in ('r1', 'r5', 'r10', 'map5')}
    we = w[terms['pair_query']]
    ends = terms['tie_ends']
    tp = np.cumsum(we * terms['pair_label'])[ends]
    seen = np.cumsum(we)[ends]
    total = tp[-1] if len(tp) else 0.0
    gained = np.diff(np.r_[0.0, tp])
    out['ap'] = (float((gained * tp / np.maximum(seen, 1e-12)).sum() / total) if total
                 else float('nan'))
    return out


def bootstrap(terms_per_model: Sequence[dict], n_boot: int = DEFAULT_BOOT, seed: int = 0,
              level: float = 0.95) -> list[dict]:
    """
    Point value and percentile interval of each metric, per model, from paired query draws.

    Returns per model {metric: {'value', 'lo', 'hi'}} plus 'n_queries' (with a positive).
    """
    n_q = len(terms_per_model[0]['valid'])
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, n_q, n_q), minlength=n_q).astype(np.float64)
             for _ in range(n_boot)]
    alpha = (1.0 - level) / 2.0
    out = []
    for terms in terms_per_model:
        point = weighted_metrics(terms, np.ones(n_q))
        samples = [weighted_metrics(terms, w) for w in draws]
        row: dict = {'n_queries': int(terms['valid'].sum()), 'n_boot': int(n_boot),
                     'seed': int(seed), 'level': level}
        for k in METRICS:
            s = np.array([x[k] for x in samples], dtype=np.float64)
            s = s[~np.isnan(s)]
            lo, hi = (np.quantile(s, [alpha, 1.0 - alpha]) if len(s) else (np.nan, np.nan))
            row[k] = {'value': point[k], 'lo': float(lo), 'hi': float(hi)}
        out.append(row)
    return out


def verdict(a: Sequence[dict], b: Sequence[dict], metric: str) -> str:
    """
    Say which recipe wins on a metric: 'a', 'b', or 'tie' when any two intervals overlap.

    a wins only if every interval of a lies above every interval of b. a and b are the seeds
    of two training recipes (bootstrap rows of one set): overlapping intervals between any
    seeds mean no winner.
    """
    if not a or not b:
        return 'n/a'
    if min(r[metric]['lo'] for r in a) > max(r[metric]['hi'] for r in b):
        return 'a'
    if min(r[metric]['lo'] for r in b) > max(r[metric]['hi'] for r in a):
        return 'b'
    return 'tie'
