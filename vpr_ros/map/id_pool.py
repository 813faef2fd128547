"""
Keyframe ids unique across sessions and crashes: id blocks reserved durably before use.

Before a map hands out an id it makes sure `directory/IDS` (JSON: `next_id`, `session_count`)
already lies beyond it, written atomically and fsynced. A process killed before any save leaves
that reservation behind, and the next session starts past it: an id once handed out (and maybe
published) never names another keyframe. Reservations come in blocks, so a keyframe costs a
file write only once per `BLOCK` ids; unused ids of a block are simply skipped.
"""
import json
import os
import threading

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import MapError
from vpr_ros.map.index_file import open_nofollow

IDS_FILE = 'IDS'
BLOCK = 1024
# Ids go out as float64 in /vpr/matches: beyond 2^53 they would no longer be exact.
MAX_ID = 2 ** 53
MAX_SESSIONS = 2 ** 31 - 1


def read_reservation(directory: str) -> tuple[int, int]:
    """(next_id, session_count) reserved in `directory`, (0, 0) without a reservation."""
    path = os.path.join(directory, IDS_FILE)
    if not os.path.lexists(path):
        return 0, 0
    fd = open_nofollow(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4097)
    finally:
        os.close(fd)
    try:
        if len(data) > 4096:
            raise ValueError('file too large')
        ids = json.loads(data.decode('ascii'))
        next_id, sessions = ids['next_id'], ids['session_count']
        if not all(type(v) is int for v in (next_id, sessions)):
            raise ValueError('fields must be integers')
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise MapError(f'id reservation {path} is corrupt ({exc}); it is never rewritten '
                       'down, so remove it only if no id of this map was published') from None
    if not (0 <= next_id <= MAX_ID and 0 <= sessions <= MAX_SESSIONS):
        raise MapError(f'id reservation {path} holds next_id {next_id} / session_count '
                       f'{sessions}, beyond the limits {MAX_ID} / {MAX_SESSIONS}')
    return next_id, sessions


class IdPool:
    """Ids and sessions reserved in one map directory, shared by the process's maps on it."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, IDS_FILE)
        self.reserved, self.sessions = read_reservation(directory)
        self.handed = self.reserved   # ids below may have been handed out (by a dead process)
        self.claimed = self.sessions  # sessions opened by this process's maps, in memory
        self._lock = threading.Lock()

    def first_free(self) -> int:
        """Return the lowest id no map of this directory can have handed out."""
        return self.handed

    def claim_session(self, at_least: int) -> int:
        """Return a session number no other map of this directory has (durable at first add)."""
        with self._lock:
            session = max(at_least, self.sessions, self.claimed)
            self.claimed = session + 1
            return session

    def take(self, start: int, n: int, session: int) -> int:
        """
        Return the first of n ids at or after `start`, reserved durably for `session`.

        The ids are the caller's from now on (a failed add leaves a gap, never a duplicate:
        maps of one process share this pool); MapError when they cannot be reserved.
        """
        with self._lock:
            first = max(start, self.handed)
            end = first + n
            if end > MAX_ID:
                raise MapError(f'keyframe ids exhausted: {end} > {MAX_ID}')
            if end > self.reserved or session >= self.sessions:
                reserved = max(self.reserved, min(end + BLOCK, MAX_ID))
                sessions = max(self.sessions, session + 1)
                data = json.dumps({'next_id': reserved, 'session_count': sessions}) + '\n'
                try:
                    write_atomic(self.path, data.encode('ascii'))
                except OSError as exc:
                    raise MapError(f'cannot reserve keyframe ids in {self.path}: '
                                   f'{exc}') from exc
                self.reserved, self.sessions = reserved, sessions
            self.handed = end
            return first
