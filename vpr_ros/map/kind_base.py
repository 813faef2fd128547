"""
What an index kind is made of, so that a new kind is one table entry (index_kinds.py).

An `IndexKind` names a FAISS index (build it, recognise it, tune it, check the body of its
file) and, for kinds that keep a structure beside the FAISS index (the compact kind's PCA graph),
a `KindState` class. The map, its storage and its search call only the hooks below, never a
kind by name: the state is kept in step after adds (`sync`), saved in its own files of the
generation (`FILES`, `write`, `read`: the manifest lists and hashes them like any data file),
and may propose search candidates (`proposer`) that the search then scores and filters with
the one temporal-exclusion rule. Flat and HNSW use the base class, which does nothing.

The HNSW pieces live here because two kinds use them (hnsw, and compact's graph file).
"""
from dataclasses import dataclass
from typing import Callable, Optional

import faiss
import numpy as np

from vpr_ros.core.errors import MapError
from vpr_ros.map.id_pool import MAX_ID
from vpr_ros.map.index_file import FLAT_TAG, IndexFileWalker

# propose(q, f, k) -> (keyframe ids, exact scores) of the best f rows for unit query q, best
# first; k is what the caller keeps after the exclusion (f - k of them may be excluded).
Proposer = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


LIMITS = {'hnsw_m': (2, 4096), 'hnsw_ef_construction': (1, 1 << 20),
          'hnsw_ef_search': (1, 1 << 20), 'hnsw_threshold': (0, MAX_ID)}


def bounded(name: str, value) -> int:
    """`value` as an integer within LIMITS[name]; MapError naming it otherwise."""
    lo, hi = LIMITS[name]
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise MapError(f'{name} must be an integer, got {value!r}') from None
    if not lo <= v <= hi:
        raise MapError(f'{name} must be in [{lo}, {hi}], got {value}')
    return v


@dataclass(frozen=True)
class IndexParams:
    """HNSW graph parameters (unused by flat): M, efConstruction, efSearch."""

    m: int = 32
    ef_construction: int = 64
    ef_search: int = 256

    @classmethod
    def checked(cls, m, ef_construction, ef_search) -> 'IndexParams':
        """Parameters from outside (node, manifest, caller), each bounded (MapError)."""
        return cls(bounded('hnsw_m', m), bounded('hnsw_ef_construction', ef_construction),
                   bounded('hnsw_ef_search', ef_search))


class KindState:
    """
    A kind's structure beside its FAISS index; the base class is 'none' (flat, hnsw).

    One object per map, owned by it and used under its lock. Subclasses override what they
    need; every hook has a do-nothing default, so the map never asks which kind it holds.
    """

    FILES: tuple[str, ...] = ()   # file names in the generation (manifest: listed, hashed)

    def __init__(self, params: IndexParams) -> None:
        self.params = params

    def tune(self, params: IndexParams) -> None:
        """Take new search parameters live."""
        self.params = params

    def sync(self, index: faiss.Index) -> None:
        """After adds, a build or a load: bring the structure up to date with `index`."""

    def attach(self, index: faiss.Index, params: IndexParams) -> None:
        """After a load: the map's parameters, then whatever the files did not hold."""
        self.tune(params)
        self.sync(index)

    def clear(self) -> None:
        """Map reset: drop the structure (it is rebuilt as the map regrows)."""

    def ready(self, count: int) -> bool:
        """Whether the structure covers all `count` stored vectors (else search exactly)."""
        return False

    def proposer(self, index: faiss.Index, count: int) -> Optional[Proposer]:
        """Give a candidate source for one search (under the map's lock); None: the index's own."""
        return None

    def write(self, gen: str, dim: int, count: int) -> None:
        """Write FILES into the generation directory `gen` (created O_EXCL, fsynced)."""

    @classmethod
    def read(cls, gen: str, dim: int, count: int, params: IndexParams) -> 'KindState':
        """Check and read FILES of a generation; MapError naming the file when they fail."""
        return cls(params)


@dataclass(frozen=True)
class IndexKind:
    """
    One index kind: build, recognise, set efSearch, check the body of its file, its state.

    `description` goes into the `map_index` parameter's documentation; `keeps_build_params`:
    a loaded index of this kind keeps the M/efConstruction it was built with (its graph is in
    the file; new values would need a rebuild).
    """

    name: str
    tag: bytes
    build: Callable[[int, IndexParams], faiss.Index]
    is_kind: Callable[[faiss.Index], bool]
    tune: Callable[[faiss.Index, IndexParams], None]
    check_body: Callable[[IndexFileWalker], None]
    description: str = ''
    state: type = KindState
    keeps_build_params: bool = False

    @property
    def files(self) -> tuple[str, ...]:
        """Data files of a generation beside index and database, for the manifest."""
        return tuple(self.state.FILES)


def inner_index(index: faiss.Index) -> faiss.Index:
    """Return the index inside the IndexIDMap2."""
    return faiss.downcast_index(index.index)


def build_hnsw(dim: int, p: IndexParams) -> faiss.Index:
    """Build an HNSW graph over inner products (the map's metric), tuned to `p`."""
    inner = faiss.IndexHNSWFlat(dim, p.m, faiss.METRIC_INNER_PRODUCT)
    tune_hnsw(inner, p)
    return inner


def tune_hnsw(inner: faiss.Index, p: IndexParams) -> None:
    """Apply efConstruction / efSearch to an HNSW index."""
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
