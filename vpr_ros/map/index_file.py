"""
FAISS index files, checked before FAISS reads them, and written without following links.

FAISS trusts the sizes in a file: a crafted header makes it allocate terabytes (MemoryError)
or read neighbour ids past its arrays. `IndexFileWalker` reads the structure of the files this
package writes (an `IndexIDMap2` around one index kind of `index_kinds.INDEX_KINDS`), checks
every size against the manifest and the bytes left, and only then is the file handed to FAISS,
through the same open file (opened with O_NOFOLLOW), never by path.
"""
import os
import stat
import struct
from typing import Callable

import faiss
import numpy as np

from vpr_ros.core.errors import MapError

IDMAP_TAG = b'IxM2'
FLAT_TAG = b'IxFI'
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_HEADER = struct.Struct('<iqqq?i')   # d, ntotal, two unused int64, is_trained, metric type


class IndexFileWalker:
    """Bounds-checked reader of a FAISS file's structure; MapError names the file."""

    def __init__(self, f, path: str, dim: int, count: int,
                 metric: int = METRIC_INNER_PRODUCT) -> None:
        self.f = f
        self.metric = metric
        self.path = path
        self.dim = dim
        self.count = count
        self.size = os.fstat(f.fileno()).st_size
        self.pos = 0

    def fail(self, what: str) -> MapError:
        """Build the error for a malformed file, naming it and the offset."""
        return MapError(f'map index {self.path} is corrupt or crafted at byte {self.pos}: '
                        f'{what}')

    def read(self, n: int) -> bytes:
        """Next n bytes (MapError when the file ends first)."""
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f'{n} bytes wanted, {self.size - self.pos} left')
        data = os.pread(self.f.fileno(), n, self.pos)
        if len(data) != n:
            raise self.fail('short read')
        self.pos += n
        return data

    def ints(self, fmt: str) -> tuple:
        """Unpack fixed-size fields."""
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))

    def vector(self, itemsize: int, expect: int | None = None) -> tuple[int, int]:
        """Skip a FAISS vector, its size checked; return (data offset, element count)."""
        (n,) = self.ints('<Q')
        if expect is not None and n != expect:
            raise self.fail(f'vector of {n} elements, expected {expect}')
        if n > (self.size - self.pos) // itemsize:
            raise self.fail(f'vector of {n} elements does not fit in the file')
        off = self.pos
        self.pos += n * itemsize
        return off, n

    def array(self, dtype: str, expect: int | None = None) -> np.ndarray:
        """Read a (small) vector whole."""
        off, n = self.vector(np.dtype(dtype).itemsize, expect)
        data = os.pread(self.f.fileno(), n * np.dtype(dtype).itemsize, off)
        return np.frombuffer(data, dtype=dtype)

    def check_range(self, off: int, n: int, dtype: str, lo: int, hi: int) -> None:
        """Every element of a (large) vector in [lo, hi), read in chunks."""
        item = np.dtype(dtype).itemsize
        step = 1 << 22
        for start in range(0, n, step):
            k = min(step, n - start)
            chunk = np.frombuffer(os.pread(self.f.fileno(), k * item, off + start * item), dtype)
            if len(chunk) != k or chunk.min() < lo or chunk.max() >= hi:
                raise self.fail(f'values outside [{lo}, {hi})')

    def header(self, tag: bytes) -> None:
        """Check a fourcc and an index header of this map's dimension, count and metric."""
        got = self.read(4)
        if got != tag:
            raise self.fail(f'index type {got!r}, expected {tag!r}')
        d, ntotal, _, _, _, metric = _HEADER.unpack(self.read(_HEADER.size))
        if d != self.dim or ntotal != self.count or metric != self.metric:
            raise self.fail(f'header (d={d}, ntotal={ntotal}, metric={metric}) disagrees with '
                            f'the manifest (d={self.dim}, count={self.count}, '
                            f'metric={self.metric})')

    def flat_body(self) -> None:
        """Check the body of an IndexFlatIP: count x dim float32 codes."""
        self.vector(4, self.count * self.dim)


def check_index_file(f, path: str, dim: int, count: int,
                     body: Callable[[IndexFileWalker], None], tag: bytes) -> None:
    """Walk a whole IndexIDMap2 file of one index kind; MapError on anything out of place."""
    w = IndexFileWalker(f, path, dim, count)
    w.header(IDMAP_TAG)
    w.header(tag)
    body(w)
    w.vector(8, count)
    if w.pos != w.size:
        raise w.fail(f'{w.size - w.pos} trailing bytes')


def open_nofollow(path: str, flags: int, mode: int = 0o644) -> int:
    """os.open that never follows a symbolic link; MapError naming the file otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if os.path.islink(path):
            raise MapError(f'{path} is a symbolic link; the map never follows links out of '
                           'its directory') from exc
        raise MapError(f'cannot open {path}: {exc}') from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MapError(f'{path} is not a regular file')
    return fd


def read_index_file(path: str, dim: int, count: int, body: Callable[[IndexFileWalker], None],
                    tag: bytes) -> faiss.Index:
    """Check, then read an index file through one O_NOFOLLOW descriptor."""
    with os.fdopen(open_nofollow(path, os.O_RDONLY), 'rb') as f:
        check_index_file(f, path, dim, count, body, tag)
        f.seek(0)
        reader = faiss.PyCallbackIOReader(f.read)
        try:
            return faiss.read_index(reader)
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise MapError(f'map index {path} is corrupt: '
                           f'{str(exc).strip().splitlines()[-1][:200]}') from exc
        finally:
            del reader


def write_index_file(index: faiss.Index, path: str) -> None:
    """Write a new index file (O_EXCL: never over an existing file or link) and fsync it."""
    with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), 'wb') as f:
        writer = faiss.PyCallbackIOWriter(f.write)
        try:
            faiss.write_index(index, writer)
        except RuntimeError as exc:  # FAISS reports a failed write (disk full) this way
            raise MapError(f'cannot write {path}: {str(exc).strip()[-200:]}') from exc
        finally:
            del writer
        f.flush()
        os.fsync(f.fileno())
