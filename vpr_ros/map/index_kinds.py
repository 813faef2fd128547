"""
Index kinds: one table entry per kind (how to build it, recognise it, tune it, check its file).

Every kind sits inside an `IndexIDMap2` (inner product on L2-normalised descriptors), so
keyframe ids survive reloads and `reconstruct(id)` reads a vector back. A new kind (IVF, ...) is
one `IndexKind` entry in `INDEX_KINDS`. 'compact' stores like flat; its extra structure
(PCA projection + HNSW graph, compact_kind.py) is saved in its own file.
"""
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from vpr_ros.map.index_file import FLAT_TAG, IndexFileWalker


@dataclass(frozen=True)
class IndexParams:
    """HNSW graph parameters (unused by flat): M, efConstruction, efSearch."""

    m: int = 32
    ef_construction: int = 64
    ef_search: int = 256


@dataclass(frozen=True)
class IndexKind:
    """One index kind: build, recognise, set efSearch, check the body of its file."""

    name: str
    tag: bytes
    build: Callable[[int, IndexParams], faiss.Index]
    is_kind: Callable[[faiss.Index], bool]
    tune: Callable[[faiss.Index, IndexParams], None]
    check_body: Callable[[IndexFileWalker], None]


def _build_hnsw(dim: int, p: IndexParams) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(dim, p.m, faiss.METRIC_INNER_PRODUCT)
    _tune_hnsw(inner, p)
    return inner


def _tune_hnsw(inner: faiss.Index, p: IndexParams) -> None:
    inner.hnsw.efConstruction = p.ef_construction
    inner.hnsw.efSearch = p.ef_search


def check_hnsw_body(w: IndexFileWalker, storage_tag: bytes = FLAT_TAG) -> None:
    """HNSW graph: level probabilities, per-node levels and neighbour lists, all in range."""
    n = w.count
    probas = w.array('<f8')
    cum = w.array('<i4')
    if not (0 < len(probas) <= 64 and len(cum) == len(probas) + 1 and cum[0] == 0
            and np.all(np.diff(cum) >= 0) and np.all(np.isfinite(probas))):
        raise w.fail('HNSW level tables are malformed')
    levels = w.array('<i4', n)
    if n and (levels.min() < 1 or levels.max() > len(probas)):
        raise w.fail('HNSW node levels out of range')
    offsets = w.array('<u8', n + 1)
    off, n_nb = w.vector(4)
    if offsets[0] != 0 or offsets[-1] != n_nb or not np.array_equal(
            np.diff(offsets.astype(np.int64)), cum[levels].astype(np.int64)):
        raise w.fail('HNSW neighbour offsets disagree with the node levels')
    w.check_range(off, n_nb, '<i4', -1, n)
    entry, max_level, ef_c, ef_s, _ = w.ints('<5i')
    if n and not (0 <= entry < n and max_level == levels[entry] - 1
                  and max_level == levels.max() - 1):
        raise w.fail(f'HNSW entry point {entry} / max level {max_level} are inconsistent')
    if n == 0 and entry != -1:
        raise w.fail('HNSW entry point in an empty graph')
    w.header(storage_tag)
    w.flat_body()


INDEX_KINDS: dict[str, IndexKind] = {
    'flat': IndexKind('flat', FLAT_TAG, lambda dim, p: faiss.IndexFlatIP(dim),
                      lambda inner: isinstance(inner, faiss.IndexFlatIP),
                      lambda inner, p: None, IndexFileWalker.flat_body),
    'hnsw': IndexKind('hnsw', b'IHNf', _build_hnsw,
                      lambda inner: isinstance(inner, faiss.IndexHNSWFlat),
                      _tune_hnsw, check_hnsw_body),
    # Flat storage of the full vectors; its PCA-HNSW graph lives in compact_kind.py.
    'compact': IndexKind('compact', FLAT_TAG, lambda dim, p: faiss.IndexFlatIP(dim),
                         lambda inner: isinstance(inner, faiss.IndexFlatIP),
                         lambda inner, p: None, IndexFileWalker.flat_body),
}
INDEX_TYPES = tuple(INDEX_KINDS)


def inner_index(index: faiss.Index) -> faiss.Index:
    """Return the index inside the IndexIDMap2."""
    return faiss.downcast_index(index.index)


def new_index(dim: int, kind: str, params: IndexParams) -> faiss.IndexIDMap2:
    """Build an empty index of `kind` inside an IndexIDMap2."""
    return faiss.IndexIDMap2(INDEX_KINDS[kind].build(dim, params))


def kind_of(index: faiss.Index) -> str | None:
    """Name of the kind an IndexIDMap2 holds, None when it is none of the table's."""
    inner = inner_index(index)
    for kind in INDEX_KINDS.values():
        if kind.is_kind(inner):
            return kind.name
    return None


def tune(index: faiss.Index, kind: str, params: IndexParams) -> None:
    """Apply search/build parameters to a loaded or live index."""
    INDEX_KINDS[kind].tune(inner_index(index), params)


def all_vectors(index: faiss.Index, ids: np.ndarray, dim: int) -> np.ndarray:
    """All stored vectors in the order of `ids` (the order they were added in)."""
    n = len(ids)
    if n == 0:
        return np.zeros((0, dim), np.float32)
    vecs = inner_index(index).reconstruct_n(0, n)
    order = faiss.vector_to_array(index.id_map)
    if not np.array_equal(order, ids):
        vecs = vecs[np.argsort(order)]
    return vecs
