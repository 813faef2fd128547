"""
The 'compact' index kind: a flat index (the full vectors, exact scores) plus a PCA-HNSW graph.

Why: exact search reads every full vector per query; at 1280-d and 100k+ keyframes that is tens
of milliseconds (issue 13). The compact kind keeps the flat index as the store of full vectors
(ids, reconstruct, save format unchanged) and adds `compact.CompactSearch`: a PCA projection
fitted on the stored vectors when the index is (re)built, an HNSW graph over the projected rows
proposing candidates, and the exact inner product over the full vectors ordering them. Below
`MIN_COUNT` keyframes there is no graph and search is the flat one (a projection fitted on a
handful of vectors would be noise, and exact search is cheap there).

The graph and projection are saved next to the index (COMPACT_FILE) and loaded without a
refit or rebuild; the file is checked before FAISS reads any of it (index_file.py).
"""
import logging
import os
import struct
from typing import Optional

import faiss
import numpy as np

from vpr_ros.core.errors import MapError
from vpr_ros.map.compact import CompactSearch, fit_projection
from vpr_ros.map.index_file import (
    IndexFileWalker,
    METRIC_L2,
    open_nofollow,
)
from vpr_ros.map.kind_base import check_hnsw_body, IndexParams, KindState, Proposer
from vpr_ros.map.search import flat_arrays

_LOG = logging.getLogger(__name__)
COMPACT_FILE = 'compact.bin'
MIN_COUNT = 2000
# 128, not 64: fitted on the first MIN_COUNT keyframes (as the kind does), the exact top-200 of
# the 64-d space held 0.990 (100k) / 0.922 (1M) of the exact top-5, the 128-d space 1.000 /
# 0.994 (bench/bench_map_compact.py --ceiling); 100k through the map: 1.19 ms at recall@5 0.997
# (PCA 64: 0.93 ms at 0.987); the cost is +256 B per keyframe in the graph.
MAX_OUT_DIM = 128
K_FACTOR = 40
_MAGIC = b'VPRC'
_HEAD = struct.Struct('<4sIIIQI')   # magic, version, d, out_dim (0: no graph), count, k_factor
_VERSION = 1
_GRAPH_TAG = b'IHNf'
_L2_FLAT_TAG = b'IxF2'


def out_dim_for(dim: int) -> int:
    """Projected dimension: MAX_OUT_DIM (measured for 1280-d, see above), at most d/2."""
    return max(1, min(MAX_OUT_DIM, dim // 2))


class CompactState(KindState):
    """The compact structure of one map (graph None: below MIN_COUNT, or a failed build)."""

    FILES = (COMPACT_FILE,)

    def __init__(self, params: IndexParams, min_count: Optional[int] = None,
                 search: Optional[CompactSearch] = None) -> None:
        super().__init__(params)
        self.min_count = MIN_COUNT if min_count is None else int(min_count)
        self.cs = search
        self.fits = 0   # projections fitted by this object (a load must not add any)

    def tune(self, params: IndexParams) -> None:
        """Take a new efSearch live (M/efConstruction apply at the next build)."""
        self.params = params
        if self.cs is not None:
            self.cs.ef_search = params.ef_search

    def clear(self) -> None:
        """Drop the graph (map reset): it is fitted again once the map regrows."""
        self.cs = None

    def sync(self, index: faiss.Index) -> None:
        """After adds: fit + build at MIN_COUNT, else append the new rows to the graph."""
        arrays = flat_arrays(index)
        if arrays is None:
            return
        xb = arrays[0]
        try:
            if self.cs is None and len(xb) >= self.min_count:
                p = self.params
                cs = CompactSearch(fit_projection(xb, out_dim_for(xb.shape[1])), p.m,
                                   p.ef_construction, p.ef_search, K_FACTOR)
                cs.add(xb)
                self.cs = cs
                self.fits += 1
            elif self.cs is not None and len(self.cs) < len(xb):
                self.cs.add(xb[len(self.cs):])
        except (RuntimeError, MemoryError, MapError) as exc:
            _LOG.warning('compact index build failed (%s); searching the map exactly', exc)
            self.cs = None

    def ready(self, count: int) -> bool:
        """Whether the graph covers all `count` stored vectors (else search exactly)."""
        return self.cs is not None and len(self.cs) == count

    def proposer(self, index: faiss.Index, count: int) -> Optional[Proposer]:
        """
        Propose the graph's candidates, scored exactly over the full vectors (zero-copy views).

        `f - k` of the `f` asked for may be excluded (the robot's recent keyframes, usually the
        closest ones), so the graph is asked for those plus the k x k_factor a plain top-k
        re-ranks.
        """
        arrays = flat_arrays(index) if self.ready(count) else None
        if arrays is None:
            return None
        xb, ids = arrays
        cs = self.cs

        def propose(q: np.ndarray, f: int, k: int) -> tuple[np.ndarray, np.ndarray]:
            pos, scores = cs.search(xb, q, f, n_candidates=k * cs.k_factor + f - k)
            return ids[pos], scores
        return propose

    # ------------------------------------------------------------------ file
    def write(self, gen: str, dim: int, count: int) -> None:
        """Write the projection and graph (O_EXCL, fsynced) into the generation `gen`."""
        path = os.path.join(gen, COMPACT_FILE)
        cs = self.cs if self.cs is not None and len(self.cs) == count else None
        out = 0 if cs is None else cs.basis.shape[0]
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, 'wb') as f:
            f.write(_HEAD.pack(_MAGIC, _VERSION, dim, out, count, K_FACTOR))
            if cs is not None:
                f.write(cs.basis.tobytes())
                writer = faiss.PyCallbackIOWriter(f.write)
                try:
                    faiss.write_index(cs.graph, writer)
                except RuntimeError as exc:
                    raise MapError(f'cannot write {path}: {str(exc).strip()[-200:]}') from exc
                finally:
                    del writer
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def read(cls, gen: str, dim: int, count: int, params: IndexParams) -> 'CompactState':
        """Check, then read a compact file; MapError naming it for anything out of place."""
        path = os.path.join(gen, COMPACT_FILE)
        with os.fdopen(open_nofollow(path, os.O_RDONLY), 'rb') as f:
            w = IndexFileWalker(f, path, dim, count)
            magic, version, d, out, n, k_factor = w.ints(_HEAD.format)
            if magic != _MAGIC or version != _VERSION:
                raise w.fail(f'not a compact index file (magic {magic!r}, version {version})')
            if d != dim or n != count or not 0 <= out <= d or not 1 <= k_factor <= 4096:
                raise w.fail(f'header (d={d}, out={out}, count={n}, k_factor={k_factor}) '
                             f'disagrees with the manifest (d={dim}, count={count})')
            if out == 0:
                if w.pos != w.size:
                    raise w.fail(f'{w.size - w.pos} trailing bytes')
                return cls(params)
            basis = np.frombuffer(w.read(4 * out * d), '<f4').reshape(out, d)
            if not np.all(np.isfinite(basis)):
                raise w.fail('projection has NaN or inf values')
            start = w.pos
            g = IndexFileWalker(f, path, out, count, METRIC_L2)
            g.pos = start
            g.header(_GRAPH_TAG)
            check_hnsw_body(g, _L2_FLAT_TAG)
            if g.pos != g.size:
                raise g.fail(f'{g.size - g.pos} trailing bytes')
            f.seek(start)
            reader = faiss.PyCallbackIOReader(f.read)
            try:
                graph = faiss.read_index(reader)
            except (RuntimeError, MemoryError, ValueError) as exc:
                raise MapError(f'map index {path} is corrupt: '
                               f'{str(exc).strip().splitlines()[-1][:200]}') from exc
            finally:
                del reader
        if not isinstance(graph, faiss.IndexHNSWFlat) or graph.d != out or graph.ntotal != n:
            raise MapError(f'map index {path} does not hold an HNSW graph of {n} x {out}')
        cs = CompactSearch(basis, params.m, params.ef_construction, params.ef_search, k_factor)
        cs.graph = graph
        return cls(params, search=cs)
