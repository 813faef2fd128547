"""
Deterministic image sequences with a revisit, made of real photos, for loop-detection tests.

Tests of place recognition need real image statistics (a CNN and ORB see nothing in noise), a
camera that moves, and a place seen twice. This builds that from photos bundled with
scikit-image, offline: two "walls" of photos side by side, and a camera that drives along wall A
(first pass), turns to wall B and drives back along it, then drives along the start of wall A
again (the revisit), with small offsets, brightness changes and noise.

World geometry (metres, REP-103: yaw is the heading of the camera's +x axis): wall A faces the
camera at y = 0 looking +y (yaw +90°), moving +x; wall B at y = -5 m looking -y (yaw -90°),
moving -x. World x = crop centre column / 100 px per metre, z = -crop row offset / 100. One
frame per `period_s` (1 s by default), so a 30 s exclusion window spans 30 frames.

Usage::

    from image_sequences import make_sequence
    seq = make_sequence()                 # ~70 frames, 240x320 RGB uint8
    seq.frames[i], seq.stamps_ns[i], seq.poses[i] (7-vector), seq.pose(i) (vpr_ros Pose)
    seq.revisits[i]   # revisit frame i -> first-pass frames whose crop overlaps it >= 50 %
    seq.revisit_of[i] # revisit frame i -> the nearest first-pass frame
    make_sequence(glitch=True).glitch_index  # one wall-B frame showing a wall-A place
"""
from dataclasses import dataclass, field
import functools
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import skimage.data

PX_PER_M = 100.0
WALL_B_Y_M = -5.0
ROW_H = 300  # photos are resized to this height before being put side by side
WALL_A = ('astronaut', 'coffee', 'chelsea', 'rocket')
WALL_B = ('hubble_deep_field', 'immunohistochemistry', 'camera', 'retina')


def photo(name: str) -> np.ndarray:
    """Load a scikit-image photo as HxWx3 RGB uint8 (gray replicated, retina cut to the eye)."""
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[:, :, :3]
    if name == 'retina':  # the eye fundus fills only the centre of a black square
        img = img[300:1100, 300:1100]
    return np.ascontiguousarray(img, dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def wall(names: tuple[str, ...], height: int = ROW_H) -> np.ndarray:
    """Photos resized to one height and concatenated left to right: a panorama to drive along."""
    parts = []
    for n in names:
        img = photo(n)
        w = round(img.shape[1] * height / img.shape[0])
        parts.append(cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA))
    out = np.concatenate(parts, axis=1)
    out.flags.writeable = False
    return out


@dataclass
class ImageSequence:
    """Frames with stamps, poses and ground truth of which frames revisit which."""

    frames: list[np.ndarray] = field(repr=False)
    stamps_ns: np.ndarray = field(repr=False)        # (N,) int64
    poses: np.ndarray = field(repr=False)            # (N, 7) [tx, ty, tz, qx, qy, qz, qw]
    crops: np.ndarray = field(repr=False)            # (N, 3) int: wall (0=A, 1=B), col, row
    first_pass: range                                # frames of the first pass along wall A
    revisits: dict[int, list[int]]                   # revisit frame -> overlapping first-pass
    revisit_of: dict[int, int]                       # revisit frame -> nearest first-pass frame
    glitch_index: int | None = None                  # wall-B frame showing a wall-A place
    glitch_of: int | None = None                     # the first-pass frame it shows

    def __len__(self) -> int:
        return len(self.frames)

    def pose(self, i: int):
        """Pose of frame i as a vpr_ros Pose (imported here so the data needs no vpr_ros)."""
        from vpr_ros.core.pose_buffer import Pose
        return Pose.from_vector(int(self.stamps_ns[i]), self.poses[i])

    def overlap(self, i: int, j: int) -> float:
        """Fraction of frame i's crop area that frame j's crop covers (0 on different walls)."""
        (wi, xi, yi), (wj, xj, yj) = self.crops[i], self.crops[j]
        if wi != wj:
            return 0.0
        h, w = self.frames[i].shape[:2]
        return max(0, w - abs(int(xi) - int(xj))) * max(0, h - abs(int(yi) - int(yj))) / (h * w)


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


def make_sequence(size_hw: tuple[int, int] = (240, 320), step_px: int = 40,
                  n_revisit: int = 12, revisit_offset_px: tuple[int, int] = (13, 7),
                  glitch: bool = False, period_s: float = 1.0, start_s: float = 100.0,
                  noise: float = 3.0, seed: int = 0) -> ImageSequence:
    """
    Build the first pass (wall A), the way back (wall B), and a revisit of wall A's start.

    `revisit_offset_px` (dx, dy) shifts the revisit crops against the first pass, `noise` is the
    Gaussian pixel noise sigma; each frame also gets a random brightness gain in [0.9, 1.1] and a
    row jitter of up to ±4 px. With `glitch`, the middle wall-B frame is replaced by a view of a
    first-pass place: an isolated false match that temporal consistency should suppress.
    """
    h, w = size_hw
    rng = np.random.default_rng(seed)
    walls = (wall(WALL_A), wall(WALL_B))
    row_room = ROW_H - h
    if row_room < 16 or min(a.shape[1] for a in walls) < w + 4 * step_px:
        raise ValueError(f'frame size {size_hw} too large for the {ROW_H}-px walls')
    plan = []  # (wall, col, row)
    a_cols = range(0, walls[0].shape[1] - w + 1, step_px)
    b_cols = range(walls[1].shape[1] - w, -1, -step_px)
    mid = row_room // 2
    for c in a_cols:
        plan.append((0, c, mid + int(rng.integers(-4, 5))))
    n_first = len(plan)
    for c in b_cols:
        plan.append((1, c, mid + int(rng.integers(-4, 5))))
    dx, dy = revisit_offset_px
    for k in range(n_revisit):
        c = min(a_cols[min(k, len(a_cols) - 1)] + dx, walls[0].shape[1] - w)
        plan.append((0, max(c, 0), int(np.clip(mid + dy + rng.integers(-4, 5), 0, row_room))))
    glitch_index = glitch_of = None
    if glitch:
        glitch_index = n_first + len(b_cols) // 2
        glitch_of = n_first // 2
        src = plan[glitch_of]
        plan[glitch_index] = (0, src[1] + 5, src[2])  # shows wall A, pose stays on wall B

    frames, poses = [], []
    for i, (wi, col, row) in enumerate(plan):
        crop = walls[wi][row:row + h, col:col + w].astype(np.float32)
        crop *= rng.uniform(0.9, 1.1)
        if noise > 0:
            crop += rng.normal(0.0, noise, crop.shape).astype(np.float32)
        frames.append(np.clip(crop, 0, 255).astype(np.uint8))
        pw, pcol, prow = plan[i] if i != glitch_index else plan[i - 1]
        x = (pcol + w / 2) / PX_PER_M
        z = -(prow - mid) / PX_PER_M
        if pw == 0:
            poses.append(np.r_[x, 0.0, z, _yaw_quat(np.pi / 2)])
        else:
            poses.append(np.r_[x, WALL_B_Y_M, z, _yaw_quat(-np.pi / 2)])
    stamps = (np.int64(round(start_s * 1e9))
              + np.arange(len(plan), dtype=np.int64) * np.int64(round(period_s * 1e9)))
    crops = np.array(plan, dtype=np.int64)
    if glitch_index is not None:
        crops[glitch_index] = plan[glitch_index - 1]  # ground truth: the place it really is
    seq = ImageSequence(frames, stamps, np.array(poses), crops, range(n_first), {}, {},
                        glitch_index, glitch_of)
    for i in range(n_first + len(b_cols), len(plan)):
        over = [j for j in seq.first_pass if seq.overlap(i, j) >= 0.5]
        seq.revisits[i] = over
        seq.revisit_of[i] = max(over, key=lambda j: seq.overlap(i, j))
    return seq


def unrelated_photos(size_hw: tuple[int, int] = (240, 320)) -> list[np.ndarray]:
    """Crops of photos that appear in no sequence wall: negatives for verification tests."""
    h, w = size_hw
    out = []
    for name in ('stereo_motorcycle', 'coins', 'clock', 'moon'):
        img = photo(name)
        img = cv2.resize(img, (max(w, img.shape[1]), max(h, img.shape[0])))
        out.append(np.ascontiguousarray(img[:h, :w]))
    return out


def sim_day_loop() -> tuple[list[str], list[int], np.ndarray, dict]:
    """
    Load the demo's simulated day loop: frame files, stamps (ns), poses, camera intrinsics.

    Rendered (or found in the cache) by a child process: OSMesa rendering and torchvision in
    one process segfault.
    """
    code = ('from vpr_ros.sim.dataset import default_dataset; '
            'print(default_dataset(log=lambda *a, **k: None).root)')
    proc = subprocess.run([sys.executable, '-c', code], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = proc.stdout.strip().splitlines()[-1]
    with open(os.path.join(root, 'sim_meta.json')) as f:
        meta = json.load(f)
    with open(os.path.join(root, 'folder', 'day_loop.json')) as f:
        poses = np.array(json.load(f)['poses'])
    files = sorted(glob.glob(os.path.join(root, 'folder', 'day_loop', '*.png')))
    tr = meta['traverses'][0]
    period = int(1e9 / meta['params']['rate_hz'])
    stamps = [tr['start_ns'] + k * period for k in range(len(files))]
    return files, stamps, poses, meta['intrinsics']
