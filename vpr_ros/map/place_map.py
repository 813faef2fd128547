"""
The keyframe map: FAISS descriptors, keyframe records and blobs, saved atomically.

Descriptors are L2-normalised float32, so inner product is cosine similarity. The index is an
`IndexIDMap2` over exact `IndexFlatIP` (default) or `IndexHNSWFlat` (inner product), so keyframe
ids survive reloads and `descriptor(id)` can read a vector back. Records (id, stamp, pose,
session, frame_id) live in memory in columnar numpy arrays (a million keyframes must not cost a
million Python objects); blobs (e.g. serialized ORB features) stay in memory until the first save
and are then read lazily from the saved SQLite file, so they never all sit in RAM.

Ids are monotonic and unique across sessions: each load opens a new session whose ids continue
after the saved `next_id`. `reset()` empties the map but ids keep increasing, so an id published
before the reset never names a different keyframe afterwards.

On disk a map directory holds generations and a pointer::

    dir/CURRENT                    text: the committed generation's name
    dir/gen-000007/index.faiss     the IndexIDMap2
    dir/gen-000007/keyframes.sqlite  tables `keyframes` and `blobs`
    dir/gen-000007/manifest.json   fingerprint, dim, count, ids, sessions, index, file sizes/sha256

A save writes a fresh generation (each file fsynced), then replaces CURRENT atomically (temp
file, fsync, os.replace, fsync of the directory) and only then removes older generations. A crash
at any point leaves CURRENT naming a complete generation; loading reads only what CURRENT names,
so half-written generations are ignored (and removed by the next save). Loading never writes.
"""
import bisect
from dataclasses import dataclass, field
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
from typing import Callable, Iterable, Optional
import urllib.parse

import faiss
import numpy as np

from vpr_ros.core.errors import MapError, MapMismatchError

FORMAT_VERSION = 1
INDEX_FILE = 'index.faiss'
DB_FILE = 'keyframes.sqlite'
MANIFEST_FILE = 'manifest.json'
CURRENT_FILE = 'CURRENT'
LOCK_FILE = '.lock'
INDEX_TYPES = ('flat', 'hnsw')
_GEN_RE = re.compile(r'^gen-(\d{6,})$')

# Called with a stage name between the steps of a save. Tests set it (in a child process) to
# pause a save at a known point and SIGKILL it there; nothing in the package sets it.
_SAVE_HOOK: Optional[Callable[[str], None]] = None


@dataclass(frozen=True, eq=False)
class KeyframeRecord:
    """One keyframe's metadata; pose is [tx, ty, tz, qx, qy, qz, qw], all NaN when unknown."""

    id: int
    stamp_ns: int
    pose: np.ndarray = field(repr=False)
    session: int
    frame_id: str = ''

    @property
    def has_pose(self) -> bool:
        """Whether the pose is known, so callers need not test NaNs themselves."""
        return bool(np.all(np.isfinite(self.pose)))


@dataclass(frozen=True)
class Match:
    """A search result: keyframe id, cosine similarity (higher is better) and its record."""

    id: int
    score: float
    record: KeyframeRecord


def _hook(stage: str) -> None:
    if _SAVE_HOOK is not None:
        _SAVE_HOOK(stage)


def _fsync_path(path: str) -> None:
    """Flush a file or directory to disk, so a rename that follows cannot outrun its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _sqlite_uri(path: str, mode: str) -> str:
    return 'file:' + urllib.parse.quote(os.path.abspath(path)) + '?mode=' + mode


def _inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index)


def _new_index(dim: int, kind: str, m: int, ef_construction: int,
               ef_search: int) -> faiss.IndexIDMap2:
    if kind == 'flat':
        inner = faiss.IndexFlatIP(dim)
    else:
        inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        inner.hnsw.efSearch = ef_search
    return faiss.IndexIDMap2(inner)


def _read_committed_generation(directory: str) -> Optional[str]:
    """Name of the generation CURRENT points to, None when no map was ever committed."""
    current = os.path.join(directory, CURRENT_FILE)
    if not os.path.exists(current):
        return None
    try:
        with open(current, 'r', encoding='ascii') as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f'map pointer {current} is unreadable: {exc}') from exc
    if not _GEN_RE.match(name):
        raise MapError(f'map pointer {current} is corrupt: {name[:60]!r} is not a generation')
    if not os.path.isdir(os.path.join(directory, name)):
        raise MapError(f'map pointer {current} names {name}, which does not exist')
    return name


def map_exists(directory: str) -> bool:
    """Whether a committed map is in `directory` (half-written generations do not count)."""
    return os.path.exists(os.path.join(directory, CURRENT_FILE))


class PlaceMap:
    """
    Keyframe descriptors + records, searchable with temporal exclusion, saved atomically.

    All public methods hold one lock, so the node's worker thread (add/search) and its service
    callbacks (save/reset) can share a map. `hnsw_threshold` > 0 switches a flat index to HNSW
    once the map reaches that many keyframes (a one-off rebuild), because exact search grows
    linearly with the map. HNSW defaults (M=32, efConstruction=64, efSearch=256) are the ones
    bench/bench_map.py measured at 1M x 256 clustered keyframes: ~1.1 ms/query, recall@5 0.996
    of exact; efSearch can be lowered live for smaller maps.
    """

    def __init__(self, dim: int, fingerprint: str, index: str = 'flat', hnsw_m: int = 32,
                 hnsw_ef_construction: int = 64, hnsw_ef_search: int = 256,
                 hnsw_threshold: int = 0) -> None:
        if int(dim) <= 0:
            raise MapError(f'descriptor dimension must be positive, got {dim}')
        if index not in INDEX_TYPES:
            raise MapError(f'index must be one of {INDEX_TYPES}, got {index!r}')
        if hnsw_m < 2 or hnsw_ef_construction < 1 or hnsw_ef_search < 1 or hnsw_threshold < 0:
            raise MapError('HNSW parameters must be positive (M >= 2, ef >= 1, threshold >= 0)')
        self._dim = int(dim)
        self._fingerprint = str(fingerprint)
        self._kind = index
        self._hnsw_m = int(hnsw_m)
        self._ef_construction = int(hnsw_ef_construction)
        self._ef_search = int(hnsw_ef_search)
        self._hnsw_threshold = int(hnsw_threshold)
        self._lock = threading.RLock()
        self._next_id = 0
        self._session = 0
        self._blob_db: Optional[str] = None     # saved SQLite holding blobs of saved keyframes
        self._blob_conn: Optional[sqlite3.Connection] = None
        self._clear()

    # ------------------------------------------------------------------ state
    def _clear(self) -> None:
        self._index = _new_index(self._dim, self._kind, self._hnsw_m, self._ef_construction,
                                 self._ef_search)
        self._n = 0
        cap = 1024
        self._ids = np.zeros(cap, np.int64)
        self._stamps = np.zeros(cap, np.int64)
        self._poses = np.zeros((cap, 7), np.float64)
        self._sessions = np.zeros(cap, np.int32)
        self._frame_ids: list[str] = []
        self._pending_blobs: dict[int, bytes] = {}
        self._blob_ids: set[int] = set()
        self._session_ids: list[int] = []          # this session's ids, in order added
        self._session_stamps: list[int] = []       # this session's stamps, sorted
        self._close_blob_db()
        self._blob_db = None

    def _close_blob_db(self) -> None:
        if self._blob_conn is not None:
            self._blob_conn.close()
            self._blob_conn = None

    def _grow(self, need: int) -> None:
        cap = len(self._ids)
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in ('_ids', '_stamps', '_sessions'):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[:self._n] = old[:self._n]
            setattr(self, name, arr)
        poses = np.zeros((new, 7), np.float64)
        poses[:self._n] = self._poses[:self._n]
        self._poses = poses

    # ------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def session(self) -> int:
        """Session number of this run: 0 for a new map, previous sessions' max + 1 on load."""
        return self._session

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def index_type(self) -> str:
        return self._kind

    @property
    def hnsw_ef_search(self) -> int:
        return self._ef_search

    @hnsw_ef_search.setter
    def hnsw_ef_search(self, value: int) -> None:
        """Set efSearch live, because recall/latency is tuned while running."""
        if int(value) < 1:
            raise MapError(f'hnsw_ef_search must be >= 1, got {value}')
        with self._lock:
            self._ef_search = int(value)
            if self._kind == 'hnsw':
                _inner(self._index).hnsw.efSearch = self._ef_search

    def __len__(self) -> int:
        return self._n

    # ------------------------------------------------------------- validation
    def _check_desc(self, desc: np.ndarray, what: str = 'descriptor') -> np.ndarray:
        """(Q, dim) float32 unit rows; refuse wrong shapes, NaN/inf and zero vectors clearly."""
        x = np.asarray(desc)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise MapError(f'{what} has shape {np.shape(desc)}, the map holds dimension '
                           f'{self._dim}')
        if not np.issubdtype(x.dtype, np.number):
            raise MapError(f'{what} has non-numeric dtype {x.dtype}')
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise MapError(f'{what} has NaN or inf values')
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms < 1e-12):
            raise MapError(f'{what} has zero norm; it cannot be L2-normalised')
        return np.ascontiguousarray(x / norms, dtype=np.float32)

    # --------------------------------------------------------------- add/read
    def add(self, desc: np.ndarray, stamp_ns: int, pose: Optional[np.ndarray] = None,
            frame_id: str = '', blob: Optional[bytes] = None) -> KeyframeRecord:
        """Add a keyframe; returns its record with the new id (re-normalises `desc`)."""
        x = self._check_desc(desc)
        if x.shape[0] != 1:
            raise MapError(f'add takes one descriptor, got {x.shape[0]}')
        if pose is None:
            p = np.full(7, np.nan)
        else:
            p = np.asarray(pose, dtype=np.float64)
            if p.shape != (7,):
                raise MapError(f'pose must be a 7-vector [tx,ty,tz,qx,qy,qz,qw], got shape '
                               f'{p.shape}')
            p = p.copy()
        if blob is not None and not isinstance(blob, (bytes, bytearray, memoryview)):
            raise MapError(f'blob must be bytes, got {type(blob).__name__}')
        stamp = int(stamp_ns)
        with self._lock:
            kid = self._next_id
            self._index.add_with_ids(x, np.array([kid], np.int64))
            self._grow(self._n + 1)
            i = self._n
            self._ids[i] = kid
            self._stamps[i] = stamp
            self._poses[i] = p
            self._sessions[i] = self._session
            self._frame_ids.append(str(frame_id))
            self._n += 1
            self._next_id += 1
            self._session_ids.append(kid)
            bisect.insort(self._session_stamps, stamp)
            if blob is not None:
                self._pending_blobs[kid] = bytes(blob)
                self._blob_ids.add(kid)
            if (self._hnsw_threshold and self._kind == 'flat'
                    and self._n >= self._hnsw_threshold):
                self._rebuild('hnsw')
            return self._record_at(i)

    def add_batch(self, descs: np.ndarray, stamps_ns: Iterable[int],
                  poses: Optional[np.ndarray] = None, frame_ids: Optional[Iterable[str]] = None,
                  blobs: Optional[Iterable[Optional[bytes]]] = None) -> np.ndarray:
        """
        Add N keyframes in one FAISS call; returns their ids (N,).

        Same result as N `add` calls, ~20x faster: for building maps from bags and benchmarks.
        """
        x = self._check_desc(descs, 'descriptors')
        n = x.shape[0]
        stamps = np.asarray(list(stamps_ns), dtype=np.int64).reshape(-1)
        if stamps.shape[0] != n:
            raise MapError(f'{stamps.shape[0]} stamps for {n} descriptors')
        if poses is None:
            p = np.full((n, 7), np.nan)
        else:
            p = np.array(poses, dtype=np.float64)
            if p.shape != (n, 7):
                raise MapError(f'poses must have shape ({n}, 7), got {p.shape}')
        frames = [''] * n if frame_ids is None else [str(f) for f in frame_ids]
        bl = [None] * n if blobs is None else list(blobs)
        if len(frames) != n or len(bl) != n:
            raise MapError(f'frame_ids/blobs must have {n} entries')
        if any(b is not None and not isinstance(b, (bytes, bytearray, memoryview)) for b in bl):
            raise MapError('blobs must be bytes or None')
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._index.add_with_ids(x, ids)
            self._grow(self._n + n)
            sl = slice(self._n, self._n + n)
            self._ids[sl] = ids
            self._stamps[sl] = stamps
            self._poses[sl] = p
            self._sessions[sl] = self._session
            self._frame_ids.extend(frames)
            self._n += n
            self._next_id += n
            self._session_ids.extend(ids.tolist())
            self._session_stamps = sorted(self._session_stamps + stamps.tolist())
            for kid, b in zip(ids.tolist(), bl):
                if b is not None:
                    self._pending_blobs[kid] = bytes(b)
                    self._blob_ids.add(kid)
            if (self._hnsw_threshold and self._kind == 'flat'
                    and self._n >= self._hnsw_threshold):
                self._rebuild('hnsw')
            return ids

    def _record_at(self, i: int) -> KeyframeRecord:
        return KeyframeRecord(id=int(self._ids[i]), stamp_ns=int(self._stamps[i]),
                              pose=self._poses[i].copy(), session=int(self._sessions[i]),
                              frame_id=self._frame_ids[i])

    def _row(self, kid: int) -> int:
        i = int(np.searchsorted(self._ids[:self._n], kid))
        if i >= self._n or self._ids[i] != kid:
            raise KeyError(f'no keyframe with id {kid} in the map')
        return i

    def record(self, kid: int) -> KeyframeRecord:
        """Record of keyframe `kid` (KeyError when absent)."""
        with self._lock:
            return self._record_at(self._row(int(kid)))

    def records(self) -> list[KeyframeRecord]:
        """All records, by increasing id."""
        with self._lock:
            return [self._record_at(i) for i in range(self._n)]

    def ids(self) -> np.ndarray:
        """All ids (increasing), as an array, for callers that need the columns not records."""
        with self._lock:
            return self._ids[:self._n].copy()

    def poses(self) -> np.ndarray:
        """(N, 7) poses in id order (NaN rows when unknown), e.g. for keyframe markers."""
        with self._lock:
            return self._poses[:self._n].copy()

    def descriptor(self, kid: int) -> np.ndarray:
        """Return the stored (normalised) descriptor of `kid`, e.g. to re-rank or re-index."""
        with self._lock:
            self._row(int(kid))
            return self._index.reconstruct(int(kid)).astype(np.float32)

    def blob(self, kid: int) -> Optional[bytes]:
        """Return the blob stored with keyframe `kid` (None when it had none)."""
        kid = int(kid)
        with self._lock:
            self._row(kid)
            if kid not in self._blob_ids:
                return None
            if kid in self._pending_blobs:
                return self._pending_blobs[kid]
            if self._blob_conn is None:
                try:
                    self._blob_conn = sqlite3.connect(_sqlite_uri(self._blob_db, 'ro'), uri=True,
                                                      check_same_thread=False)
                except sqlite3.Error as exc:
                    raise MapError(f'cannot open {self._blob_db}: {exc}') from exc
            try:
                row = self._blob_conn.execute('SELECT data FROM blobs WHERE id = ?',
                                              (kid,)).fetchone()
            except sqlite3.Error as exc:
                raise MapError(f'cannot read blob {kid} from {self._blob_db}: {exc}') from exc
            if row is None:
                raise MapError(f'blob of keyframe {kid} missing from {self._blob_db}')
            return bytes(row[0])

    # ----------------------------------------------------------------- search
    def _fetch_bound(self, query_stamp_ns: Optional[int], excl_ns: int, exclusion_n: int) -> int:
        """Upper bound of excluded keyframes, so one FAISS call over-fetches enough (flat)."""
        bound = min(exclusion_n, len(self._session_ids))
        if query_stamp_ns is not None and excl_ns > 0:
            lo = bisect.bisect_right(self._session_stamps, query_stamp_ns - excl_ns)
            hi = bisect.bisect_left(self._session_stamps, query_stamp_ns + excl_ns)
            bound += max(0, hi - lo)
        return bound

    def _filter(self, dist: np.ndarray, labels: np.ndarray, query_stamp_ns: Optional[int],
                excl_ns: int, exclusion_n: int, k: int) -> list[Match]:
        valid = labels >= 0
        lab = labels[valid]
        sc = dist[valid]
        rows = np.searchsorted(self._ids[:self._n], lab)
        excluded = np.zeros(len(rows), bool)
        cur = self._sessions[rows] == self._session
        if exclusion_n > 0 and self._session_ids:
            first = self._session_ids[-min(exclusion_n, len(self._session_ids))]
            excluded |= cur & (lab >= first)
        if query_stamp_ns is not None and excl_ns > 0:
            # float64: an int64 difference could overflow; ~256 ns precision is plenty here.
            dt = np.abs(self._stamps[rows].astype(np.float64) - float(query_stamp_ns))
            excluded |= cur & (dt < excl_ns)
        keep = np.flatnonzero(~excluded)[:k]
        return [Match(id=int(lab[j]), score=float(sc[j]), record=self._record_at(int(rows[j])))
                for j in keep]

    def _search_rows(self, x: np.ndarray, k: int, stamps: list[Optional[int]], excl_ns: int,
                     exclusion_n: int) -> list[list[Match]]:
        n = self._n
        if n == 0:
            return [[] for _ in range(x.shape[0])]
        bounds = [self._fetch_bound(s, excl_ns, exclusion_n) for s in stamps]
        fetch = min(n, k + max(bounds))
        dist, labels = self._index.search(x, fetch)
        out = []
        for q in range(x.shape[0]):
            res = self._filter(dist[q], labels[q], stamps[q], excl_ns, exclusion_n, k)
            f = fetch
            # HNSW is approximate (and may return fewer than asked): fetch more until k
            # survive or the whole map was asked for.
            while len(res) < k and f < n:
                f = min(n, max(2 * f, k + bounds[q]))
                d1, l1 = self._index.search(x[q:q + 1], f)
                res = self._filter(d1[0], l1[0], stamps[q], excl_ns, exclusion_n, k)
            out.append(res)
        return out

    @staticmethod
    def _check_search_args(k: int, exclusion_s: float, exclusion_n: int) -> int:
        if int(k) < 0 or int(exclusion_n) < 0:
            raise MapError(f'k and exclusion_n must be >= 0, got {k}, {exclusion_n}')
        if not (math.isfinite(exclusion_s) and exclusion_s >= 0):
            raise MapError(f'exclusion_s must be finite and >= 0, got {exclusion_s}')
        return int(round(exclusion_s * 1e9))

    def search(self, desc: np.ndarray, k: int, query_stamp_ns: Optional[int] = None,
               exclusion_s: float = 0.0, exclusion_n: int = 0) -> list[Match]:
        """
        Top-k keyframes by cosine similarity, best first, never recent ones of this session.

        This session's keyframes within `exclusion_s` of `query_stamp_ns` and the last
        `exclusion_n` it added are skipped (they are the robot's own recent past, not loop
        closures); earlier sessions are never excluded. Fewer than k come back only when the
        map has fewer eligible keyframes.
        """
        excl_ns = self._check_search_args(k, exclusion_s, exclusion_n)
        x = self._check_desc(desc)
        if x.shape[0] != 1:
            raise MapError(f'search takes one descriptor, got {x.shape[0]}; use search_batch')
        if k == 0:
            return []
        stamp = None if query_stamp_ns is None else int(query_stamp_ns)
        with self._lock:
            return self._search_rows(x, int(k), [stamp], excl_ns, int(exclusion_n))[0]

    def search_batch(self, descs: np.ndarray, k: int,
                     query_stamps_ns: Optional[Iterable[Optional[int]]] = None,
                     exclusion_s: float = 0.0, exclusion_n: int = 0) -> list[list[Match]]:
        """`search` for (Q, dim) queries in one FAISS call (evaluation, bag processing)."""
        excl_ns = self._check_search_args(k, exclusion_s, exclusion_n)
        x = self._check_desc(descs, 'descriptors')
        if query_stamps_ns is None:
            stamps: list[Optional[int]] = [None] * x.shape[0]
        else:
            stamps = [None if s is None else int(s) for s in query_stamps_ns]
            if len(stamps) != x.shape[0]:
                raise MapError(f'{len(stamps)} query stamps for {x.shape[0]} descriptors')
        if k == 0:
            return [[] for _ in range(x.shape[0])]
        with self._lock:
            return self._search_rows(x, int(k), stamps, excl_ns, int(exclusion_n))

    # ---------------------------------------------------------------- rebuild
    def _all_vectors(self) -> np.ndarray:
        """All stored vectors in id order (the order they were added in)."""
        if self._n == 0:
            return np.zeros((0, self._dim), np.float32)
        inner = _inner(self._index)
        vecs = inner.reconstruct_n(0, self._n)
        order = faiss.vector_to_array(self._index.id_map)
        if not np.array_equal(order, self._ids[:self._n]):
            vecs = vecs[np.argsort(order)]
        return vecs

    def _rebuild(self, kind: str) -> None:
        """Move the vectors into a new index of another type (config change or threshold)."""
        vecs = self._all_vectors()
        index = _new_index(self._dim, kind, self._hnsw_m, self._ef_construction,
                           self._ef_search)
        if self._n:
            index.add_with_ids(vecs, self._ids[:self._n].copy())
        self._index = index
        self._kind = kind

    def reset(self) -> None:
        """Empty the map (memory only until the next save); ids keep increasing, session stays."""
        with self._lock:
            self._clear()

    # ------------------------------------------------------------------- save
    def save(self, directory: str) -> str:
        """
        Write the map as a new generation of `directory` and commit it atomically.

        Returns the generation's path. A crash at any point leaves the previous commit loadable.
        """
        directory = os.path.abspath(directory)
        with self._lock:
            try:
                os.makedirs(directory, exist_ok=True)
                lock_fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT,
                                  0o644)
            except OSError as exc:
                raise MapError(f'cannot create map directory {directory}: {exc}') from exc
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                return self._save_locked(directory)
            except OSError as exc:
                raise MapError(f'saving the map to {directory} failed: {exc}') from exc
            finally:
                os.close(lock_fd)

    def _save_locked(self, directory: str) -> str:
        numbers = [int(m.group(1)) for m in map(_GEN_RE.match, os.listdir(directory)) if m]
        gen_name = f'gen-{max(numbers, default=0) + 1:06d}'
        gen = os.path.join(directory, gen_name)
        os.mkdir(gen)
        try:
            self._write_generation(directory, gen, gen_name)
        except BaseException:
            # Not committed: drop the partial generation (a crash leaves it for the next save).
            shutil.rmtree(gen, ignore_errors=True)
            raise
        # Blobs of saved keyframes are read from the new generation from now on.
        self._close_blob_db()
        self._blob_db = os.path.join(gen, DB_FILE)
        self._pending_blobs = {}
        for name in os.listdir(directory):
            if _GEN_RE.match(name) and name != gen_name:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        return gen

    def _write_generation(self, directory: str, gen: str, gen_name: str) -> None:
        _fsync_path(directory)
        _hook('gen_created')

        index_path = os.path.join(gen, INDEX_FILE)
        faiss.write_index(self._index, index_path)
        _fsync_path(index_path)
        _hook('index_written')

        db_path = os.path.join(gen, DB_FILE)
        self._write_db(db_path)
        _fsync_path(db_path)
        _hook('db_written')

        sessions = int(self._sessions[:self._n].max()) + 1 if self._n else 0
        manifest = {
            'format_version': FORMAT_VERSION,
            'fingerprint': self._fingerprint,
            'dim': self._dim,
            'count': self._n,
            'next_id': self._next_id,
            'session_count': max(sessions, self._session + 1),
            'index': {'type': self._kind, 'hnsw_m': self._hnsw_m,
                      'hnsw_ef_construction': self._ef_construction,
                      'hnsw_ef_search': self._ef_search},
            'generation': gen_name,
            'saved_unix_s': time.time(),
            'files': {name: {'size': os.path.getsize(os.path.join(gen, name)),
                             'sha256': _sha256(os.path.join(gen, name))}
                      for name in (INDEX_FILE, DB_FILE)},
        }
        man_path = os.path.join(gen, MANIFEST_FILE)
        with open(man_path, 'w', encoding='utf-8') as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(gen)
        _hook('manifest_written')

        current = os.path.join(directory, CURRENT_FILE)
        tmp = current + '.tmp'
        with open(tmp, 'w', encoding='ascii') as f:
            f.write(gen_name + '\n')
            f.flush()
            os.fsync(f.fileno())
        _hook('current_tmp_written')
        os.replace(tmp, current)
        _fsync_path(directory)
        _hook('committed')

    def _write_db(self, path: str) -> None:
        conn = sqlite3.connect(_sqlite_uri(path, 'rwc'), uri=True)
        try:
            # A new file in a new generation: the generation scheme gives crash safety, so
            # SQLite's own journal would only slow the bulk insert down.
            conn.execute('PRAGMA journal_mode = OFF')
            conn.execute('PRAGMA synchronous = OFF')
            conn.execute('CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp_ns INTEGER NOT '
                         'NULL, tx REAL, ty REAL, tz REAL, qx REAL, qy REAL, qz REAL, qw REAL, '
                         'session INTEGER NOT NULL, frame_id TEXT NOT NULL)')
            conn.execute('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)')
            n = self._n
            # SQLite stores NaN as NULL; NULL reads back as NaN ("pose unknown").
            poses = self._poses[:n].astype(object)
            poses[~np.isfinite(self._poses[:n])] = None
            rows = zip(self._ids[:n].tolist(), self._stamps[:n].tolist(), *poses.T.tolist(),
                       self._sessions[:n].tolist(), self._frame_ids)
            conn.executemany('INSERT INTO keyframes VALUES (?,?,?,?,?,?,?,?,?,?,?)', rows)
            if self._blob_db is not None:
                conn.execute('ATTACH DATABASE ? AS src', (_sqlite_uri(self._blob_db, 'ro'),))
                conn.execute('INSERT INTO blobs SELECT id, data FROM src.blobs')
                conn.commit()
                conn.execute('DETACH DATABASE src')
            conn.executemany('INSERT INTO blobs VALUES (?, ?)', self._pending_blobs.items())
            conn.commit()
        except sqlite3.Error as exc:
            raise MapError(f'cannot write {path}: {exc}') from exc
        finally:
            conn.close()

    # ------------------------------------------------------------------- load
    @classmethod
    def load(cls, directory: str, fingerprint: str, dim: int, index: Optional[str] = None,
             hnsw_m: Optional[int] = None, hnsw_ef_construction: Optional[int] = None,
             hnsw_ef_search: Optional[int] = None, hnsw_threshold: int = 0,
             verify: bool = True) -> 'PlaceMap':
        """
        Load the committed map of `directory` and open a new session on it.

        The index type and HNSW parameters are the saved ones unless given: a different `index`
        (or `hnsw_threshold` reached) rebuilds the index; a kept HNSW graph keeps its M and
        efConstruction, only efSearch changes. A map of another model or dimension raises
        MapMismatchError; a damaged one MapError naming the file. `verify` checks the files'
        sha256 against the manifest first. Nothing in `directory` is ever written.
        """
        directory = os.path.abspath(directory)
        gen_name = _read_committed_generation(directory)
        if gen_name is None:
            raise MapError(f'no map in {directory} (no {CURRENT_FILE} file)')
        gen = os.path.join(directory, gen_name)
        man = _read_manifest(os.path.join(gen, MANIFEST_FILE))
        if man['fingerprint'] != str(fingerprint):
            raise MapMismatchError(
                f'map {directory} was made with model fingerprint {man["fingerprint"]}, but the '
                f'encoder has fingerprint {fingerprint}; use the model it was built with, '
                f'another map directory, or start a new map (it is left untouched)')
        if int(man['dim']) != int(dim):
            raise MapMismatchError(
                f'map {directory} holds descriptors of dimension {man["dim"]}, but the encoder '
                f'produces dimension {dim}; the map is left untouched')
        for name, info in man['files'].items():
            path = os.path.join(gen, name)
            if not os.path.isfile(path):
                raise MapError(f'map file {path} is missing')
            if os.path.getsize(path) != info['size']:
                raise MapError(f'map file {path} has {os.path.getsize(path)} bytes, the manifest '
                               f'says {info["size"]}: truncated or corrupt')
            if verify and _sha256(path) != info['sha256']:
                raise MapError(f'map file {path} does not match its sha256 in the manifest: '
                               'corrupt')
        saved = man['index']
        if index is not None and index not in INDEX_TYPES:
            raise MapError(f'index must be one of {INDEX_TYPES}, got {index!r}')
        target = index or saved['type']
        if hnsw_threshold and target == 'flat' and man['count'] >= hnsw_threshold:
            target = 'hnsw'
        # A saved HNSW graph that is kept keeps its own M/efConstruction (changing them means
        # a rebuild); the requested ones apply when the index is (re)built here.
        keep_graph = saved['type'] == 'hnsw' and target == 'hnsw'
        m = cls(int(man['dim']), man['fingerprint'], index=saved['type'],
                hnsw_m=saved['hnsw_m'] if keep_graph or not hnsw_m else hnsw_m,
                hnsw_ef_construction=(saved['hnsw_ef_construction']
                                      if keep_graph or not hnsw_ef_construction
                                      else hnsw_ef_construction),
                hnsw_ef_search=hnsw_ef_search or saved['hnsw_ef_search'],
                hnsw_threshold=hnsw_threshold)
        m._load_files(gen, man)
        if target != m._kind:
            m._rebuild(target)
        return m

    def _load_files(self, gen: str, man: dict) -> None:
        index_path = os.path.join(gen, INDEX_FILE)
        try:
            idx = faiss.read_index(index_path)
        except RuntimeError as exc:
            raise MapError(f'map index {index_path} is corrupt: '
                           f'{str(exc).strip().splitlines()[-1][:200]}') from exc
        # read_index already returns the concrete class; downcast_index here would make a second
        # owner of the C++ object and free it under our feet.
        if not isinstance(idx, faiss.IndexIDMap2) or idx.d != self._dim:
            raise MapError(f'map index {index_path} is not an IndexIDMap2 of dimension '
                           f'{self._dim}')
        inner = _inner(idx)
        kind = 'hnsw' if isinstance(inner, faiss.IndexHNSWFlat) else 'flat'
        if kind != man['index']['type'] or idx.ntotal != man['count']:
            raise MapError(f'map index {index_path} ({kind}, {idx.ntotal} vectors) disagrees '
                           f'with its manifest ({man["index"]["type"]}, {man["count"]})')
        if kind == 'hnsw':
            inner.hnsw.efSearch = self._ef_search
        db_path = os.path.join(gen, DB_FILE)
        try:
            conn = sqlite3.connect(_sqlite_uri(db_path, 'ro'), uri=True)
            try:
                rows = conn.execute('SELECT id, stamp_ns, tx, ty, tz, qx, qy, qz, qw, session, '
                                    'frame_id FROM keyframes ORDER BY id').fetchall()
                blob_ids = [r[0] for r in conn.execute('SELECT id FROM blobs')]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise MapError(f'map database {db_path} is corrupt: {exc}') from exc
        n = len(rows)
        ids = np.array([r[0] for r in rows], np.int64)
        if n != idx.ntotal or not np.array_equal(np.sort(faiss.vector_to_array(idx.id_map)),
                                                 ids):
            raise MapError(f'map database {db_path} ({n} keyframes) and index {index_path} '
                           f'({idx.ntotal}) hold different keyframes')
        if n and ids[-1] >= man['next_id']:
            raise MapError(f'map database {db_path} has id {ids[-1]} >= next_id '
                           f'{man["next_id"]} of the manifest')
        self._index = idx
        self._kind = kind
        self._grow(n)
        self._n = n
        self._ids[:n] = ids
        self._stamps[:n] = [r[1] for r in rows]
        self._poses[:n] = np.array([r[2:9] for r in rows], dtype=np.float64).reshape(n, 7)
        self._sessions[:n] = [r[9] for r in rows]
        frames: dict[str, str] = {}
        self._frame_ids = [frames.setdefault(r[10], r[10]) for r in rows]
        self._blob_ids = set(blob_ids)
        self._blob_db = db_path
        self._next_id = int(man['next_id'])
        self._session = int(man['session_count'])

    @classmethod
    def open(cls, directory: str, fingerprint: str, dim: int, load_existing: bool,
             **index_kw) -> 'PlaceMap':
        """
        Load the map in `directory` when asked and present, else start a new map (node use).

        A new map over an existing one deletes nothing: the first save replaces it atomically.
        `index_kw` are the constructor's index arguments (also applied on load).
        """
        if load_existing and directory and map_exists(directory):
            return cls.load(directory, fingerprint, dim, **index_kw)
        return cls(dim, fingerprint, **index_kw)


_MANIFEST_KEYS = {'format_version': int, 'fingerprint': str, 'dim': int, 'count': int,
                  'next_id': int, 'session_count': int, 'index': dict, 'files': dict}


def _read_manifest(path: str) -> dict:
    try:
        with open(path, 'r', encoding='utf-8') as f:
            man = json.load(f)
    except (OSError, ValueError) as exc:
        raise MapError(f'map manifest {path} is unreadable: {exc}') from exc
    if not isinstance(man, dict):
        raise MapError(f'map manifest {path} is not a JSON object')
    for key, typ in _MANIFEST_KEYS.items():
        if not isinstance(man.get(key), typ):
            raise MapError(f'map manifest {path}: field {key!r} missing or not {typ.__name__}')
    if man['format_version'] != FORMAT_VERSION:
        raise MapError(f'map manifest {path} has format version {man["format_version"]}; this '
                       f'vpr_ros reads version {FORMAT_VERSION}')
    idx = man['index']
    if idx.get('type') not in INDEX_TYPES or not all(
            isinstance(idx.get(k), int) for k in ('hnsw_m', 'hnsw_ef_construction',
                                                  'hnsw_ef_search')):
        raise MapError(f"map manifest {path}: field 'index' is malformed")
    for name in (INDEX_FILE, DB_FILE):
        info = man['files'].get(name)
        if not (isinstance(info, dict) and isinstance(info.get('size'), int)
                and isinstance(info.get('sha256'), str)):
            raise MapError(f'map manifest {path}: no size/sha256 for {name}')
    return man
