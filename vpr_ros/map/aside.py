"""
Starting a new map without losing the old one: the committed map is moved aside, inside map_dir.

`move_aside(map_dir)` turns `map_dir/CURRENT` and its generations into a complete map at
`map_dir/aside/<UTC time>_s<last session>/` that `PlaceMap.load` or `vpr-map info` can read, and
leaves `map_dir` without a committed map (the new one is written at its first save). The node
never deletes an aside map. The caller holds the directory's lock.

Crash-safe, in this order: (1) the generations' files are hard-linked (copied where the file
system has no hard links) into `aside/.tmp-<name>/`, with a copy of CURRENT; (2) that folder is
renamed to `aside/<name>` (now a complete copy exists); (3) `map_dir/CURRENT` is removed (now the
new map is current); (4) the old generations are removed from `map_dir` (their files live on
through the links). A crash before (2) leaves the old map current and a `.tmp-` folder (removed
by the next move); between (2) and (3) the old map is still current and a copy is aside; after
(3) the new map is current and the old one aside: never neither. Only files this module made or
checked are touched: no link is followed, nothing is written outside `map_dir`.
"""
import os
import shutil
import stat
import time
from typing import Optional

from vpr_ros.core.atomic_io import fsync_dir
from vpr_ros.core.errors import MapError
from vpr_ros.map.index_file import open_nofollow
from vpr_ros.map.manifest import MANIFEST_FILE, read_manifest
from vpr_ros.map.storage import CURRENT_FILE, GEN_RE

ASIDE_DIR = 'aside'
_TMP = '.tmp-'


def _real_dir(path: str) -> bool:
    """Tell a real directory from a link to one (lstat: links are never followed)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _aside_root(directory: str) -> str:
    root = os.path.join(directory, ASIDE_DIR)
    if os.path.lexists(root) and not _real_dir(root):
        raise MapError(f'{root} is a symbolic link or not a directory; the map never follows '
                       'links out of its directory (remove it to start a new map)')
    if not os.path.lexists(root):
        os.mkdir(root, 0o755)
        fsync_dir(directory)
    return root


def _name(directory: str, generations: list[str]) -> str:
    """`<UTC time>_s<last session>` from the newest readable manifest (`_damaged` otherwise)."""
    last = 'damaged'
    for gen in sorted(generations, reverse=True):
        try:
            man = read_manifest(os.path.join(directory, gen, MANIFEST_FILE))
            last = str(max(0, man['session_count'] - 1))
            break
        except MapError:
            continue
    return time.strftime('%Y%m%dT%H%M%SZ', time.gmtime()) + f'_s{last}'


def _link_or_copy(src: str, dst: str) -> None:
    st = os.lstat(src)
    if not stat.S_ISREG(st.st_mode):
        raise MapError(f'map file {src} is a link or not a regular file; move the map '
                       'aside by hand')
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:   # no hard links here (some network or FUSE file systems): copy it
        with os.fdopen(open_nofollow(src, os.O_RDONLY), 'rb') as fi, os.fdopen(
                open_nofollow(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL), 'wb') as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
            fo.flush()
            os.fsync(fo.fileno())


def _stage(directory: str, tmp: str, generations: list[str]) -> None:
    """Do step (1): link every generation's files and copy CURRENT into `tmp`."""
    for gen in generations:
        os.mkdir(os.path.join(tmp, gen), 0o755)
        for name in os.listdir(os.path.join(directory, gen)):
            _link_or_copy(os.path.join(directory, gen, name), os.path.join(tmp, gen, name))
        fsync_dir(os.path.join(tmp, gen))
    fd = open_nofollow(os.path.join(directory, CURRENT_FILE), os.O_RDONLY)
    try:
        pointer = os.read(fd, 64)
    finally:
        os.close(fd)
    out = open_nofollow(os.path.join(tmp, CURRENT_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(out, pointer)
        os.fsync(out)
    finally:
        os.close(out)
    fsync_dir(tmp)


def move_aside(directory: str) -> Optional[str]:
    """
    Move the committed map of `directory` to `directory/aside/<name>/`; return that path.

    None when there is no committed map. MapError (nothing moved, the old map still current)
    when it cannot be done: a planted link, an unwritable directory, a full disk.
    """
    directory = os.path.abspath(directory)
    if not os.path.lexists(os.path.join(directory, CURRENT_FILE)):
        return None
    generations = sorted(n for n in os.listdir(directory)
                         if GEN_RE.match(n) and _real_dir(os.path.join(directory, n)))
    try:
        root = _aside_root(directory)
        for stale in os.listdir(root):   # copies a crash left unfinished
            if stale.startswith(_TMP) and _real_dir(os.path.join(root, stale)):
                shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
        name = _name(directory, generations)
        final, k = os.path.join(root, name), 1
        while os.path.lexists(final):
            k += 1
            final = os.path.join(root, f'{name}-{k}')
        tmp = os.path.join(root, _TMP + os.path.basename(final))
        os.mkdir(tmp, 0o755)
        try:
            _stage(directory, tmp, generations)
            os.rename(tmp, final)                           # (2) a complete copy is aside
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(root)
        os.unlink(os.path.join(directory, CURRENT_FILE))    # (3) the new map is current
        fsync_dir(directory)
    except OSError as exc:
        raise MapError(f'cannot move the map in {directory} aside: {exc}') from exc
    for gen in generations:                                 # (4) kept through the links
        shutil.rmtree(os.path.join(directory, gen), ignore_errors=True)
    fsync_dir(directory)
    return final
