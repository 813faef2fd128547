"""
The TB-Places index: one JSON file per traverse, read and written in one place.

An index is `{"im_prefix": str, "im_paths": [str], "poses": [[tx, ty, tz, qx, qy, qz, qw], ...]}`
(the format of TB-Places and the GCL code). Training reads it, the simulator and the bag
extractor write it: a data format shared by layers, so it lives in the core, where every layer
may import it. Image paths are resolved as `join(image_root, im_path)` where `image_root` is
`im_prefix` itself when it is absolute and `join(folder of the index, im_prefix)` when it is
relative (so `""` or `"images/"` keep a folder relocatable). MSLS-style indices carrying
`"loc": [[east, north, compass_deg], ...]` instead of poses are read too (converted to planar
poses, see `poses_from_compass`).
"""
import json
import os
from typing import NamedTuple, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import VPRError


class Index(NamedTuple):
    """A parsed index: its prefix, the image paths as written and (N,7) poses."""

    im_prefix: str
    im_paths: list[str]
    poses: np.ndarray


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


def image_root(index_path: str, im_prefix: str) -> str:
    """Folder the im_paths are relative to (see the module docstring)."""
    if os.path.isabs(im_prefix):
        return im_prefix
    return os.path.join(os.path.dirname(os.path.abspath(index_path)), im_prefix)


def _as_poses(poses, what: str) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.size == 0:
        poses = poses.reshape(0, 7)
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise VPRError(f'{what}"poses" must be N×7 [tx,ty,tz,qx,qy,qz,qw], '
                       f'got shape {poses.shape}')
    return poses


def read_index(path: str) -> Index:
    """Parse one index; VPRError naming the file and the problem when it is malformed."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise VPRError(f'cannot read index {path}: {exc}') from exc
    if not isinstance(data, dict) or 'im_paths' not in data:
        raise VPRError(f'{path}: not a TB-Places index (no "im_paths")')
    im_paths = [str(p) for p in data['im_paths']]
    try:
        if 'poses' in data:
            poses = _as_poses(data['poses'], f'{path}: ')
        elif 'loc' in data:
            loc = np.asarray(data['loc'], dtype=np.float64).reshape(-1, 3)
            poses = poses_from_compass(loc[:, 0], loc[:, 1], loc[:, 2])
        else:
            raise VPRError(f'{path}: no "poses" (or "loc") in the index')
    except (TypeError, ValueError) as exc:
        if isinstance(exc, VPRError):
            raise
        raise VPRError(f'{path}: bad pose values: {exc}') from exc
    if len(poses) != len(im_paths):
        raise VPRError(f'{path}: {len(im_paths)} im_paths but {len(poses)} poses')
    return Index(str(data.get('im_prefix', '')), im_paths, poses)


def write_index(path: str, im_prefix: str, im_paths: Sequence[str], poses) -> str:
    """
    Write an index atomically (temp file + rename), so a crash never leaves half a JSON.

    The single writer for bag extraction and the simulator; poses must be finite N×7.
    """
    poses = _as_poses(poses, '')
    if len(poses) != len(im_paths):
        raise VPRError(f'{len(im_paths)} image paths but {len(poses)} poses')
    if not np.all(np.isfinite(poses)):
        raise VPRError('poses contain NaN/inf; drop frames without a pose before writing')
    data = {'im_prefix': str(im_prefix), 'im_paths': [str(p) for p in im_paths],
            'poses': [[float(v) for v in row] for row in poses]}
    write_atomic(path, json.dumps(data).encode())
    return path
