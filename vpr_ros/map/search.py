"""
Input checks and the search loop: top-k by cosine similarity, with the temporal exclusion.

The exclusion itself is defined once, in `KeyframeTable.exclude`; this loop over-fetches from
the index so that k results survive it.

Exact (flat) search of a few queries does not go through FAISS: `IndexFlatIP` scans one query
with its own loop (61 ms at 100k x 1280 on the 2-core bench machine) where a BLAS matrix-vector
product over the same contiguous float32 array, read in place, takes 22 ms (issue 13). So a flat
index is searched as `X @ q` + argpartition on a zero-copy view of FAISS's own storage (no second
copy of the vectors), same top-k; FAISS keeps batches of `BLAS_BATCH` or more, where its sgemm
path is as fast. A kind with a structure of its own (kind_base.KindState, e.g. the compact
kind's graph) may propose candidates with exact scores; the exclusion loop is the flat one.
"""
import math
from typing import Optional

import faiss
import numpy as np

from vpr_ros.core.errors import MapError
from vpr_ros.map.blobs import BlobStore
from vpr_ros.map.kind_base import inner_index, KindState, Proposer
from vpr_ros.map.records import KeyframeTable, Match

# FAISS's flat search uses BLAS (sgemm) from 20 queries on (distance_compute_blas_threshold).
BLAS_BATCH = 20


def check_desc(dim: int, desc: np.ndarray, what: str = 'descriptor') -> np.ndarray:
    """Return (Q, dim) float32 unit rows; refuse wrong shapes, NaN/inf and zero vectors."""
    x = np.asarray(desc)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise MapError(f'{what} has shape {np.shape(desc)}, the map holds dimension {dim}')
    if not np.issubdtype(x.dtype, np.number):
        raise MapError(f'{what} has non-numeric dtype {x.dtype}')
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise MapError(f'{what} has NaN or inf values')
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms < 1e-12):
        raise MapError(f'{what} has zero norm; it cannot be L2-normalised')
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def pose_rows(poses, n: int) -> np.ndarray:
    """Return (n, 7) poses (NaN rows when None); a single pose may be a 7-vector."""
    if poses is None:
        return np.full((n, 7), np.nan)
    p = np.array(poses, dtype=np.float64)
    if n == 1 and p.shape == (7,):
        return p[None, :]
    if p.shape != (n, 7):
        what = 'a 7-vector [tx,ty,tz,qx,qy,qz,qw]' if n == 1 else f'shape ({n}, 7)'
        raise MapError(f'pose must be {what}, got shape {p.shape}')
    return p


def batch_rows(dim: int, descs, stamps_ns, poses, frame_ids, blobs) -> tuple:
    """Check a batch add: (unit descriptors, stamps, poses, frame ids, blobs) or MapError."""
    x = check_desc(dim, descs, 'descriptors')
    n = x.shape[0]
    stamps = np.asarray(list(stamps_ns), dtype=np.int64).reshape(-1)
    if stamps.shape[0] != n:
        raise MapError(f'{stamps.shape[0]} stamps for {n} descriptors')
    p = pose_rows(poses, n)
    frames = [''] * n if frame_ids is None else [str(f) for f in frame_ids]
    bl = [None] * n if blobs is None else list(blobs)
    if len(frames) != n or len(bl) != n:
        raise MapError(f'frame_ids/blobs must have {n} entries')
    BlobStore.check(bl)
    return x, stamps, p, frames, bl


def check_search_args(k: int, exclusion_s: float, exclusion_n: int) -> int:
    """Return the exclusion window in ns; MapError for negative or non-finite arguments."""
    if int(k) < 0 or int(exclusion_n) < 0:
        raise MapError(f'k and exclusion_n must be >= 0, got {k}, {exclusion_n}')
    if not (math.isfinite(exclusion_s) and exclusion_s >= 0):
        raise MapError(f'exclusion_s must be finite and >= 0, got {exclusion_s}')
    return int(round(exclusion_s * 1e9))


def flat_arrays(index: faiss.Index) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """
    Zero-copy (vectors (n, d), ids (n,)) views of an IndexIDMap2 around an IndexFlatIP, else None.

    The views alias FAISS's buffers: valid only until the index changes, so take them under the
    map's lock for one search and never keep them.
    """
    inner = inner_index(index)
    if not isinstance(inner, faiss.IndexFlatIP):
        return None
    n, d = int(inner.ntotal), int(inner.d)
    if n == 0:
        return np.zeros((0, d), np.float32), np.zeros(0, np.int64)
    xb = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)
    ids = faiss.rev_swig_ptr(index.id_map.data(), n)
    return xb, ids


def top_scores(scores: np.ndarray, f: int) -> np.ndarray:
    """Positions of the `f` highest scores, best first (argpartition, then sort only those)."""
    n = scores.shape[0]
    if f >= n:
        return np.argsort(-scores, kind='stable')
    part = np.argpartition(scores, n - f)[n - f:]
    return part[np.argsort(-scores[part], kind='stable')]


def _search_flat(xb: np.ndarray, ids: np.ndarray, table: KeyframeTable, session: int,
                 q: np.ndarray, k: int, stamp: Optional[int], excl_ns: int, exclusion_n: int,
                 fetch: int, bound: int) -> list[Match]:
    """One query by BLAS `X @ q`; the scores are computed once and re-cut when more are needed."""
    scores = xb @ q
    n = len(ids)
    f = fetch
    while True:
        top = top_scores(scores, f)
        res = table.exclude(scores[top], ids[top], session, stamp, excl_ns, exclusion_n, k)
        if len(res) >= k or f >= n:
            return res
        f = min(n, max(2 * f, k + bound))


def _search_proposed(propose: Proposer, table: KeyframeTable, session: int, q: np.ndarray,
                     k: int, stamp: Optional[int], excl_ns: int, exclusion_n: int, fetch: int,
                     bound: int, n: int) -> Optional[list[Match]]:
    """One query through a kind's candidates (exact scores); None: search it exactly."""
    f = fetch
    while f < n:
        ids, scores = propose(q, f, k)
        res = table.exclude(scores, ids, session, stamp, excl_ns, exclusion_n, k)
        if len(res) >= k:
            return res
        f = min(n, max(2 * f, k + bound))
    return None


def search_rows(index: faiss.Index, table: KeyframeTable, session: int, x: np.ndarray, k: int,
                stamps: list[Optional[int]], excl_ns: int,
                exclusion_n: int, state: Optional[KindState] = None) -> list[list[Match]]:
    """Top-k matches per query row, none of them excluded, best first."""
    n = table.n
    if n == 0:
        return [[] for _ in range(x.shape[0])]
    propose = state.proposer(index, n) if state is not None else None
    if propose is None:
        return _exact_rows(index, table, session, x, k, stamps, excl_ns, exclusion_n)
    out = []
    for q in range(x.shape[0]):
        bound = table.fetch_bound(stamps[q], excl_ns, exclusion_n)
        res = _search_proposed(propose, table, session, x[q], k, stamps[q], excl_ns,
                               exclusion_n, min(n, k + bound), bound, n)
        out.append(res if res is not None else _exact_rows(
            index, table, session, x[q:q + 1], k, stamps[q:q + 1], excl_ns, exclusion_n)[0])
    return out


def _exact_rows(index: faiss.Index, table: KeyframeTable, session: int, x: np.ndarray, k: int,
                stamps: list[Optional[int]], excl_ns: int, exclusion_n: int) -> list[list[Match]]:
    """Search with the index itself: BLAS over flat storage for few queries, else FAISS."""
    n = table.n
    bounds = [table.fetch_bound(s, excl_ns, exclusion_n) for s in stamps]
    fetch = min(n, k + max(bounds))
    flat = flat_arrays(index) if x.shape[0] < BLAS_BATCH else None
    if flat is not None:
        return [_search_flat(flat[0], flat[1], table, session, x[q], k, stamps[q], excl_ns,
                             exclusion_n, min(n, k + bounds[q]), bounds[q])
                for q in range(x.shape[0])]
    dist, labels = index.search(x, fetch)
    out = []
    for q in range(x.shape[0]):
        res = table.exclude(dist[q], labels[q], session, stamps[q], excl_ns, exclusion_n, k)
        f = fetch
        # HNSW is approximate (and may return fewer than asked): fetch more until k
        # survive or the whole map was asked for.
        while len(res) < k and f < n:
            f = min(n, max(2 * f, k + bounds[q]))
            d1, l1 = index.search(x[q:q + 1], f)
            res = table.exclude(d1[0], l1[0], session, stamps[q], excl_ns, exclusion_n, k)
        out.append(res)
    return out
