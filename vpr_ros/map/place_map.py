"""
The keyframe map: FAISS descriptors, keyframe records and blobs, saved crash-safely.

Descriptors are L2-normalised float32, so inner product is cosine similarity; the index kinds
are a table (index_kinds.py), records live in columns (records.py), blobs are read lazily once
saved (blobs.py), and the on-disk format with its generations, manifest and checks is
storage.py's. This module ties them together behind one lock.

Ids are monotonic and unique across sessions and crashes: a map opened on a directory reserves
id blocks there durably before handing ids out (id_pool.py), and each load opens a new session
past every saved or reserved one. `reset()` empties the map but ids keep increasing, so an id
published before the reset never names a different keyframe afterwards. A map opened on a
directory holds it (dir_lock.py) until `close()` or exit: a second process is refused.
An add either completes or changes nothing.
"""
import logging
import os
import threading
from typing import Callable, Iterable, Optional, Sequence
import weakref

import numpy as np

from vpr_ros.core.errors import MapError
from vpr_ros.map import dir_lock, storage
from vpr_ros.map import search as map_search
from vpr_ros.map.aside import move_aside
from vpr_ros.map.blobs import BlobStore
from vpr_ros.map.id_pool import MAX_ID
from vpr_ros.map.index_kinds import all_vectors, get_kind, new_index, new_state, tune
from vpr_ros.map.kind_base import bounded, IndexParams
from vpr_ros.map.manifest import DB_FILE
from vpr_ros.map.records import KeyframeRecord, KeyframeTable, Match
from vpr_ros.map.storage import map_exists

__all__ = ['KeyframeRecord', 'Match', 'PlaceMap', 'map_exists']
_LOG = logging.getLogger(__name__)

# Called with a stage name between the steps of a save. Tests set it (in a child process) to
# pause a save at a known point and SIGKILL it there; nothing in the package sets it.
_SAVE_HOOK: Optional[Callable[[str], None]] = None


def _hook(stage: str) -> None:
    if _SAVE_HOOK is not None:
        _SAVE_HOOK(stage)


class PlaceMap:
    """
    Keyframe descriptors + records, searchable with temporal exclusion, saved atomically.

    All public methods hold one lock, so the node's worker thread (add/search) and its service
    callbacks (save/reset) can share a map. `hnsw_threshold` > 0 switches a flat index to HNSW
    once the map reaches that many keyframes (a one-off rebuild), because exact search grows
    linearly with the map. HNSW defaults (M=32, efConstruction=64, efSearch=256) were measured at
    1M x 256 (bench/bench_map.py); efSearch can be lowered live. index='compact' keeps exact
    scores and proposes candidates from a PCA-HNSW graph saved with the map (compact_kind.py).
    """

    def __init__(self, dim: int, fingerprint: str, index: str = 'flat', hnsw_m: int = 32,
                 hnsw_ef_construction: int = 64, hnsw_ef_search: int = 256,
                 hnsw_threshold: int = 0) -> None:
        try:
            ok = 0 < int(dim) <= 1 << 16
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise MapError(f'descriptor dimension must be in [1, 65536], got {dim!r}')
        get_kind(index)   # MapError naming the kinds
        self._dim = int(dim)
        self._fingerprint = str(fingerprint)
        self._kind = index
        self._params = IndexParams.checked(hnsw_m, hnsw_ef_construction, hnsw_ef_search)
        self._hnsw_threshold = bounded('hnsw_threshold', hnsw_threshold)
        self._lock = threading.RLock()
        self._next_id = 0
        self._session = 0
        self._table = KeyframeTable()
        self._blobs = BlobStore()
        self._index = new_index(self._dim, self._kind, self._params)
        self._state = new_state(self._kind, self._params)   # the kind's own structure
        self._home: Optional[str] = None        # the directory this map was opened on
        self._handle: Optional[dir_lock.DirHandle] = None
        self._release: Optional[weakref.finalize] = None
        self._sources: dict = {}    # where sessions of a merged map came from (manifest)
        self.moved_aside: Optional[str] = None  # where open(aside=True) put the old map

    # ------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def session(self) -> int:
        """Session number of this run: past every saved or reserved session of its directory."""
        return self._session

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def index_type(self) -> str:
        return self._kind

    @property
    def hnsw_ef_search(self) -> int:
        return self._params.ef_search

    @hnsw_ef_search.setter
    def hnsw_ef_search(self, value: int) -> None:
        """Set efSearch live, because recall/latency is tuned while running."""
        ef = bounded('hnsw_ef_search', value)
        with self._lock:
            self._params = IndexParams(self._params.m, self._params.ef_construction, ef)
            tune(self._index, self._kind, self._params)
            self._state.tune(self._params)

    def __len__(self) -> int:
        return self._table.n

    @property
    def _compact(self):
        """The kind's state (kind_base.KindState), by the name the compact kind's tests use."""
        return self._state

    def session_sources(self) -> dict[int, dict]:
        """Session -> {'source': map name, 'session': its number there}, for merged maps."""
        return {int(k): dict(v) for k, v in self._sources.items()}

    # ------------------------------------------------------ directory holding
    def _hold(self, handle: dir_lock.DirHandle) -> None:
        """Keep `handle` for this map's lifetime; start past the directory's reservations."""
        self._handle = handle
        self._release = weakref.finalize(self, handle.release)
        self._next_id = max(self._next_id, handle.pool.first_free())
        self._session = handle.pool.claim_session(self._session)

    def _attach(self, create: bool) -> None:
        if self._handle is None and self._home is not None:
            self._hold(dir_lock.acquire(self._home, create))

    def close(self) -> None:
        """Release the map directory (other processes may open it) and the saved blob file."""
        with self._lock:
            self._blobs.close()
            if self._release is not None:
                self._release()
            self._handle = self._release = None

    # --------------------------------------------------------------- add/read
    def add(self, desc: np.ndarray, stamp_ns: int, pose: Optional[np.ndarray] = None,
            frame_id: str = '', blob: Optional[bytes] = None) -> KeyframeRecord:
        """Add a keyframe; returns its record with the new id (re-normalises `desc`)."""
        x = map_search.check_desc(self._dim, desc)
        if x.shape[0] != 1:
            raise MapError(f'add takes one descriptor, got {x.shape[0]}')
        p = map_search.pose_rows(pose, 1)
        BlobStore.check([blob])
        stamps = np.array([int(stamp_ns)], np.int64)
        with self._lock:
            self._add_rows(x, stamps, p, [str(frame_id)], [blob])
            return self._table.record_at(self._table.n - 1)

    def add_batch(self, descs: np.ndarray, stamps_ns: Iterable[int],
                  poses: Optional[np.ndarray] = None, frame_ids: Optional[Iterable[str]] = None,
                  blobs: Optional[Iterable[Optional[bytes]]] = None) -> np.ndarray:
        """
        Add N keyframes in one FAISS call; returns their ids (N,).

        Same result as N `add` calls, ~20x faster: for building maps from bags and benchmarks.
        """
        rows = map_search.batch_rows(self._dim, descs, stamps_ns, poses, frame_ids, blobs)
        with self._lock:
            return self._add_rows(*rows)

    def _add_rows(self, x: np.ndarray, stamps: np.ndarray, poses: np.ndarray,
                  frames: list[str], blobs: list) -> np.ndarray:
        """Everything that can fail first (ids reserved, blobs copied, room made), then commit."""
        n = x.shape[0]
        if self._home is None:
            if self._next_id + n > MAX_ID:
                raise MapError(f'keyframe ids exhausted: {self._next_id + n} > {MAX_ID}')
            first = self._next_id
        else:
            self._attach(create=True)
            first = self._handle.pool.take(self._next_id, n, self._session)
        ids = np.arange(first, first + n, dtype=np.int64)
        staged = BlobStore.stage(ids.tolist(), blobs)
        self._table.reserve(self._table.n + n)
        self._index.add_with_ids(x, ids)
        # Nothing below can fail: the add is complete.
        self._table.append(ids, stamps, poses, self._session, frames)
        self._blobs.commit(staged)
        self._next_id = first + n
        self._state.sync(self._index)   # logs and falls back to exact search on failure
        if (self._hnsw_threshold and self._kind == 'flat'
                and self._table.n >= self._hnsw_threshold):
            try:
                self._rebuild('hnsw')
            except (RuntimeError, MemoryError) as exc:
                _LOG.warning('switching the map to HNSW failed (%s); it stays flat', exc)
        return ids

    def record(self, kid: int) -> KeyframeRecord:
        """Record of keyframe `kid` (KeyError when absent)."""
        with self._lock:
            return self._table.record_at(self._table.row(int(kid)))

    def records(self) -> list[KeyframeRecord]:
        """All records, by increasing id."""
        with self._lock:
            return [self._table.record_at(i) for i in range(self._table.n)]

    def ids(self) -> np.ndarray:
        """All ids (increasing), as an array, for callers that need the columns not records."""
        with self._lock:
            return self._table.ids[:self._table.n].copy()

    def poses(self) -> np.ndarray:
        """(N, 7) poses in id order (NaN rows when unknown), e.g. for keyframe markers."""
        with self._lock:
            return self._table.poses[:self._table.n].copy()

    def descriptor(self, kid: int) -> np.ndarray:
        """Return the stored (normalised) descriptor of `kid`, e.g. to re-rank or re-index."""
        with self._lock:
            self._table.row(int(kid))
            return self._index.reconstruct(int(kid)).astype(np.float32)

    def descriptors(self, kids: Sequence[int]) -> np.ndarray:
        """`descriptor` of several keyframes in one call, (n, dim) in the order given."""
        ids = np.asarray(kids, np.int64).reshape(-1)
        with self._lock:
            self._table.check_ids(ids)
            return (self._index.reconstruct_batch(ids).astype(np.float32) if len(ids)
                    else np.zeros((0, self._dim), np.float32))

    def blob(self, kid: int) -> Optional[bytes]:
        """Return the blob stored with keyframe `kid` (None when it had none)."""
        kid = int(kid)
        with self._lock:
            self._table.row(kid)
            return self._blobs.get(kid)

    # ----------------------------------------------------------------- search
    def search(self, desc: np.ndarray, k: int, query_stamp_ns: Optional[int] = None,
               exclusion_s: float = 0.0, exclusion_n: int = 0) -> list[Match]:
        """
        Top-k keyframes by cosine similarity, best first, never recent ones of this session.

        This session's keyframes within `exclusion_s` (inclusive) of `query_stamp_ns` and the
        last `exclusion_n` it added are skipped (they are the robot's own recent past, not loop
        closures); earlier sessions are never excluded. Fewer than k come back only when the
        map has fewer eligible keyframes. Callers must not filter again (one definition).
        """
        if np.ndim(desc) != 1 and np.shape(desc)[0] != 1:
            raise MapError(f'search takes one descriptor, got {np.shape(desc)[0]}; use '
                           'search_batch')
        return self.search_batch(desc, k, [query_stamp_ns], exclusion_s, exclusion_n)[0]

    def search_batch(self, descs: np.ndarray, k: int,
                     query_stamps_ns: Optional[Iterable[Optional[int]]] = None,
                     exclusion_s: float = 0.0, exclusion_n: int = 0) -> list[list[Match]]:
        """`search` for (Q, dim) queries in one FAISS call (evaluation, bag processing)."""
        excl_ns = map_search.check_search_args(k, exclusion_s, exclusion_n)
        x = map_search.check_desc(self._dim, descs, 'descriptors')
        if query_stamps_ns is None:
            stamps: list[Optional[int]] = [None] * x.shape[0]
        else:
            stamps = [None if s is None else int(s) for s in query_stamps_ns]
            if len(stamps) != x.shape[0]:
                raise MapError(f'{len(stamps)} query stamps for {x.shape[0]} descriptors')
        if k == 0:
            return [[] for _ in range(x.shape[0])]
        with self._lock:
            return map_search.search_rows(self._index, self._table, self._session, x, int(k),
                                          stamps, excl_ns, int(exclusion_n), self._state)

    # ---------------------------------------------------------- rebuild/reset
    def _rebuild(self, kind: str) -> None:
        """Move the vectors into a new index of another type (config change or threshold)."""
        vecs = all_vectors(self._index, self._table.ids[:self._table.n], self._dim)
        index = new_index(self._dim, kind, self._params)
        if self._table.n:
            index.add_with_ids(vecs, self._table.ids[:self._table.n].copy())
        self._index = index
        self._kind = kind
        self._state = new_state(kind, self._params, index)

    def reset(self) -> None:
        """Empty the map (memory only until the next save); ids keep increasing, session stays."""
        with self._lock:
            self._table.clear()
            self._blobs.clear()
            self._index = new_index(self._dim, self._kind, self._params)
            self._state.clear()

    # ------------------------------------------------------------ save / load
    def save(self, directory: str) -> str:
        """
        Write the map as a new generation of `directory` and commit it atomically.

        Returns the generation's path. A crash at any point leaves the previous commit loadable.
        A directory another process holds is refused (MapLockedError).
        """
        directory = os.path.abspath(directory)
        with self._lock:
            if directory == self._home:
                self._attach(create=True)
                handle, own = self._handle, False
            else:
                handle, own = dir_lock.acquire(directory, create=True), True
            try:
                gen = storage.save(directory, self._snapshot(), _hook)
            except OSError as exc:
                raise MapError(f'saving the map to {directory} failed: {exc}') from exc
            finally:
                if own:
                    handle.release()
            # Blobs of saved keyframes are read from the new generation from now on.
            self._blobs.saved_to(os.path.join(gen, DB_FILE))
            return gen

    def _snapshot(self) -> storage.Snapshot:
        t = self._table
        sessions = int(t.sessions[:t.n].max()) + 1 if t.n else 0
        p = self._params
        return storage.Snapshot(
            self._index, t, self._blobs, self._fingerprint, self._dim, self._next_id,
            max(sessions, self._session + 1),
            {'type': self._kind, 'hnsw_m': p.m, 'hnsw_ef_construction': p.ef_construction,
             'hnsw_ef_search': p.ef_search}, self._state, self._sources)

    @classmethod
    def load(cls, directory: str, fingerprint: str, dim: int, index: Optional[str] = None,
             hnsw_m: Optional[int] = None, hnsw_ef_construction: Optional[int] = None,
             hnsw_ef_search: Optional[int] = None, hnsw_threshold: int = 0,
             verify: bool = True) -> 'PlaceMap':
        """
        Load the committed map of `directory`, hold the directory and open a new session.

        The index type and HNSW parameters are the saved ones unless given: a different `index`
        (or `hnsw_threshold` reached) rebuilds the index; a kept HNSW graph keeps its M and
        efConstruction, only efSearch changes. A map of another model or dimension raises
        MapMismatchError; a damaged or crafted one MapError naming the file; a directory
        another process holds MapLockedError. `verify` checks the files' sha256 first. Nothing
        in `directory` but the lock file is ever written.
        """
        directory = os.path.abspath(directory)
        if index is not None:
            get_kind(index)
        if storage.committed_generation(directory) is None:
            raise MapError(f'no map in {directory} (no {storage.CURRENT_FILE} file)')
        handle = dir_lock.acquire(directory, create=False)
        try:
            loaded = storage.read_checked(directory, str(fingerprint), dim, verify)
            m = cls._from_loaded(loaded, index, hnsw_m, hnsw_ef_construction, hnsw_ef_search,
                                 hnsw_threshold)
        except BaseException:
            handle.release()
            raise
        m._home = directory
        m._hold(handle)
        return m

    @classmethod
    def read_only(cls, directory: str, fingerprint: Optional[str], dim: Optional[int],
                  verify: bool = True) -> 'PlaceMap':
        """
        Read a snapshot of the committed map of `directory`: no lock taken, nothing written.

        For maps another process may hold (prior maps, vpr-map): the generation read is
        checked as by `load`; its blobs stay readable after that process replaces it. The
        snapshot is in memory only (never call `save` on it with its own directory).
        """
        m = cls._from_loaded(storage.read_snapshot(os.path.abspath(directory), fingerprint, dim,
                                                   verify))
        m._blobs.open_now()
        return m

    @classmethod
    def _from_loaded(cls, loaded: storage.Loaded, index: Optional[str] = None, hnsw_m=None,
                     hnsw_ef_construction=None, hnsw_ef_search=None,
                     hnsw_threshold: int = 0) -> 'PlaceMap':
        man = loaded.manifest
        saved = man['index']
        target = index or saved['type']
        if hnsw_threshold and target == 'flat' and man['count'] >= hnsw_threshold:
            target = 'hnsw'
        # A saved HNSW graph that is kept keeps its own M/efConstruction (changing them means
        # a rebuild); the requested ones apply when the index is (re)built here.
        keep = saved['type'] == target and get_kind(target).keeps_build_params
        m = cls(man['dim'], man['fingerprint'], index=saved['type'],
                hnsw_m=saved['hnsw_m'] if keep or not hnsw_m else hnsw_m,
                hnsw_ef_construction=(saved['hnsw_ef_construction']
                                      if keep or not hnsw_ef_construction
                                      else hnsw_ef_construction),
                hnsw_ef_search=hnsw_ef_search or saved['hnsw_ef_search'],
                hnsw_threshold=hnsw_threshold)
        m._adopt(loaded)
        if target != m._kind:
            m._rebuild(target)
        return m

    def _adopt(self, loaded: storage.Loaded) -> None:
        """Take over a loaded generation's index, rows and blobs."""
        rows = loaded.rows
        self._index = loaded.index
        self._kind = loaded.kind
        tune(self._index, self._kind, self._params)
        self._state = loaded.state
        self._state.attach(self._index, self._params)
        self._table.load(rows.ids, rows.stamps, rows.poses, rows.sessions, rows.frames)
        self._blobs.loaded(loaded.db_path, rows.blob_ids)
        self._next_id = loaded.manifest['next_id']
        self._session = loaded.manifest['session_count']
        self._sources = dict(loaded.manifest.get('sessions', {}))

    @classmethod
    def open(cls, directory: str, fingerprint: str, dim: int, load_existing: bool = True,
             create: bool = False, aside: bool = False, **index_kw) -> 'PlaceMap':
        """
        Continue the map in `directory` (a new session) or start a new one (node use).

        `load_existing` and a committed map there: it is loaded. Otherwise a new map starts;
        with `aside` the committed map is first moved to `directory/aside/<UTC>_s<session>/`
        (kept, crash-safe: aside.py; `moved_aside` says where), without it nothing is deleted
        until the first save replaces it. The map holds `directory` (from now when it exists or
        `create` makes it, else from its first add or save); its ids and sessions continue past
        every one saved or reserved there. `index_kw`: the constructor's index arguments.
        """
        if load_existing and directory and map_exists(directory):
            return cls.load(directory, fingerprint, dim, **index_kw)
        m = cls(dim, fingerprint, **index_kw)
        if directory:
            m._home = os.path.abspath(directory)
            m._next_id, m._session = storage.peek_counters(m._home)
            if create or os.path.lexists(directory):
                m._attach(create=create)
            if aside and map_exists(m._home):
                m._attach(create=False)   # held before anything moves
                m.moved_aside = move_aside(m._home)
        return m
