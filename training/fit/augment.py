"""
Training augmentation (``vpr-train --augment``): what changes between a robot's sessions.

A model trained on simulated images only learns the simulator's light and camera unless training
shows it the changes a real camera makes to one place: exposure and white balance, contrast and
tone curve, grey (monochrome) cameras, blur, sensor noise that grows in the dark, JPEG; and a
camera mounted a little differently (crop / zoom, small roll, a slight perspective change).
`augment_image` makes one such version of a uint8 RGB image from a seeded generator:

* ``photo``: in linear light, an exposure change of 2^U(-2, +1) stops and per-channel white
  balance gains (one LUT per channel); a Gaussian blur up to 0.4 % of the image width (focus,
  motion); shot and read noise, stronger when the exposure went down (the camera's gain up);
  then the tone curve (contrast about the image's mean, gamma); grey; JPEG at quality 25-90.
* ``geo``: one perspective warp: a crop of 80-100 % of the side anywhere in the frame, a roll of
  up to ±5°, each corner moved by up to 3 % of the side (pitch/yaw of the mount); borders are
  reflected, so no black wedge tells the network what was done.

Each operation applies with its own probability (`AugmentParams`), so a view is rarely changed in
every way at once. With the frozen-trunk feature cache (`training.fit.feature_cache`), each image
is cached as the clean view plus ``--aug-views`` K augmented views (`view_rng`: a pure function
of seed, image and view), and a step draws one of the K + 1 views per image; without the cache
every image load is augmented afresh (`OnlineAugment`), shown clean with probability 1/(K + 1)
as in the cache. ``featgeo`` warps the cached feature maps themselves per step (`warp_features`:
zoom, shift, roll on the 7x7 grid), geometric variety at no cache cost.
Validation and evaluation never augment.
"""
import argparse
import dataclasses
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vpr_ros.core.errors import VPRError

#: --augment choices: '+'-joined parts; 'none' trains on the images as they are.
AUGMENT_PARTS = ('photo', 'geo', 'featgeo')
AUGMENT_CHOICES = ('none', 'photo', 'geo', 'photo+geo', 'photo+featgeo', 'photo+geo+featgeo')
DEFAULT_AUGMENT = 'none'
DEFAULT_VIEWS = 4
#: Bumped whenever `augment_image` changes what it makes for a given generator (stored views).
AUGMENT_VERSION = 1
_GAMMA_LINEAR = 2.2


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Ranges and probabilities of every operation (why each: the module docstring)."""

    p_exposure: float = 0.8
    exposure_stops: tuple[float, float] = (-2.0, 1.0)
    p_white_balance: float = 0.5
    white_balance: float = 0.15          # R and B gains relative to G: 1 ± this
    p_contrast: float = 0.5
    contrast: tuple[float, float] = (0.6, 1.4)
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.4)
    p_grey: float = 0.1
    p_blur: float = 0.25
    blur_sigma_frac: float = 0.004       # of the image width
    p_noise: float = 0.4
    read_noise: tuple[float, float] = (1.0, 6.0)    # grey levels at unit gain
    shot_noise: tuple[float, float] = (0.0, 0.6)    # x sqrt(grey level) at unit gain
    max_noise_gain: float = 4.0
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (25, 90)
    p_crop: float = 0.7
    crop_side: tuple[float, float] = (0.8, 1.0)
    p_roll: float = 0.5
    roll_deg: float = 5.0
    p_perspective: float = 0.5
    perspective_frac: float = 0.03
    feature_zoom: tuple[float, float] = (0.75, 1.0)   # featgeo: fraction of the map kept
    feature_roll_deg: float = 5.0


def parse_augment(value: str) -> frozenset[str]:
    """Return the parts of an --augment value ('none': none); ValueError for unknown ones."""
    parts = frozenset(p for p in str(value).split('+') if p and p != 'none')
    unknown = parts - set(AUGMENT_PARTS)
    if unknown:
        raise ValueError(f'unknown --augment part(s) {sorted(unknown)}; parts: {AUGMENT_PARTS}')
    return parts


def add_augment_arguments(group) -> None:
    """Add vpr-train's augmentation options (default: none, training unchanged)."""
    group.add_argument('--augment', choices=AUGMENT_CHOICES, default=DEFAULT_AUGMENT,
                       help='photo: exposure, white balance, contrast, gamma, grey, blur, noise, '
                            'JPEG; geo: crop, roll, perspective (a camera mounted differently); '
                            'featgeo: zoom/shift/roll of the cached feature maps per step '
                            '(needs the feature cache)')
    group.add_argument('--aug-views', type=int, default=DEFAULT_VIEWS, metavar='K',
                       help='augmented views cached per image besides the clean one (the frozen '
                            'blocks run K + 1 times per image); a step draws one of the K + 1')


def view_rng(seed: int, image: int, view: int) -> np.random.Generator:
    """Return the generator of one cached view: the same (seed, image, view), the same view."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(image), int(view), 0xA06])


def _lut(fn, channels: int = 3) -> np.ndarray:
    """Tabulate fn(x, channel) over the grey levels: a (256, 1, C) uint8 LUT for cv2.LUT."""
    x = np.arange(256, dtype=np.float32) / 255.0
    cols = [np.clip(fn(x, c), 0.0, 1.0) for c in range(channels)]
    return np.round(np.stack(cols, axis=1) * 255.0).astype(np.uint8)[:, None, :]


def _exposure(img: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> tuple:
    """Exposure and white balance in linear light; returns (image, exposure gain)."""
    gain = 1.0
    wb = np.ones(3, dtype=np.float32)
    if rng.random() < p.p_exposure:
        gain = float(2.0 ** rng.uniform(*p.exposure_stops))
    if rng.random() < p.p_white_balance:
        wb[[0, 2]] = 1.0 + rng.uniform(-p.white_balance, p.white_balance, 2)
    if gain == 1.0 and np.all(wb == 1.0):
        return img, gain
    lut = _lut(lambda x, c: (x ** _GAMMA_LINEAR * gain * wb[c]) ** (1.0 / _GAMMA_LINEAR))
    return cv2.LUT(img, lut), gain


def _blur_noise(img: np.ndarray, rng: np.random.Generator, p: AugmentParams,
                gain: float) -> np.ndarray:
    """Optical blur, then shot + read noise amplified by the gain a darker exposure needs."""
    if rng.random() < p.p_blur:
        sigma = max(0.3, float(rng.uniform(0.0, p.blur_sigma_frac)) * img.shape[1])
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT)
    if rng.random() < p.p_noise:
        amp = min(p.max_noise_gain, max(1.0, 1.0 / gain))
        read = float(rng.uniform(*p.read_noise)) * amp
        shot = float(rng.uniform(*p.shot_noise)) * np.sqrt(amp)
        sigma = (read + shot * np.sqrt(np.arange(256, dtype=np.float32)))[img]
        img = np.clip(img + _unit_noise(img.shape, rng) * sigma + 0.5, 0, 255).astype(np.uint8)
    return img


_NOISE: list[np.ndarray] = []


def _unit_noise(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """
    Return standard normal noise of ``shape``: a window of one fixed bank, placed by rng.

    Drawing fresh normals cost 17 ms for a 320x240 image here, more than the rest of the
    augmentation; a random window of a 4M-sample bank is white noise all the same.
    """
    n = int(np.prod(shape))
    if not _NOISE:
        _NOISE.append(np.random.default_rng(0xA06).standard_normal(1 << 22, dtype=np.float32))
    bank = _NOISE[0]
    if n > bank.size // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, bank.size - n))
    return bank[start:start + n].reshape(shape)


def _tone(img: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> np.ndarray:
    """Tone curve (contrast about the image mean, gamma), grey, JPEG."""
    c = float(rng.uniform(*p.contrast)) if rng.random() < p.p_contrast else 1.0
    g = float(rng.uniform(*p.gamma)) if rng.random() < p.p_gamma else 1.0
    if c != 1.0 or g != 1.0:
        mean = float(img.mean()) / 255.0
        img = cv2.LUT(img, _lut(lambda x, _: (mean + (x - mean) * c).clip(0, 1) ** g))
    if rng.random() < p.p_grey:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if rng.random() < p.p_jpeg:
        q = int(rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode('.jpg', img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return img


def _geometric(img: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> np.ndarray:
    """One perspective warp: crop (zoom and shift), roll, corner jitter; borders reflected."""
    h, w = img.shape[:2]
    side = float(rng.uniform(*p.crop_side)) if rng.random() < p.p_crop else 1.0
    cw, ch = w * side, h * side
    x0, y0 = rng.uniform(0.0, w - cw), rng.uniform(0.0, h - ch)
    quad = np.array([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]], np.float64)
    if rng.random() < p.p_roll:
        a = np.radians(rng.uniform(-p.roll_deg, p.roll_deg))
        centre = quad.mean(axis=0)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        quad = (quad - centre) @ rot.T + centre
    if rng.random() < p.p_perspective:
        quad = quad + rng.uniform(-1.0, 1.0, (4, 2)) * p.perspective_frac * np.array([cw, ch])
    if side == 1.0 and np.allclose(quad, [[0, 0], [w, 0], [w, h], [0, h]]):
        return img
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)


def augment_image(img: np.ndarray, rng: np.random.Generator, parts: Sequence[str] | frozenset,
                  params: AugmentParams | None = None) -> np.ndarray:
    """
    One augmented version of an HxWx3 uint8 RGB image (same shape and dtype; new array).

    parts: 'photo' and/or 'geo' ('featgeo' acts on feature maps, `warp_features`). The same
    generator state gives the same image.
    """
    p = params or AugmentParams()
    out = np.ascontiguousarray(img)
    if 'geo' in parts:
        out = _geometric(out, rng, p)
    if 'photo' in parts:
        out, gain = _exposure(out, rng, p)
        out = _blur_noise(out, rng, p, gain)
        out = _tone(out, rng, p)
    return np.ascontiguousarray(out) if out is not img else out.copy()


class ViewTransform:
    """The image transform of cached view ``view`` (> 0): `augment_image` with `view_rng`."""

    def __init__(self, parts: frozenset, seed: int, view: int,
                 params: AugmentParams | None = None) -> None:
        self.parts, self.seed, self.view, self.params = parts, int(seed), int(view), params

    def __call__(self, img: np.ndarray, index: int) -> np.ndarray:
        return augment_image(img, view_rng(self.seed, index, self.view), self.parts, self.params)

    def key(self) -> dict:
        """Return what this view's images depend on (the feature cache's store key)."""
        return {'view': self.view, 'seed': self.seed, 'parts': sorted(self.parts),
                'params': dataclasses.asdict(self.params or AugmentParams()),
                'version': AUGMENT_VERSION}


class OnlineAugment:
    """
    Augmentation when images are read every step (no feature cache): a fresh version per load.

    The generator is seeded from torch's (per DataLoader worker, itself seeded from the run's
    seed), so a run with the same seed and workers augments the same way. An image is left
    clean with probability ``p_clean`` (1 / (K + 1), as the cache's clean view).
    """

    def __init__(self, parts: frozenset, p_clean: float,
                 params: AugmentParams | None = None) -> None:
        self.parts, self.p_clean, self.params = parts, float(p_clean), params

    def __call__(self, img: np.ndarray, index: int = 0) -> np.ndarray:
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, ()).item()))
        if rng.random() < self.p_clean:
            return img
        return augment_image(img, rng, self.parts, self.params)


def warp_features(x: torch.Tensor, params: AugmentParams | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """
    ``featgeo``: per-sample zoom, shift and roll of a batch of feature maps (N, C, H, W).

    The trained blocks see the scene framed a little differently without any image being
    re-run through the frozen blocks. Bilinear resampling, borders repeated.
    """
    p = params or AugmentParams()
    n = x.shape[0]
    kw = {'generator': generator, 'device': 'cpu'}
    lo, hi = p.feature_zoom
    s = lo + (hi - lo) * torch.rand(n, **kw)
    a = torch.deg2rad((torch.rand(n, **kw) * 2 - 1) * p.feature_roll_deg)
    t = (torch.rand(n, 2, **kw) * 2 - 1) * (1 - s)[:, None]   # stay inside the map
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = s * torch.cos(a), -s * torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = s * torch.sin(a), s * torch.cos(a)
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode='bilinear', padding_mode='border',
                         align_corners=False).to(x.dtype).contiguous(
                             memory_format=torch.channels_last)


def check_augment_args(args: argparse.Namespace) -> frozenset:
    """Return the parts of args.augment, checked with --aug-views (VPRError if at odds)."""
    parts = parse_augment(args.augment)
    if args.aug_views < 1 and parts - {'featgeo'}:
        raise VPRError('--aug-views must be >= 1 with --augment photo or geo')
    return parts


__all__ = ['add_augment_arguments', 'AUGMENT_CHOICES', 'AUGMENT_PARTS', 'augment_image',
           'AugmentParams', 'check_augment_args', 'DEFAULT_AUGMENT', 'DEFAULT_VIEWS',
           'OnlineAugment', 'parse_augment', 'view_rng', 'ViewTransform', 'warp_features']
