"""
Crash-safe storage of a map directory: generations, manifest, CURRENT pointer, loading checks.

On disk a map directory holds generations and a pointer::

    dir/CURRENT                      text: the committed generation's name
    dir/.lock                        the holder's pid; flock'ed while a map holds the directory
    dir/IDS                          ids and sessions reserved (id_pool.py)
    dir/gen-000007/index.faiss       the IndexIDMap2
    dir/gen-000007/keyframes.sqlite  tables `keyframes` and `blobs`
    dir/gen-000007/manifest.json     fingerprint, dim, count, ids, sessions, index, sha256s

A save writes a fresh generation (each file created with O_EXCL, fsynced), then replaces
CURRENT atomically (core.atomic_io: unique temp file, fsync, rename, fsync of the directory)
and only then removes older generations. A crash at any point leaves CURRENT naming a complete
generation; loading reads only what CURRENT names, so half-written generations are ignored (and
removed by the next save). Loading never writes. Nothing is written outside the directory: new
files are created O_EXCL|O_NOFOLLOW, renames replace links rather than follow them, and on load
any link where a pointer, generation or file should be is refused.
"""
import json
import os
import re
import shutil
import stat
import time
from typing import Callable, NamedTuple, Optional

import faiss
import numpy as np

from vpr_ros.core.atomic_io import fsync_dir, sha256_file, write_atomic
from vpr_ros.core.errors import MapError, MapMismatchError
from vpr_ros.map import database
from vpr_ros.map.blobs import BlobStore
from vpr_ros.map.index_file import open_nofollow, read_index_file, write_index_file
from vpr_ros.map.index_kinds import get_kind, IndexParams, inner_index, kind_of, KindState
from vpr_ros.map.manifest import (
    build_manifest,
    data_files,
    DB_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    read_manifest,
)
from vpr_ros.map.records import KeyframeTable

CURRENT_FILE = 'CURRENT'
GEN_RE = re.compile(r'^gen-(\d{6,})$')
_TEMP_RE = re.compile(r'^\.(CURRENT|IDS)\..*\.tmp$')


class Snapshot(NamedTuple):
    """What a save writes: the map's state, read under the map's lock."""

    index: faiss.Index
    table: KeyframeTable
    blobs: BlobStore
    fingerprint: str
    dim: int
    next_id: int
    session_count: int
    index_info: dict
    state: KindState
    sessions: dict = {}   # session number (str) -> where it came from (merged maps)


class Loaded(NamedTuple):
    """A checked generation: manifest, index and rows."""

    manifest: dict
    index: faiss.Index
    kind: str
    rows: database.SavedRows
    db_path: str
    state: KindState


def map_exists(directory: str) -> bool:
    """Whether a committed map is in `directory` (half-written generations do not count)."""
    return os.path.lexists(os.path.join(directory, CURRENT_FILE))


def _is_link(path: str) -> bool:
    return stat.S_ISLNK(os.lstat(path).st_mode)


def committed_generation(directory: str) -> Optional[str]:
    """Path of the generation CURRENT points to, None when no map was ever committed."""
    current = os.path.join(directory, CURRENT_FILE)
    if not os.path.lexists(current):
        return None
    try:
        fd = open_nofollow(current, os.O_RDONLY)
        try:
            name = os.read(fd, 64).decode('ascii').strip()
        finally:
            os.close(fd)
    except (OSError, UnicodeDecodeError, MapError) as exc:
        raise MapError(f'map pointer {current} is unreadable: {exc}') from exc
    if not GEN_RE.match(name):
        raise MapError(f'map pointer {current} is corrupt: {name[:60]!r} is not a generation')
    gen = os.path.join(directory, name)
    if not os.path.lexists(gen):
        raise MapError(f'map pointer {current} names {name}, which does not exist')
    if _is_link(gen) or not os.path.isdir(gen):
        raise MapError(f'map generation {gen} is a symbolic link or not a directory; the map '
                       'never follows links out of its directory')
    return gen


def peek_counters(directory: str) -> tuple[int, int]:
    """(next_id, session_count) of the committed map, (0, 0) when none or unreadable."""
    try:
        gen = committed_generation(directory)
        if gen is None:
            return 0, 0
        man = read_manifest(os.path.join(gen, MANIFEST_FILE))
    except MapError:
        return 0, 0
    return man['next_id'], man['session_count']


# ------------------------------------------------------------------------- save
def save(directory: str, snap: Snapshot, hook: Callable[[str], None]) -> str:
    """Write `snap` as a new generation of `directory` (locked by the caller) and commit it."""
    try:
        numbers = [int(m.group(1)) for m in map(GEN_RE.match, os.listdir(directory)) if m]
        gen_name = f'gen-{max(numbers, default=0) + 1:06d}'
        gen = os.path.join(directory, gen_name)
        os.mkdir(gen, 0o755)
    except OSError as exc:
        raise MapError(f'cannot create a generation in {directory}: {exc}') from exc
    try:
        _write_generation(directory, gen, gen_name, snap, hook)
    except BaseException:
        # Not committed: drop the partial generation (a crash leaves it for the next save).
        shutil.rmtree(gen, ignore_errors=True)
        raise
    _remove_old(directory, gen_name)
    return gen


def _remove_old(directory: str, keep: str) -> None:
    """Remove older generations and stale temp files; links are unlinked, never followed."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if (GEN_RE.match(name) and name != keep) or _TEMP_RE.match(name):
            try:
                if _TEMP_RE.match(name) and time.time() - os.lstat(path).st_mtime < 60:
                    continue  # maybe being written right now (ids reserved by another map)
                if _is_link(path) or not os.path.isdir(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path)  # fd-based: never follows links inside
            except OSError:
                pass


def _write_generation(directory: str, gen: str, gen_name: str, snap: Snapshot,
                      hook: Callable[[str], None]) -> None:
    fsync_dir(directory)
    hook('gen_created')
    write_index_file(snap.index, os.path.join(gen, INDEX_FILE))
    kind = snap.index_info['type']
    snap.state.write(gen, snap.dim, snap.table.n)   # the kind's own files, if any
    hook('index_written')
    database.write_database(os.path.join(gen, DB_FILE), snap.table, snap.blobs)
    hook('db_written')
    files = {name: {'size': os.path.getsize(os.path.join(gen, name)),
                    'sha256': sha256_file(os.path.join(gen, name))}
             for name in data_files(kind)}
    man = build_manifest(snap.fingerprint, snap.dim, snap.table.n, snap.next_id,
                         snap.session_count, snap.index_info, gen_name, files, snap.sessions)
    fd = open_nofollow(os.path.join(gen, MANIFEST_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump(man, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(gen)
    hook('manifest_written')
    hook('current_tmp_written')
    # Unique temp name (O_EXCL) and a rename that replaces a planted link instead of following.
    write_atomic(os.path.join(directory, CURRENT_FILE), (gen_name + '\n').encode('ascii'))
    hook('committed')


# ------------------------------------------------------------------------- load
def read_committed(directory: str) -> tuple[str, dict]:
    """Return the committed generation's path and checked manifest (MapError: none)."""
    gen = committed_generation(directory)
    if gen is None:
        raise MapError(f'no map in {directory} (no {CURRENT_FILE} file)')
    return gen, read_manifest(os.path.join(gen, MANIFEST_FILE))


def read_checked(directory: str, fingerprint: Optional[str], dim: Optional[int],
                 verify: bool = True) -> Loaded:
    """
    Read the committed generation of `directory` after every check (model, files, hashes).

    A map of another model or dimension raises MapMismatchError naming the directory (it is
    left untouched; None: any model, for tools that report or copy maps); anything damaged or
    crafted a MapError naming the file. Writes nothing.
    """
    gen, man = read_committed(directory)
    if fingerprint is not None and man['fingerprint'] != fingerprint:
        raise MapMismatchError(
            f'map {directory} was made with model fingerprint {man["fingerprint"]}, but the '
            f'encoder has fingerprint {fingerprint}; use the model it was built with, '
            f'another map directory, or start a new map (it is left untouched)')
    if dim is not None and man['dim'] != int(dim):
        raise MapMismatchError(
            f'map {directory} holds descriptors of dimension {man["dim"]}, but the encoder '
            f'produces dimension {dim}; the map is left untouched')
    check_files(gen, man, verify)
    return load_generation(gen, man)


def read_snapshot(directory: str, fingerprint: Optional[str], dim: Optional[int],
                  verify: bool = True, tries: int = 3) -> Loaded:
    """
    `read_checked` without the directory's lock, for maps another process may be saving.

    That process removes the generation it replaced after each save, so a read that fails
    while CURRENT moved on is tried again on the new generation. Nothing is written.
    """
    for attempt in range(tries):
        before = committed_generation(directory)
        try:
            return read_checked(directory, fingerprint, dim, verify)
        except MapMismatchError:
            raise
        except MapError:
            if attempt + 1 == tries or committed_generation(directory) == before:
                raise
    raise AssertionError('unreachable')


def check_files(gen: str, man: dict, verify: bool) -> None:
    """Each data file a regular file (no link) of the manifest's size (and sha256)."""
    for name, info in man['files'].items():
        path = os.path.join(gen, name)
        if not os.path.lexists(path):
            raise MapError(f'map file {path} is missing')
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise MapError(f'map file {path} is a symbolic link; the map never follows links '
                           'out of its directory')
        if not stat.S_ISREG(st.st_mode):
            raise MapError(f'map file {path} is not a regular file')
        if st.st_size != info['size']:
            raise MapError(f'map file {path} has {st.st_size} bytes, the manifest says '
                           f'{info["size"]}: truncated or corrupt')
        if verify and sha256_file(path) != info['sha256']:
            raise MapError(f'map file {path} does not match its sha256 in the manifest: '
                           'corrupt')


def load_generation(gen: str, man: dict) -> Loaded:
    """Read a checked generation's index and rows, and check they agree."""
    index_path = os.path.join(gen, INDEX_FILE)
    kind = get_kind(man['index']['type'])
    idx = read_index_file(index_path, man['dim'], man['count'], kind.check_body, kind.tag)
    # read_index already returns the concrete class; downcast_index here would make a second
    # owner of the C++ object and free it under our feet.
    if not isinstance(idx, faiss.IndexIDMap2) or idx.d != man['dim']:
        raise MapError(f'map index {index_path} is not an IndexIDMap2 of dimension '
                       f'{man["dim"]}')
    got = kind_of(idx)
    if not kind.is_kind(inner_index(idx)) or idx.ntotal != man['count']:
        raise MapError(f'map index {index_path} ({got}, {idx.ntotal} vectors) disagrees '
                       f'with its manifest ({kind.name}, {man["count"]})')
    db_path = os.path.join(gen, DB_FILE)
    database.check_is_database(db_path)
    rows = database.read_database(db_path, man['count'], man['next_id'],
                                  man['session_count'])
    if len(rows.ids) != idx.ntotal or not np.array_equal(
            np.sort(faiss.vector_to_array(idx.id_map)), rows.ids):
        raise MapError(f'map database {db_path} ({len(rows.ids)} keyframes) and index '
                       f'{index_path} ({idx.ntotal}) hold different keyframes')
    info = man['index']
    params = IndexParams(info['hnsw_m'], info['hnsw_ef_construction'], info['hnsw_ef_search'])
    state = kind.state.read(gen, man['dim'], man['count'], params)
    return Loaded(man, idx, kind.name, rows, db_path, state)
