"""
TB-Places-style traverses: the JSON index, its one writer, image loading and a torch Dataset.

An index is `{"im_prefix": str, "im_paths": [str], "poses": [[tx, ty, tz, qx, qy, qz, qw], ...]}`
(the format of TB-Places and the GCL code), one per traverse. Image paths are resolved as
`join(image_root, im_path)` where `image_root` is `im_prefix` itself when it is absolute and
`join(folder of the index, im_prefix)` when it is relative (so `""` or `"images/"` keep a folder
relocatable). The GCL code writes the dataset root as an absolute `im_prefix` and otherwise passes
the root on the command line: `load_traverse(..., image_root=...)` is that override, for a
dataset that was moved. MSLS-style indices carrying `"loc": [[east, north, compass_deg], ...]`
instead of poses are read too (converted to planar poses, see `poses_from_compass`).

Corrupt or missing images never stop a run: `load_image` returns None and counts them, and the
Dataset checks every file once up front and serves only the readable ones.
"""
from collections import Counter
from dataclasses import dataclass
import glob
import json
import logging
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.spatial.transform import Rotation

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import VPRError

_LOG = logging.getLogger(__name__)

#: Failures of `load_image` in this process, by kind ('missing', 'corrupt'), for summaries.
LOAD_ERRORS: Counter = Counter()

_GENERIC_STEMS = {'index', 'idx', 'images'}


@dataclass
class Traverse:
    """One traverse (one recording): names, resolved image paths and (N,7) poses."""

    name: str
    index_path: str
    image_paths: list[str]
    poses: np.ndarray

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def xy(self) -> np.ndarray:
        """Camera positions on the ground plane (N,2), what FoV labels use."""
        return self.poses[:, :2]


def poses_from_compass(easting, northing, heading_deg) -> np.ndarray:
    """
    (N,7) planar poses from GPS/UTM east, north and a compass heading (deg, clockwise from N).

    x = east, y = north (ENU, REP-103), so the yaw of the +x axis is 90° − compass heading.
    """
    e = np.asarray(easting, dtype=np.float64).reshape(-1)
    n = np.asarray(northing, dtype=np.float64).reshape(-1)
    yaw = np.radians(90.0 - np.asarray(heading_deg, dtype=np.float64).reshape(-1))
    if not (e.shape == n.shape == yaw.shape):
        raise VPRError('easting, northing and heading have different lengths')
    q = Rotation.from_euler('z', yaw[:, None]).as_quat().reshape(-1, 4)
    return np.concatenate([e[:, None], n[:, None], np.zeros((e.size, 1)), q], axis=1)


def traverse_name(index_path: str) -> str:
    """Name used on the command line: the file stem, or its folder for a generic 'index.json'."""
    path = os.path.abspath(index_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.lower() in _GENERIC_STEMS:
        return os.path.basename(os.path.dirname(path)) or stem
    return stem


def image_root(index_path: str, im_prefix: str) -> str:
    """Folder the im_paths are relative to (see the module docstring)."""
    if os.path.isabs(im_prefix):
        return im_prefix
    return os.path.join(os.path.dirname(os.path.abspath(index_path)), im_prefix)


def load_traverse(index_path: str, image_root_override: str | None = None,
                  name: str | None = None) -> Traverse:
    """Read one index; VPRError naming the file and the problem when it is malformed."""
    try:
        with open(index_path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise VPRError(f'cannot read index {index_path}: {exc}') from exc
    if not isinstance(data, dict) or 'im_paths' not in data:
        raise VPRError(f'{index_path}: not a TB-Places index (no "im_paths")')
    im_paths = [str(p) for p in data['im_paths']]
    if 'poses' in data:
        poses = np.asarray(data['poses'], dtype=np.float64)
        if poses.size == 0:
            poses = poses.reshape(0, 7)
        if poses.ndim != 2 or poses.shape[1] != 7:
            raise VPRError(f'{index_path}: "poses" must be N×7 [tx,ty,tz,qx,qy,qz,qw], '
                           f'got shape {poses.shape}')
    elif 'loc' in data:
        loc = np.asarray(data['loc'], dtype=np.float64).reshape(-1, 3)
        poses = poses_from_compass(loc[:, 0], loc[:, 1], loc[:, 2])
    else:
        raise VPRError(f'{index_path}: no "poses" (or "loc") in the index')
    if len(poses) != len(im_paths):
        raise VPRError(f'{index_path}: {len(im_paths)} im_paths but {len(poses)} poses')
    root = image_root_override or image_root(index_path, str(data.get('im_prefix', '')))
    paths = [os.path.join(root, p) for p in im_paths]
    return Traverse(name or traverse_name(index_path), os.path.abspath(index_path), paths, poses)


def find_indices(root: str) -> list[str]:
    """All TB-Places index files under root (JSON files with "im_paths"), sorted."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, '**', '*.json'), recursive=True)):
        try:
            with open(path) as f:
                head = f.read(4096)
        except OSError:
            continue
        if '"im_paths"' in head or '"im_prefix"' in head:
            found.append(path)
    return found


def select_traverses(root_or_paths: str | Sequence[str],
                     names: Iterable[str] | None = None) -> list[Traverse]:
    """
    Traverses chosen by name (e.g. map W17, query W18) from a root folder or index paths.

    root_or_paths is a folder searched for indices, one index path, or a list of index paths
    and folders. names (traverse names, see `traverse_name`, or index paths) keeps their order;
    None or empty selects all. An unknown name raises VPRError listing what is there.
    """
    items = [root_or_paths] if isinstance(root_or_paths, str) else list(root_or_paths)
    paths: list[str] = []
    for item in items:
        paths.extend(find_indices(item) if os.path.isdir(item) else [item])
    by_name: dict[str, str] = {}
    for p in paths:
        by_name.setdefault(traverse_name(p), p)
    wanted = list(names or [])
    if not wanted:
        return [load_traverse(p) for p in paths]
    out = []
    for n in wanted:
        if n in by_name:
            out.append(load_traverse(by_name[n]))
        elif os.path.isfile(n):
            out.append(load_traverse(n))
        else:
            raise VPRError(f'no traverse named {n!r}; found: {sorted(by_name) or "none"}')
    return out


def write_index(path: str, im_prefix: str, im_paths: Sequence[str], poses) -> str:
    """
    Write an index atomically (temp file + rename), so a crash never leaves half a JSON.

    The single writer for bag extraction and the simulator; poses must be finite N×7.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.size == 0:
        poses = poses.reshape(0, 7)
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise VPRError(f'poses must be N×7 [tx,ty,tz,qx,qy,qz,qw], got shape {poses.shape}')
    if len(poses) != len(im_paths):
        raise VPRError(f'{len(im_paths)} image paths but {len(poses)} poses')
    if not np.all(np.isfinite(poses)):
        raise VPRError('poses contain NaN/inf; drop frames without a pose before writing')
    data = {'im_prefix': str(im_prefix), 'im_paths': [str(p) for p in im_paths],
            'poses': [[float(v) for v in row] for row in poses]}
    write_atomic(path, json.dumps(data).encode())
    return path


def load_image(path: str, counters: Counter | dict | None = None) -> np.ndarray | None:
    """
    HxWx3 uint8 RGB, or None (counted, logged) for a missing or corrupt file.

    Counted in `LOAD_ERRORS` and, when given, in counters, so a run can report how many it lost.
    """
    kind = None
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
                a = np.asarray(im, dtype=np.float64)
                a = np.clip(a / max(a.max(), 1.0) * 255.0, 0, 255).astype(np.uint8)
                return np.repeat(a[..., None], 3, axis=2)
            return np.asarray(im.convert('RGB'), dtype=np.uint8)
    except FileNotFoundError:
        kind = 'missing'
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        kind = 'corrupt'
        _LOG.debug('corrupt image %s: %s', path, exc)
    LOAD_ERRORS[kind] += 1
    if counters is not None:
        counters[kind] = counters.get(kind, 0) + 1
    n = LOAD_ERRORS[kind]
    if n <= 3 or n % 100 == 0:
        _LOG.warning('skipping %s image %s (%d %s so far)', kind, path, n, kind)
    return None


def image_ok(path: str) -> bool:
    """Cheap up-front check (header + structure, no full decode) that a file is an image."""
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many kinds of errors for broken files
        return False


class TraverseImages:
    """
    Torch Dataset over images of one or more traverses: items are (tensor (3,H,W), index).

    index is the image's position in the concatenated image list (traverse order), so labels and
    poses line up even though unreadable images are left out: `valid` lists the indices served,
    `skipped` the ones dropped up front. An image that breaks later (truncated data that passed
    the header check) is replaced by the next valid one, and its own index is returned with it.
    Preprocessing is the shared `vpr_ros.core.preprocess.preprocess`, the one node and eval use.
    """

    def __init__(self, traverses: Traverse | Sequence[Traverse] | Sequence[str],
                 size_hw: tuple[int, int] = (480, 640), check: bool = True,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if isinstance(traverses, Traverse):
            traverses = [traverses]
        paths: list[str] = []
        for t in traverses:
            paths.extend(t.image_paths if isinstance(t, Traverse) else [str(t)])
        self.paths = paths
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        # A model file may carry its own normalisation; None keeps preprocess' ImageNet default.
        self._norm = {k: tuple(v) for k, v in (('mean', mean), ('std', std)) if v is not None}
        ok = [image_ok(p) for p in paths] if check else [True] * len(paths)
        self.valid = np.flatnonzero(ok).astype(np.int64)
        self.skipped = np.flatnonzero(~np.asarray(ok, dtype=bool)).astype(np.int64)
        self.counters: Counter = Counter(skipped_up_front=int(self.skipped.size))
        if self.skipped.size:
            _LOG.warning('%d of %d images unreadable, left out (first: %s)', self.skipped.size,
                         len(paths), paths[int(self.skipped[0])])

    def __len__(self) -> int:
        return int(self.valid.size)

    def __getitem__(self, k: int):
        """(preprocessed image, index in the image list) for the k-th readable image."""
        from vpr_ros.core.preprocess import preprocess  # lazy: keeps this module importable alone

        n = len(self.valid)
        if n == 0:
            raise IndexError('no readable images')
        for step in range(n):
            idx = int(self.valid[(k + step) % n])
            img = load_image(self.paths[idx], self.counters)
            if img is not None:
                return preprocess(img, self.size_hw, 'rgb8', **self._norm), idx
        raise VPRError('no image of the dataset can be read any more')

    def summary(self) -> dict:
        """Return the counts for a run's report."""
        return {'images': len(self.paths), 'valid': len(self), **dict(self.counters)}


def total_images(traverses: Sequence[Traverse]) -> int:
    """Count images over traverses (the rows of a label matrix built from them)."""
    return int(sum(len(t) for t in traverses))


def concat_poses(traverses: Sequence[Traverse]) -> np.ndarray:
    """(N,7) poses of several traverses in order, the row order labels and datasets use."""
    if not traverses:
        return np.zeros((0, 7))
    return np.concatenate([t.poses for t in traverses], axis=0)
