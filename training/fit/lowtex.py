"""
Low-texture hard negatives (``vpr-train --lowtex-negatives FRAC``) against textureless collapse.

A network trained only on pairs of real views never sees two frames without structure, and
nothing stops it from mapping all of them to nearly one descriptor (two different blank walls:
cosine 0.97 after GCL training, 0.85 for ImageNet). This adds, to every epoch, FRAC × the
epoch's pairs of *low-texture pairs*: two low-texture frames made from two different training
images, with graded label ψ = 0 (no shared view), so the loss pushes them at least τ apart like
any hard negative.

A low-texture frame is a random close-up crop of a training image (a quarter to a third of its
side, scaled back up), smoothed by a Gaussian of 6-12 % of the frame width, with a random
brightness ramp of up to ±20 and sensor noise σ 2: the colour of a real surface with no
structure. Measurable definition: a candidate is kept only when the node's degenerate-frame gate
(`vpr_ros.core.degenerate`, default thresholds) rejects it; otherwise another crop is drawn.
No blank wall of `training.eval.blank_walls` (the measure) is ever trained on.

The frames are made once per run (seeded), preprocessed like every training image, and, when
the frozen-trunk feature cache is on, run through the frozen prefix once like the rest. The
pairs of an epoch are a function of (seed, epoch, rank) and are shuffled in among the ψ pairs.
"""
import dataclasses
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vpr_ros.core.degenerate import check_stats, DegenerateThresholds, frame_stats
from vpr_ros.training.fit.pair_hooks import PairHook, PairSetup

#: Low-texture frames made per run (at most; fewer when there are fewer training images).
DEFAULT_N_FRAMES = 256
_MAX_TRIES = 8


def add_lowtex_arguments(group) -> None:
    """Add the vpr-train option (default 0: off, training unchanged)."""
    group.add_argument('--lowtex-negatives', type=float, default=0.0, metavar='FRAC',
                       help='add FRAC x pairs-per-epoch pairs of two different low-texture '
                            'frames (blurred close-ups of training images that the degenerate '
                            'gate rejects) with label psi = 0, against the textureless collapse')


def _candidate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One blurred close-up of img with a brightness ramp and sensor noise (HxWx3 uint8)."""
    h, w = img.shape[:2]
    side = rng.uniform(0.25, 0.34)
    ch, cw = max(2, int(h * side)), max(2, int(w * side))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    sigma = float(rng.uniform(0.06, 0.12)) * w
    out = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma,
                           borderType=cv2.BORDER_REFLECT)
    gx, gy = rng.uniform(-20, 20, 2)
    ramp = (np.linspace(-gx, gx, w)[None, :] + np.linspace(-gy, gy, h)[:, None])[..., None]
    out = out + ramp + rng.normal(0.0, 2.0, (h, w, 1))
    return np.clip(out, 0, 255).astype(np.uint8)


def is_low_texture(img: np.ndarray, thresholds: DegenerateThresholds | None = None) -> bool:
    """Tell whether the node's degenerate-frame gate rejects img (the definition used)."""
    return check_stats(frame_stats(img, 'rgb8'), thresholds or DegenerateThresholds()) is not None


def make_lowtex_frames(paths: Sequence[str], n: int, seed: int = 0
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """
    Up to n low-texture frames, each from a different training image.

    Returns (frames, source index into paths). A source whose crops all pass the gate after
    `_MAX_TRIES` draws is skipped, so every returned frame is one the gate rejects.
    """
    from vpr_ros.training.data.dataset import load_image

    rng = np.random.default_rng([int(seed), 0x10E7])
    order = rng.permutation(len(paths))
    frames, sources = [], []
    for i in order:
        if len(frames) >= n:
            break
        img = load_image(paths[int(i)])
        if img is None or min(img.shape[:2]) < 8:
            continue
        for _ in range(_MAX_TRIES):
            cand = _candidate(img, rng)
            if is_low_texture(cand):
                frames.append(cand)
                sources.append(int(i))
                break
    return frames, np.asarray(sources, dtype=np.int64)


def lowtex_pairs(n_frames: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(n_pairs, 2) indices of two different frames (frames have different sources)."""
    if n_frames < 2 or n_pairs <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    a = rng.integers(0, n_frames, n_pairs)
    b = (a + rng.integers(1, n_frames, n_pairs)) % n_frames   # never a == b
    return np.stack([a, b], axis=1)


class LowtexSampler(Sampler):
    """
    The ψ pair sampler plus low-texture pairs, shuffled together.

    Low-texture pairs are yielded as (-1 - i, -1 - j, 0.0): negative indices name frame i and
    j of `LowtexPairs`, so the ψ indices keep their meaning. Everything else (set_epoch,
    state_dict, counters, ...) is the wrapped sampler's, so checkpoints and resume are unchanged.
    """

    def __init__(self, base, n_frames: int, frac: float, seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        self.base = base
        self.n_frames = int(n_frames)
        self.n_extra = int(round(float(frac) * len(base))) if self.n_frames >= 2 else 0
        self.seed, self.rank = int(seed), int(rank)

    def __getattr__(self, name: str):
        if name == 'base':
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base) + self.n_extra

    def items(self, epoch: int | None = None) -> list[tuple[int, int, float]]:
        """Return this rank's pairs of one epoch: ψ and low-texture pairs, shuffled together."""
        epoch = self.base.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank, 0x10E7])
        base = list(zip(*(getattr(self.base.rank_pairs(epoch), k).tolist()
                          for k in ('anchor', 'partner', 'label'))))
        extra = [(-1 - int(a), -1 - int(b), 0.0)
                 for a, b in lowtex_pairs(self.n_frames, self.n_extra, rng)]
        out = base + extra
        return [out[k] for k in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        return iter(self.items())


class LowtexPairs(Dataset):
    """The pair dataset (images or cached features) plus the low-texture frames by -1 - i."""

    def __init__(self, base: Dataset, frames: torch.Tensor) -> None:
        self.base = base
        self.frames = frames

    def __len__(self) -> int:
        return len(self.base) + len(self.frames)

    def __getitem__(self, item: tuple[int, int, float]):
        a, b, label = int(item[0]), int(item[1]), float(item[2])
        if a >= 0 and b >= 0:
            return self.base[item]
        if a >= 0 or b >= 0:
            raise ValueError(f'mixed low-texture / image pair {item}')
        return (self.frames[-1 - a], self.frames[-1 - b],
                torch.tensor(label, dtype=torch.float32))


def frame_tensors(frames: Sequence[np.ndarray], spec, net=None, cut: int = 0,
                  device: torch.device | None = None) -> torch.Tensor:
    """Preprocessed frames (3,H,W each), or their frozen-prefix output when cut > 0."""
    from vpr_ros.core.preprocess import preprocess

    x = torch.stack([preprocess(f, spec.image_size, 'rgb8', mean=spec.mean, std=spec.std)
                     for f in frames])
    if not cut:
        return x
    was = net.training
    net.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), 16):
                xb = x[i:i + 16].to(device, memory_format=torch.channels_last)
                out.append(net.trunk_prefix(xb, cut).float().cpu())
    finally:
        net.train(was)
    return torch.cat(out)


def lowtex_hook(frac: float, n_frames: int = DEFAULT_N_FRAMES) -> Optional[PairHook]:
    """
    Return the vpr-train pair hook of ``--lowtex-negatives FRAC`` (None for 0: no change).

    The hook makes the frames from the training images, mixes their pairs into the epoch's
    sampler (`LowtexSampler`) and serves them beside the dataset's (`LowtexPairs`).
    """
    frac = float(frac or 0.0)
    if frac <= 0:
        return None

    def hook(setup: PairSetup) -> PairSetup:
        frames, _ = make_lowtex_frames(setup.image_paths, n_frames, setup.seed)
        if len(frames) < 2:
            raise ValueError(f'--lowtex-negatives: only {len(frames)} low-texture frame(s) made')
        tensors = frame_tensors(frames, setup.spec, setup.net, setup.cut, setup.device)
        sampler = LowtexSampler(setup.sampler, len(frames), frac, setup.seed, setup.rank)
        if setup.main:
            print(f'vpr-train: {len(frames)} low-texture frames, {sampler.n_extra} low-texture '
                  f'pairs (psi = 0) per epoch and rank', flush=True)
        return dataclasses.replace(setup, sampler=sampler,
                                   dataset=LowtexPairs(setup.dataset, tensors))

    return hook


__all__ = ['add_lowtex_arguments', 'DEFAULT_N_FRAMES', 'frame_tensors', 'is_low_texture',
           'LowtexPairs', 'LowtexSampler', 'lowtex_pairs', 'lowtex_hook', 'make_lowtex_frames']
