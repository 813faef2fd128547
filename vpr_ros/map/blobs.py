"""
Per-keyframe blobs (e.g. serialized ORB features): in memory until saved, then read lazily.

Blobs of saved keyframes are read from the saved SQLite file on demand, so they never all sit
in RAM. `stage` converts new blobs without changing anything (it may fail: a blob that cannot
be copied), `commit` then cannot fail: that split is what makes a map add atomic.
"""
import os
import sqlite3
from typing import Iterable, Optional
import urllib.parse

from vpr_ros.core.errors import MapError

BlobLike = (bytes, bytearray, memoryview)


def sqlite_uri(path: str, mode: str) -> str:
    """URI for sqlite3.connect, so odd characters in paths cannot change the open mode."""
    return 'file:' + urllib.parse.quote(os.path.abspath(path)) + '?mode=' + mode


class BlobStore:
    """Blobs by keyframe id: pending (not yet saved) ones in memory, saved ones on disk."""

    def __init__(self) -> None:
        self._conn: Optional[sqlite3.Connection] = None
        self.clear()

    def clear(self) -> None:
        """Forget every blob (map reset)."""
        self.close()
        self.pending: dict[int, bytes] = {}
        self.ids: set[int] = set()
        self.db: Optional[str] = None     # saved SQLite holding blobs of saved keyframes

    def close(self) -> None:
        """Close the saved file's connection (it reopens on the next read)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def check(blobs: Iterable) -> None:
        """Refuse what is not bytes (or None), before anything is added."""
        for b in blobs:
            if b is not None and not isinstance(b, BlobLike):
                raise MapError(f'blob must be bytes, got {type(b).__name__}')

    @staticmethod
    def stage(ids: Iterable[int], blobs: Iterable) -> dict[int, bytes]:
        """Copy the new blobs by id; raise (changing nothing) when one cannot be copied."""
        return {int(kid): bytes(b) for kid, b in zip(ids, blobs) if b is not None}

    def commit(self, staged: dict[int, bytes]) -> None:
        """Make staged blobs part of the map."""
        self.pending.update(staged)
        self.ids.update(staged)

    def saved_to(self, db_path: str) -> None:
        """After a save: every blob is in `db_path` now."""
        self.close()
        self.db = db_path
        self.pending = {}

    def loaded(self, db_path: str, ids: Iterable[int]) -> None:
        """After a load: blobs of `ids` are in `db_path`."""
        self.clear()
        self.db = db_path
        self.ids = set(ids)

    def open_now(self) -> None:
        """Open the saved file now (a read-only snapshot): it stays readable once replaced."""
        if self.db is not None and self._conn is None:
            try:
                self._conn = sqlite3.connect(sqlite_uri(self.db, 'ro'), uri=True,
                                             check_same_thread=False)
                self._conn.execute('SELECT COUNT(*) FROM blobs').fetchone()
            except sqlite3.Error as exc:
                raise MapError(f'cannot open {self.db}: {exc}') from exc

    def get(self, kid: int) -> Optional[bytes]:
        """Return the blob of `kid`, None when it had none; MapError when the saved file fails."""
        if kid not in self.ids:
            return None
        if kid in self.pending:
            return self.pending[kid]
        if self._conn is None:
            try:
                self._conn = sqlite3.connect(sqlite_uri(self.db, 'ro'), uri=True,
                                             check_same_thread=False)
            except sqlite3.Error as exc:
                raise MapError(f'cannot open {self.db}: {exc}') from exc
        try:
            row = self._conn.execute('SELECT data FROM blobs WHERE id = ?', (kid,)).fetchone()
        except sqlite3.Error as exc:
            raise MapError(f'cannot read blob {kid} from {self.db}: {exc}') from exc
        if row is None or not isinstance(row[0], bytes):
            raise MapError(f'blob of keyframe {kid} missing from {self.db}')
        return bytes(row[0])

    def copy_into(self, conn: sqlite3.Connection) -> None:
        """Write every blob (saved and pending) into the `blobs` table of a new database."""
        if self.db is not None:
            conn.execute('ATTACH DATABASE ? AS src', (sqlite_uri(self.db, 'ro'),))
            conn.execute('INSERT INTO blobs SELECT id, data FROM src.blobs')
            conn.commit()
            conn.execute('DETACH DATABASE src')
        conn.executemany('INSERT INTO blobs VALUES (?, ?)', self.pending.items())


class BlobCopy:
    """
    Blobs of saved generations copied into a new database by SQLite, ids mapped (merge, prune).

    Stands in for a BlobStore in a save (`copy_into`): features of large maps never pass
    through Python, and only the listed keyframes' blobs are copied, under their new ids.
    """

    def __init__(self) -> None:
        self.sources: list[tuple[str, list[int], list[int]]] = []

    def add(self, db_path: str, old_ids: Iterable[int], new_ids: Iterable[int]) -> None:
        """Copy the blobs of `old_ids` in `db_path` as `new_ids` (same order)."""
        self.sources.append((db_path, [int(i) for i in old_ids], [int(i) for i in new_ids]))

    def copy_into(self, conn: sqlite3.Connection) -> None:
        """Fill the `blobs` table of a new database from every source."""
        for db, old, new in self.sources:
            conn.execute('ATTACH DATABASE ? AS src', (sqlite_uri(db, 'ro'),))
            conn.execute('CREATE TEMP TABLE idmap (old INTEGER PRIMARY KEY, new INTEGER)')
            conn.executemany('INSERT INTO idmap VALUES (?, ?)', zip(old, new))
            conn.execute('INSERT INTO blobs SELECT m.new, s.data FROM src.blobs s '
                         'JOIN idmap m ON s.id = m.old')
            conn.commit()
            conn.execute('DROP TABLE idmap')
            conn.execute('DETACH DATABASE src')
