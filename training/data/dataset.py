"""
TB-Places-style traverses for training: selection by name, image loading and a torch Dataset.

The index format itself (`{"im_prefix", "im_paths", "poses"}`, its reader and its one writer)
is `vpr_ros.core.tbplaces`, shared with the simulator and the bag extractor; its names are
re-exported here. The GCL code writes the dataset root as an absolute `im_prefix` and otherwise
passes the root on the command line: `load_traverse(..., image_root_override=...)` is that
override, for a dataset that was moved.

Corrupt or missing images never stop a run: `load_image` returns None and counts them, and the
Dataset checks every file once up front and serves only the readable ones.
"""
from collections import Counter
import copy
from dataclasses import dataclass
import glob
import logging
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from vpr_ros.core.bitdepth import to_8bit
from vpr_ros.core.errors import VPRError
from vpr_ros.core.tbplaces import image_root, poses_from_compass, read_index, write_index

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


def traverse_name(index_path: str) -> str:
    """Name used on the command line: the file stem, or its folder for a generic 'index.json'."""
    path = os.path.abspath(index_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.lower() in _GENERIC_STEMS:
        return os.path.basename(os.path.dirname(path)) or stem
    return stem


def load_traverse(index_path: str, image_root_override: str | None = None,
                  name: str | None = None) -> Traverse:
    """Read one index; VPRError naming the file and the problem when it is malformed."""
    index = read_index(index_path)
    root = image_root_override or image_root(index_path, index.im_prefix)
    paths = [os.path.join(root, p) for p in index.im_paths]
    return Traverse(name or traverse_name(index_path), os.path.abspath(index_path), paths,
                    index.poses)


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


def load_traverses(data_root: str, names: Sequence[str]) -> list[Traverse]:
    """Traverses by name under data_root, or index paths when there is no root."""
    if not names:
        return []
    return select_traverses(data_root, names) if data_root else select_traverses(list(names))


def traverse_paths_poses(index_paths: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Image paths and (N, 7) poses of one or more traverses, concatenated in order."""
    paths: list[str] = []
    poses = []
    for p in index_paths:
        t = load_traverse(p)
        paths += [str(x) for x in t.image_paths]
        poses.append(np.asarray(t.poses, dtype=np.float64).reshape(-1, 7))
    return paths, (np.concatenate(poses) if poses else np.zeros((0, 7)))


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
                # 16-bit grey as the node sees a mono16 camera (bitdepth.to_8bit), not stretched
                a = to_8bit(np.clip(np.asarray(im), 0, 65535).astype(np.uint16))
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
    Preprocessing is the shared `vpr_ros.core.preprocess.preprocess`, the one node and eval use;
    ``transform(image, index)``, when given, changes the uint8 RGB image before it (training
    augmentation, `training.fit.augment`; `with_transform` shares the checked file list).
    """

    def __init__(self, traverses: Traverse | Sequence[Traverse] | Sequence[str],
                 size_hw: tuple[int, int] | None = None, check: bool = True,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, transform=None) -> None:
        if isinstance(traverses, Traverse):
            traverses = [traverses]
        paths: list[str] = []
        for t in traverses:
            paths.extend(t.image_paths if isinstance(t, Traverse) else [str(t)])
        self.paths = paths
        if size_hw is None:  # the default model's input size, as vpr-train's --image-size
            from vpr_ros.model.encoder import ModelSpec
            size_hw = ModelSpec().image_size
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        # A model file may carry its own normalisation; None keeps preprocess' ImageNet default.
        self._norm = {k: tuple(v) for k, v in (('mean', mean), ('std', std)) if v is not None}
        ok = [image_ok(p) for p in paths] if check else [True] * len(paths)
        self.valid = np.flatnonzero(ok).astype(np.int64)
        self.skipped = np.flatnonzero(~np.asarray(ok, dtype=bool)).astype(np.int64)
        self.counters: Counter = Counter(skipped_up_front=int(self.skipped.size))
        self.transform = transform
        if self.skipped.size:
            _LOG.warning('%d of %d images unreadable, left out (first: %s)', self.skipped.size,
                         len(paths), paths[int(self.skipped[0])])

    def __len__(self) -> int:
        return int(self.valid.size)

    def with_transform(self, transform) -> 'TraverseImages':
        """Return the same images (no second file check) served through ``transform``."""
        other = copy.copy(self)
        other.transform = transform
        other.counters = Counter(self.counters)
        return other

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
                if self.transform is not None:
                    img = self.transform(img, idx)
                return preprocess(img, self.size_hw, 'rgb8', **self._norm), idx
        raise VPRError('no image of the dataset can be read any more')

    def summary(self) -> dict:
        """Return the counts for a run's report."""
        return {'images': len(self.paths), 'valid': len(self), **dict(self.counters)}


def concat_poses(traverses: Sequence[Traverse]) -> np.ndarray:
    """(N,7) poses of several traverses in order, the row order labels and datasets use."""
    if not traverses:
        return np.zeros((0, 7))
    return np.concatenate([t.poses for t in traverses], axis=0)


__all__ = ['concat_poses', 'find_indices', 'image_ok', 'image_root', 'load_image',
           'load_traverse', 'LOAD_ERRORS', 'poses_from_compass', 'read_index', 'select_traverses',
           'Traverse', 'TraverseImages', 'traverse_name', 'write_index']
