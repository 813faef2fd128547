"""
Compact candidate search for large maps: PCA-reduced HNSW graph, exact re-rank from full vectors.

Why: at 1280-d (the default MobileNetV2-GeM descriptor) exact search reads 5 KB per keyframe
per query (about 0.1-0.3 s at 1M keyframes), and HNSW on the full vectors builds slowly and
reached recall@5 0.72 (issue 13). These descriptors keep their neighbourhoods in few dimensions:
the top-200 of a 64-d PCA space held 0.998 of the exact top-5 at 100k generated keyframes
(bench/bench_search.py). So a small graph over the reduced vectors proposes `k x k_factor`
candidates and the exact inner product with the full float32 vectors (which the map keeps
anyway, e.g. the flat index's storage) orders them: scores are exact, only the candidate set is
approximate.

The projection is the centred PCA basis applied without its mean: L2 distances do not change
with a shift, and for unit vectors L2 order is inner-product order, so the graph uses L2.
"""
from typing import Optional

import faiss
import numpy as np

from vpr_ros.core.errors import MapError, VPRError
from vpr_ros.core.pca import principal_components

RERANK_BLOCK = 256  # rows per re-rank product: below OpenBLAS's threading threshold


def fit_projection(vectors: np.ndarray, out_dim: int, max_rows: int = 50_000,
                   seed: int = 0) -> np.ndarray:
    """(out_dim, d) float32 PCA basis of (a sample of) `vectors`, largest variance first."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or not 0 < out_dim <= x.shape[1]:
        raise MapError(f'cannot fit a {out_dim}-d projection to vectors of shape {x.shape}')
    if x.shape[0] <= out_dim:
        raise MapError(f'{x.shape[0]} vectors are too few to fit a {out_dim}-d projection')
    if x.shape[0] > max_rows:
        rows = np.random.default_rng(seed).choice(x.shape[0], max_rows, replace=False)
        x = x[np.sort(rows)]
    try:
        _, _, vecs = principal_components(x, out_dim, 'compact projection')
    except VPRError as e:  # non-finite vectors: a map error like the others here
        raise MapError(str(e)) from None
    return np.ascontiguousarray(vecs, dtype=np.float32)


class CompactSearch:
    """
    HNSW over `vectors @ basis.T`; `search` re-ranks its candidates with the full vectors.

    Rows are positions in the caller's full-vector array (add order); the caller keeps that
    array (it is read, never copied) and maps positions to keyframe ids.
    """

    def __init__(self, basis: np.ndarray, m: int = 32, ef_construction: int = 64,
                 ef_search: int = 128, k_factor: int = 40) -> None:
        basis = np.ascontiguousarray(basis, dtype=np.float32)
        if basis.ndim != 2 or basis.shape[0] > basis.shape[1]:
            raise MapError(f'projection must be (out_dim, d) with out_dim <= d, got '
                           f'{basis.shape}')
        self.basis = basis
        self.graph = faiss.IndexHNSWFlat(basis.shape[0], int(m))
        self.graph.hnsw.efConstruction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.k_factor = int(k_factor)

    def __len__(self) -> int:
        return int(self.graph.ntotal)

    @property
    def bytes_per_vector(self) -> float:
        """Memory of the graph per vector: reduced float32 vector + level-0 links (+ ~1/M)."""
        m = self.graph.hnsw.nb_neighbors(0) // 2
        return 4 * self.basis.shape[0] + 4 * 2 * m * (1 + 1 / max(1, m))

    def project(self, x: np.ndarray) -> np.ndarray:
        """Reduced (n, out_dim) float32 rows of (n, d) or (d,) vectors."""
        return np.ascontiguousarray(np.atleast_2d(x) @ self.basis.T, dtype=np.float32)

    def add(self, vectors: np.ndarray, chunk: int = 65536) -> None:
        """Append rows (their positions continue from `len(self)`)."""
        for s in range(0, len(vectors), chunk):
            self.graph.add(self.project(vectors[s:s + chunk]))

    def search(self, full: np.ndarray, q: np.ndarray, k: int,
               n_candidates: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """
        (positions, exact scores) of the best `k` rows for unit query `q`, best first.

        `full` is the (n, d) float32 array the graph was built from (same row order);
        `n_candidates` defaults to k x k_factor.
        """
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        c = min(n, max(k, n_candidates or k * self.k_factor))
        self.graph.hnsw.efSearch = max(self.ef_search, c)
        _, cand = self.graph.search(self.project(q), c)
        cand = cand[0][cand[0] >= 0]
        qv = np.asarray(q, dtype=np.float32).reshape(-1)
        # Re-rank in blocks: OpenBLAS hands a (>~400 x 1280) gemv to its threads, which on a
        # loaded 2-core machine took 11-20 ms instead of ~1 ms (bench/bench_map_compact.py).
        scores = np.empty(len(cand), np.float32)
        for s in range(0, len(cand), RERANK_BLOCK):
            scores[s:s + RERANK_BLOCK] = full[cand[s:s + RERANK_BLOCK]] @ qv
        order = np.argsort(-scores, kind='stable')[:k]
        return cand[order].astype(np.int64), scores[order]
