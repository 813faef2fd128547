"""
The generation manifest: what a saved map holds, checked field by field before it is trusted.

A hostile or damaged manifest (wrong types, absurd counts, deep nesting, paths in `files`)
gives a MapError naming the file, never a traceback or a map that then fails every frame.
"""
import json
import os
import re
import time

from vpr_ros.core.errors import MapError
from vpr_ros.map.id_pool import MAX_ID, MAX_SESSIONS
from vpr_ros.map.index_file import open_nofollow
from vpr_ros.map.index_kinds import INDEX_KINDS

FORMAT_VERSION = 1
INDEX_FILE = 'index.faiss'
DB_FILE = 'keyframes.sqlite'
MANIFEST_FILE = 'manifest.json'
DATA_FILES = (INDEX_FILE, DB_FILE)
MAX_MANIFEST_BYTES = 1 << 20
MAX_DIM = 1 << 16
MAX_FILE_BYTES = 1 << 50
_PLAIN_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$')
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
# field: (lowest, highest) for integers
_INT_FIELDS = {'format_version': (FORMAT_VERSION, FORMAT_VERSION), 'dim': (1, MAX_DIM),
               'count': (0, MAX_ID), 'next_id': (0, MAX_ID),
               'session_count': (0, MAX_SESSIONS)}
_INDEX_FIELDS = {'hnsw_m': (2, 4096), 'hnsw_ef_construction': (1, 1 << 20),
                 'hnsw_ef_search': (1, 1 << 20)}


def build_manifest(fingerprint: str, dim: int, count: int, next_id: int, session_count: int,
                   index: dict, generation: str, files: dict, sessions: dict) -> dict:
    """Build the manifest of a generation being written (`sessions`: see check_sessions)."""
    man = {'format_version': FORMAT_VERSION, 'fingerprint': fingerprint, 'dim': dim,
           'count': count, 'next_id': next_id, 'session_count': session_count,
           'index': index, 'generation': generation, 'saved_unix_s': time.time(),
           'files': files}
    if sessions:
        man['sessions'] = sessions
    return man


def data_files(kind: str) -> tuple[str, ...]:
    """Name the data files of a generation with an index of `kind` (plus its state's files)."""
    return DATA_FILES + INDEX_KINDS[kind].files


def _int_in(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def read_manifest(path: str) -> dict:
    """Read and check a manifest; MapError naming `path` for anything out of place."""
    fd = open_nofollow(path, os.O_RDONLY)
    try:
        with os.fdopen(fd, 'rb') as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise MapError(f'map manifest {path} is unreadable: {exc}') from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise MapError(f'map manifest {path} is unreadable: over {MAX_MANIFEST_BYTES} bytes')
    try:
        man = json.loads(data.decode('utf-8'))
    except (ValueError, RecursionError) as exc:
        raise MapError(f'map manifest {path} is unreadable: {str(exc)[:200]}') from None
    check_manifest(man, path)
    return man


def check_manifest(man, path: str) -> None:
    """Types, bounds and consistency of every field the loader uses."""
    if not isinstance(man, dict):
        raise MapError(f'map manifest {path} is not a JSON object')
    if man.get('format_version') != FORMAT_VERSION or type(man.get('format_version')) is not int:
        raise MapError(f'map manifest {path} has format version '
                       f'{str(man.get("format_version"))[:40]}; this vpr_ros reads version '
                       f'{FORMAT_VERSION}')
    for key, (lo, hi) in _INT_FIELDS.items():
        if not _int_in(man.get(key), lo, hi):
            raise MapError(f'map manifest {path}: field {key!r} missing or not an integer in '
                           f'[{lo}, {hi}]')
    if not isinstance(man.get('fingerprint'), str) or len(man['fingerprint']) > 256:
        raise MapError(f"map manifest {path}: field 'fingerprint' missing or not a string")
    if man['count'] > man['next_id']:
        raise MapError(f'map manifest {path}: count {man["count"]} > next_id {man["next_id"]}')
    idx = man.get('index')
    if not isinstance(idx, dict) or idx.get('type') not in tuple(INDEX_KINDS) or not all(
            _int_in(idx.get(k), lo, hi) for k, (lo, hi) in _INDEX_FIELDS.items()):
        raise MapError(f"map manifest {path}: field 'index' is malformed")
    _check_files(man.get('files'), path, data_files(idx['type']))
    check_sessions(man.get('sessions', {}), man['session_count'], path)


def check_sessions(sessions, session_count: int, path: str) -> None:
    """
    Check the optional field 'sessions': where a merged map's sessions came from (vpr-map).

    `{"3": {"source": "robot2", "session": 0}}`: session 3 of this map was session 0 of the map
    named robot2. Absent in maps that were never merged.
    """
    if not isinstance(sessions, dict) or len(sessions) > session_count:
        raise MapError(f"map manifest {path}: field 'sessions' is malformed")
    for key, info in sessions.items():
        if not (key.isdigit() and len(key) < 12 and int(key) < session_count
                and isinstance(info, dict) and sorted(info) == ['session', 'source']
                and isinstance(info['source'], str) and len(info['source']) <= 256
                and _int_in(info['session'], 0, MAX_SESSIONS)):
            raise MapError(f"map manifest {path}: field 'sessions' has a malformed entry "
                           f'{str(key)[:20]!r}')


def _check_files(files, path: str, expected: tuple[str, ...]) -> None:
    if not isinstance(files, dict):
        raise MapError(f"map manifest {path}: field 'files' missing or not an object")
    for name, info in files.items():
        if not _PLAIN_NAME.match(name):
            raise MapError(f'map manifest {path}: file {name[:80]!r} is not a plain name '
                           'inside the generation')
        if not (isinstance(info, dict) and _int_in(info.get('size'), 0, MAX_FILE_BYTES)
                and isinstance(info.get('sha256'), str) and _SHA256.match(info['sha256'])):
            raise MapError(f'map manifest {path}: no size/sha256 for {name}')
    if sorted(files) != sorted(expected):
        raise MapError(f'map manifest {path} lists files {sorted(files)[:5]}, expected '
                       f'{list(expected)}')
