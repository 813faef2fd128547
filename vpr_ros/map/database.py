"""
The keyframe database of a generation (SQLite): tables `keyframes` and `blobs`.

SQLite columns are dynamically typed, so reading checks every value's type and range in SQL
first: text in a numeric column or an out-of-range session gives a MapError naming the file.
"""
import os
import sqlite3
from typing import NamedTuple

import numpy as np

from vpr_ros.core.errors import MapError
from vpr_ros.map.blobs import BlobStore, sqlite_uri
from vpr_ros.map.index_file import open_nofollow
from vpr_ros.map.records import KeyframeTable

_NUM = "IN ('real', 'integer', 'null')"
_BAD_ROWS = (
    "SELECT COUNT(*) FROM keyframes WHERE typeof(id) != 'integer' OR id < 0 OR id >= :next "
    "OR typeof(stamp_ns) != 'integer' OR typeof(session) != 'integer' OR session < 0 "
    "OR session >= :sessions OR typeof(frame_id) != 'text' OR length(frame_id) > 1024 OR "
    + ' OR '.join(f'typeof({c}) NOT {_NUM}' for c in ('tx', 'ty', 'tz', 'qx', 'qy', 'qz', 'qw')))
_BAD_BLOBS = ("SELECT COUNT(*) FROM blobs WHERE typeof(id) != 'integer' OR typeof(data) != "
              "'blob' OR id NOT IN (SELECT id FROM keyframes)")


class SavedRows(NamedTuple):
    """The keyframes of a saved generation, in id order, and which of them have blobs."""

    ids: np.ndarray
    stamps: np.ndarray
    poses: np.ndarray
    sessions: np.ndarray
    frames: list
    blob_ids: list


def write_database(path: str, table: KeyframeTable, blobs: BlobStore) -> None:
    """Write a new database file (created O_EXCL, never through a link) and fsync it."""
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        conn = sqlite3.connect(sqlite_uri(path, 'rw'), uri=True)
        try:
            # A new file in a new generation: the generation scheme gives crash safety, so
            # SQLite's own journal would only slow the bulk insert down.
            conn.execute('PRAGMA journal_mode = OFF')
            conn.execute('PRAGMA synchronous = OFF')
            conn.execute('CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp_ns INTEGER NOT '
                         'NULL, tx REAL, ty REAL, tz REAL, qx REAL, qy REAL, qz REAL, qw REAL, '
                         'session INTEGER NOT NULL, frame_id TEXT NOT NULL)')
            conn.execute('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)')
            n = table.n
            # SQLite stores NaN as NULL; NULL reads back as NaN ("pose unknown").
            poses = table.poses[:n].astype(object)
            poses[~np.isfinite(table.poses[:n])] = None
            rows = zip(table.ids[:n].tolist(), table.stamps[:n].tolist(), *poses.T.tolist(),
                       table.sessions[:n].tolist(), table.frame_ids)
            conn.executemany('INSERT INTO keyframes VALUES (?,?,?,?,?,?,?,?,?,?,?)', rows)
            blobs.copy_into(conn)
            conn.commit()
        except sqlite3.Error as exc:
            raise MapError(f'cannot write {path}: {exc}') from exc
        finally:
            conn.close()
        os.fsync(fd)
    finally:
        os.close(fd)


def read_database(path: str, count: int, next_id: int, session_count: int) -> SavedRows:
    """Read and check every keyframe row; MapError naming `path` on anything out of place."""
    try:
        conn = sqlite3.connect(sqlite_uri(path, 'ro'), uri=True)
        try:
            n = conn.execute('SELECT COUNT(*) FROM keyframes').fetchone()[0]
            if n != count:
                raise MapError(f'map database {path} holds {n} keyframes, the manifest says '
                               f'{count}')
            bad = conn.execute(_BAD_ROWS, {'next': next_id, 'sessions': session_count}
                               ).fetchone()[0]
            bad_blobs = conn.execute(_BAD_BLOBS).fetchone()[0]
            if bad or bad_blobs:
                raise MapError(f'map database {path} has {bad} keyframe rows and {bad_blobs} '
                               'blob rows with values of the wrong type or out of range '
                               f'(ids < {next_id}, sessions < {session_count})')
            rows = conn.execute('SELECT id, stamp_ns, tx, ty, tz, qx, qy, qz, qw, session, '
                                'frame_id FROM keyframes ORDER BY id').fetchall()
            blob_ids = [r[0] for r in conn.execute('SELECT id FROM blobs')]
        finally:
            conn.close()
    except (sqlite3.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise MapError(f'map database {path} is corrupt: {str(exc)[:200]}') from exc
    frames: dict[str, str] = {}
    return SavedRows(
        ids=np.array([r[0] for r in rows], np.int64).reshape(n),
        stamps=np.array([r[1] for r in rows], np.int64).reshape(n),
        poses=np.array([r[2:9] for r in rows], dtype=np.float64).reshape(n, 7),
        sessions=np.array([r[9] for r in rows], np.int32).reshape(n),
        frames=[frames.setdefault(r[10], r[10]) for r in rows], blob_ids=blob_ids)


def check_is_database(path: str) -> None:
    """Refuse a database path that is a link or not a regular file, before SQLite opens it."""
    os.close(open_nofollow(path, os.O_RDONLY))
