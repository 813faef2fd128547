"""
A small synthetic garden-like place-recognition set, for tests and benchmarks of training.

Why: training needs images with poses whose overlap follows the poses, in seconds and offline.
The world is a long panoramic wall assembled from scikit-image's bundled photos and textures
(grass, gravel and brick tinted green for the garden's repetitiveness). A camera stands on the
line y = 0 looking along +y (yaw 90°), and its image is the crop of the wall in front of it:
moving sideways by Δx shifts the crop by Δx·ppm pixels and turning shifts it by the angle, so
crops overlap as the 2D FoV sectors of their poses do (ppm is chosen so a crop spans the
distance at which two sectors side by side stop overlapping, ≈ 4.95 m for θ = 90°, r = 3.5 m).
As in TB-Places, training and validation are different recordings of the same garden: four
passes along the whole wall, each offset by a quarter step. Map passes are taken in daylight
every `spacing` metres; query passes with heading jitter and a "dusk" appearance change (hue,
contrast, brightness, noise) that ImageNet features are not invariant to but training can learn.

Writes TB-Places-style folders through `vpr_ros.core.tbplaces.write_index`. A test fixture (also
used by bench/bench_train.py), not part of the installed package. The simulator's set
(`vpr_ros.sim.dataset.default_dataset()`) is the realistic one; this is the fallback.
"""
import json
import os

import cv2
import numpy as np

from vpr_ros.core.tbplaces import write_index

TRAVERSES = ('train_map', 'train_query', 'val_map', 'val_query')
#: Lateral offset (m) at which two θ = 90°, r = 3.5 m sectors side by side stop overlapping.
SECTOR_SPAN_M = 2 * 3.5 * np.sin(np.radians(45.0))
_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field',
           'immunohistochemistry', 'retina', 'colorwheel', 'coins', 'camera', 'moon', 'page')
_TEXTURES = ('grass', 'gravel', 'brick')
_VERSION = 4


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def _wall(height: int, rng: np.random.Generator) -> np.ndarray:
    """Photos alternating with green-tinted textures, each resized to the wall's height."""
    import skimage.data

    parts = []
    for k, name in enumerate(_PHOTOS):
        photo = _rgb(getattr(skimage.data, name)())
        w = int(round(photo.shape[1] * height / photo.shape[0]))
        parts.append(cv2.resize(photo, (w, height), interpolation=cv2.INTER_AREA))
        tex = _rgb(getattr(skimage.data, _TEXTURES[k % len(_TEXTURES)])()).astype(np.float32)
        y0 = int(rng.integers(0, tex.shape[0] - 256))
        x0 = int(rng.integers(0, tex.shape[1] - 256))
        tex = cv2.resize(tex[y0:y0 + 256, x0:x0 + 256], (height // 2, height))
        tint = np.array([0.55, 1.0, 0.45], np.float32) * rng.uniform(0.8, 1.1)
        parts.append(np.clip(tex * tint, 0, 255).astype(np.uint8))
    return np.concatenate(parts, axis=1)


def _dusk(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other light and season: hue turned, contrast and brightness down, sensor noise up."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(rng.integers(40, 50))) % 180)
    x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    x = (x - 128.0) * rng.uniform(0.35, 0.45) + 128.0 * rng.uniform(0.45, 0.55)
    x += rng.normal(0, 12.0, x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def _pose(x: float, yaw: float) -> list[float]:
    return [float(x), 0.0, 0.0, 0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2))]


def make_synthetic_garden(root: str, size_px: int = 96, spacing: float = 0.75,
                          seed: int = 0) -> dict[str, str]:
    """
    Write the four traverses under root (once; reused when already there): name -> index path.

    size_px is the side of the square images; about 130 images per pass at the defaults.
    """
    marker = os.path.join(root, 'synthetic.json')
    want = {'version': _VERSION, 'size_px': size_px, 'spacing': spacing, 'seed': seed}
    out = {t: os.path.join(root, t, 'index.json') for t in TRAVERSES}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == want and all(os.path.exists(p) for p in out.values()):
                return out
    rng = np.random.default_rng(seed)
    wall = _wall(size_px, rng)
    ppm = size_px / SECTOR_SPAN_M  # wall pixels per metre of camera motion
    length_m = (wall.shape[1] - size_px) / ppm
    offsets = {'train_map': 0.0, 'val_map': 0.25, 'train_query': 0.5, 'val_query': 0.75}
    for name in TRAVERSES:
        kind = name.split('_')[1]
        folder = os.path.join(root, name)
        os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
        xs = np.arange(0.0, length_m - spacing, spacing) + offsets[name] * spacing
        if kind == 'query':
            xs = xs + rng.uniform(-0.1, 0.1, xs.size) * spacing
        paths, poses = [], []
        for k, x in enumerate(xs):
            dyaw = rng.uniform(-8.0, 8.0) if kind == 'query' else 0.0
            # turning left (positive yaw) looks at the wall further left (smaller column)
            c0 = int(round(x * ppm - dyaw / 90.0 * size_px))
            c0 = int(np.clip(c0, 0, wall.shape[1] - size_px))
            crop = wall[:, c0:c0 + size_px]
            if kind == 'query':
                crop = _dusk(crop, rng)
            rel = f'{k:05d}.png'
            cv2.imwrite(os.path.join(folder, 'images', rel), crop[:, :, ::-1])
            paths.append(rel)
            poses.append(_pose(x, np.radians(90.0 + dyaw)))
        write_index(out[name], 'images/', paths, poses)
    with open(marker, 'w') as f:
        json.dump(want, f)
    return out


__all__ = ['make_synthetic_garden', 'TRAVERSES']


def train_tiny_run(tmp_dir: str) -> tuple[str, str]:
    """Train one quick epoch (64x64) on a fresh synthetic garden; return (data root, run dir)."""
    from vpr_ros.training.fit.train import main as train_main

    root, run = os.path.join(tmp_dir, 'garden'), os.path.join(tmp_dir, 'run')
    make_synthetic_garden(root)
    assert train_main(['--data-root', root, '--train-map', 'train_map', '--train-query',
                       'train_query', '--image-size', '64', '64', '--workers', '0',
                       '--no-progress', '--epochs', '1', '--batch-size', '16',
                       '--pairs-per-epoch', '32', '--out', run]) == 0
    return root, run
