"""
Index kinds: one table entry per kind (how to build it, recognise it, tune it, check its file).

Every kind sits inside an `IndexIDMap2` (inner product on L2-normalised descriptors), so
keyframe ids survive reloads and `reconstruct(id)` reads a vector back. A new kind (IVF, ...) is
one `IndexKind` entry in `INDEX_KINDS` (kind_base.py says what an entry holds): the map, its
storage, manifest and search call the entry's hooks and never name a kind. 'compact' stores
like flat; its extra structure (PCA projection + HNSW graph) is its `CompactState`
(compact_kind.py), saved in the file that state names.
"""
import faiss
import numpy as np

from vpr_ros.core.errors import MapError
from vpr_ros.map.compact_kind import CompactState, MIN_COUNT
from vpr_ros.map.index_file import FLAT_TAG, IndexFileWalker
from vpr_ros.map.kind_base import (
    build_hnsw,
    check_hnsw_body,
    IndexKind,
    IndexParams,
    inner_index,
    KindState,
    tune_hnsw,
)

__all__ = ['INDEX_KINDS', 'IndexKind', 'IndexParams', 'KindState', 'all_vectors', 'get_kind',
           'inner_index', 'kind_names', 'kind_of', 'new_index', 'new_state', 'tune']


def _flat(dim: int, p: IndexParams) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


def _is_flat(inner: faiss.Index) -> bool:
    return isinstance(inner, faiss.IndexFlatIP)


def _no_tune(inner: faiss.Index, p: IndexParams) -> None:
    return None


INDEX_KINDS: dict[str, IndexKind] = {k.name: k for k in (
    IndexKind('flat', FLAT_TAG, _flat, _is_flat, _no_tune, IndexFileWalker.flat_body,
              'exact'),
    IndexKind('hnsw', b'IHNf', build_hnsw, lambda inner: isinstance(inner, faiss.IndexHNSWFlat),
              tune_hnsw, check_hnsw_body, 'approximate, for large maps',
              keeps_build_params=True),
    # Flat storage of the full vectors (exact scores); its PCA-HNSW graph is the state's.
    IndexKind('compact', FLAT_TAG, _flat, _is_flat, _no_tune, IndexFileWalker.flat_body,
              f'exact scores of candidates from a PCA-reduced HNSW graph, fitted from '
              f'{MIN_COUNT} keyframes and saved with the map', state=CompactState),
)}


def kind_names() -> tuple[str, ...]:
    """Names of the kinds in the table, in table order (the `map_index` choices)."""
    return tuple(INDEX_KINDS)


def get_kind(name: str) -> IndexKind:
    """Look `name` up in the table; MapError listing the kinds otherwise."""
    try:
        return INDEX_KINDS[name]
    except (KeyError, TypeError):
        raise MapError(f'index must be one of {kind_names()}, got {name!r}') from None


def new_index(dim: int, kind: str, params: IndexParams) -> faiss.IndexIDMap2:
    """Build an empty index of `kind` inside an IndexIDMap2."""
    return faiss.IndexIDMap2(get_kind(kind).build(dim, params))


def new_state(kind: str, params: IndexParams, index: faiss.Index = None) -> KindState:
    """Make a fresh state of `kind` (synced to `index`'s vectors when given)."""
    state = get_kind(kind).state(params)
    if index is not None:
        state.sync(index)
    return state


def kind_of(index: faiss.Index) -> str | None:
    """Name of the first kind whose FAISS index an IndexIDMap2 holds, None when none."""
    inner = inner_index(index)
    for kind in INDEX_KINDS.values():
        if kind.is_kind(inner):
            return kind.name
    return None


def tune(index: faiss.Index, kind: str, params: IndexParams) -> None:
    """Apply search/build parameters to a loaded or live index."""
    get_kind(kind).tune(inner_index(index), params)


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
