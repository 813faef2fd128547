"""
Atomic file writes, bounded file reads and file hashes: one definition for maps and models.

Temp file in the target's directory, fsync, rename, fsync of the directory: a crash or a kill
leaves either the old file or the new one, never half a file.

Reads that hash or unpickle a file take only regular files of a bounded size, checked on the
open descriptor before a byte is read: a weights file replaced by a link to /dev/zero used to
be read until memory ran out, a FIFO hung the start-up (issue 20).
"""
import hashlib
import os
import stat
import tempfile

_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISCHR, 'a character device'),
          (stat.S_ISBLK, 'a block device'), (stat.S_ISFIFO, 'a FIFO'),
          (stat.S_ISSOCK, 'a socket'))


def fsync_dir(directory: str) -> None:
    """Persist a rename; best effort where directories cannot be opened (some filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` atomically, creating its directory if needed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def open_regular(path: str, max_bytes: int | None = None) -> tuple[int, int]:
    """
    Open `path` for reading only when it is a regular file of at most `max_bytes`: (fd, size).

    Links are followed (a hub cache may link to a shared one) but what they lead to is checked
    on the descriptor; O_NONBLOCK lets a FIFO open without a writer instead of hanging. OSError
    naming the path and what it is otherwise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), 'not a file')
        why = f'{path} is {kind}, not a regular file: refusing to read it'
    elif max_bytes is not None and st.st_size > max_bytes:
        why = (f'{path} has {st.st_size} bytes, more than the {max_bytes} a file of this kind '
               'can have: refusing to read it')
    if why is not None:
        os.close(fd)
        raise OSError(why)
    return fd, st.st_size


def read_regular(path: str, max_bytes: int) -> bytes:
    """Read a whole regular file of at most `max_bytes` (see `open_regular`), in one go."""
    fd, size = open_regular(path, max_bytes)
    with os.fdopen(fd, 'rb') as f:
        data = f.read(size + 1)   # never more than one byte past what fstat said
    if len(data) != size:
        raise OSError(f'{path} changed size while it was read ({size} -> {len(data)}+ bytes)')
    return data


def sha256_file(path: str, chunk: int = 1 << 20, max_bytes: int | None = None) -> str:
    """Hex sha256 of a regular file (at most `max_bytes`), read in chunks: maps, weights."""
    h = hashlib.sha256()
    fd, _ = open_regular(path, max_bytes)
    with os.fdopen(fd, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()
