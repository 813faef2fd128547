"""
One process per map directory: an exclusive lock held for a map's lifetime, and its id pool.

`acquire(directory)` takes `flock(LOCK_EX | LOCK_NB)` on `directory/.lock` (opened without
following links) and writes the holder's pid into it, so a second process is refused with
MapLockedError naming the directory and that pid, instead of both saving and the last saver
silently winning. The kernel drops the lock when the holder exits, SIGKILL included. Maps of
one process on one directory share one handle (flock locks belong to an open file, so a second
open in the same process would conflict with itself) and with it one `IdPool`, so they never
hand out the same id either.
"""
import errno
import fcntl
import os
import threading

from vpr_ros.core.errors import MapError, MapLockedError
from vpr_ros.map.id_pool import IdPool
from vpr_ros.map.index_file import open_nofollow

LOCK_FILE = '.lock'

_REGISTRY: dict[tuple[int, int], 'DirHandle'] = {}
_REGISTRY_LOCK = threading.Lock()


class DirHandle:
    """A held map directory: the lock's descriptor, its users and the id pool."""

    def __init__(self, directory: str, fd: int, key: tuple[int, int]) -> None:
        self.directory = directory
        self.fd = fd
        self.key = key
        self.users = 1
        self.pool = IdPool(directory)

    def release(self) -> None:
        """Drop one user; the last one unlocks (closing the descriptor releases the flock)."""
        with _REGISTRY_LOCK:
            self.users -= 1
            if self.users > 0 or self.fd < 0:
                return
            _REGISTRY.pop(self.key, None)
            os.close(self.fd)
            self.fd = -1


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode('ascii', 'replace').strip()
    except OSError:
        return 'unknown'
    return text if text.isdigit() else 'unknown'


def acquire(directory: str, create: bool) -> DirHandle:
    """Lock `directory` for this process (shared by its maps); MapLockedError when held."""
    directory = os.path.abspath(directory)
    try:
        if create:
            os.makedirs(directory, exist_ok=True)
        st = os.stat(directory)
    except OSError as exc:
        raise MapError(f'cannot use map directory {directory}: {exc}') from exc
    if not os.path.isdir(directory):
        raise MapError(f'map directory {directory} is not a directory')
    key = (st.st_dev, st.st_ino)
    with _REGISTRY_LOCK:
        handle = _REGISTRY.get(key)
        if handle is not None:
            handle.users += 1
            return handle
        path = os.path.join(directory, LOCK_FILE)
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MapLockedError(
                    f'map directory {directory} is in use by process {pid} (lock {path}); '
                    'stop that process or choose another map directory') from None
            raise MapError(f'cannot lock {path}: {exc}') from exc
        try:
            mine = f'{os.getpid()}\n'.encode()
            if os.pread(fd, 64, 0) != mine:
                os.ftruncate(fd, 0)
                os.pwrite(fd, mine, 0)
            handle = DirHandle(directory, fd, key)
        except (OSError, MapError) as exc:
            os.close(fd)
            raise MapError(f'cannot use map directory {directory}: {exc}') from exc
        _REGISTRY[key] = handle
        return handle
