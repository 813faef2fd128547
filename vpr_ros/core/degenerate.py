"""
Degenerate-frame gate: frames with too little structure are neither matched nor stored.

A lens cap, a blank wall, a frame washed out by the sun or smeared by motion carries no place
information, yet a CNN still gives it a descriptor, and two such descriptors look alike (a
trained model scored two different walls at cosine 0.975). Matching them produces false loop
closures, and storing them as keyframes makes every later blank frame "revisit" them. The gate
is cheap (one gray conversion, a histogram, FAST corners and a Laplacian on at most 320 px),
so it runs on every frame before the encoder's result is used.

Checks, in this order (the first that fails names the reason):

* ``underexposed`` / ``overexposed``: more than `max_dark_fraction` of the pixels <= 10 or
  more than `max_bright_fraction` >= 245 (lens cap, sun in the lens, auto-exposure lag).
* ``low_contrast``: gray standard deviation below `min_contrast` (fog that hides everything,
  a wall filling the view).
* ``low_entropy``: gray-histogram entropy below `min_entropy_bits` (flat images with noise).
* ``few_keypoints``: fewer than `min_keypoints` FAST corners (threshold 20) in the working
  image: a smooth wall with a brightness gradient has contrast but no corners (0; 6 with
  sensor noise sigma 6), while a smooth but real close-up (the retina photo of
  test/image_sequences.py, thin vessels only) has 18 and is kept.
* ``blurred``: variance of the Laplacian on the working image halved again (the halving
  averages sensor noise away: noise sigma 2 gives ~22 there, ~80 at full size) below
  `min_sharpness`.

The working image is the gray frame downsampled (area) to at most `work_size` px on its long
side; smaller frames are used as they are, so the thresholds mean the same for VGA and HD.

Measured (2026-12-01) with the defaults, by `test/test_degenerate.py`:

* Real corridor set (``../shared/data/corridor``, Milford 2013, 222 frames, 160x120): rejects 0.
  Lowest values: 72 FAST corners, contrast 54.5, entropy 7.26 bits, sharpness 941, dark 0.19.
* Simulated demo set (``vpr_ros.sim.dataset.default_dataset()``, 545 frames, 320x240, noon,
  evening, fog): rejects 0. Lowest values (fog): 47 corners, contrast 20.5, entropy 5.96 bits
  (noon), sharpness 140.
* Rejected: a black lens-cap frame with sensor noise (underexposed), a uniform wall with noise
  sigma 2 (low_contrast), a wall with a brightness gradient and noise (few_keypoints, contrast
  11.8), a white-out (overexposed), and corridor frames under a Gaussian blur of sigma 4 px
  (no corners left: few_keypoints; with the corner check off, sharpness < 50: blurred). Milder
  blur (sigma 2, a 9 px motion streak) passes on the corridor: the gate removes frames with
  nothing in them, it does not grade image quality; geometric verification handles the rest.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from vpr_ros.core.errors import VPRError
from vpr_ros.core.preprocess import to_rgb

REASONS = ('underexposed', 'overexposed', 'low_contrast', 'low_entropy', 'few_keypoints',
           'blurred')
_DARK = 10
_BRIGHT = 245
_FAST_THRESHOLD = 20


@dataclass(frozen=True)
class DegenerateThresholds:
    """
    Gate thresholds; a check whose threshold is 0 (fractions: 1.0) is off.

    Defaults sit 2x or more below the lowest value of any real or simulated frame measured
    (entropy, a logarithm: 1.5x; module docstring) and still reject blank walls and lens caps.
    """

    max_dark_fraction: float = 0.9     # pixels <= 10 of 255
    max_bright_fraction: float = 0.9   # pixels >= 245 of 255
    min_contrast: float = 8.0          # gray std, 0-255 scale (real frames >= 20)
    min_entropy_bits: float = 4.0      # gray histogram entropy (real >= 6; noise sigma 2: 3)
    min_keypoints: int = 10            # FAST-20 corners in the working image (real >= 47)
    min_sharpness: float = 50.0        # Laplacian variance at half working size (real >= 150)
    work_size: int = 320               # long side of the working image, px

    def validate(self) -> None:
        """Raise VPRError naming the first bad field, so a bad config fails at start-up."""
        for name in ('max_dark_fraction', 'max_bright_fraction'):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise VPRError(f'{name} must be in (0, 1], got {getattr(self, name)}')
        for name in ('min_contrast', 'min_entropy_bits', 'min_keypoints', 'min_sharpness'):
            if getattr(self, name) < 0:
                raise VPRError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.work_size < 32:
            raise VPRError(f'work_size must be >= 32, got {self.work_size}')


@dataclass(frozen=True)
class FrameStats:
    """What the gate measured on one frame (for logs, tuning and the docstring's figures)."""

    dark_fraction: float
    bright_fraction: float
    contrast: float
    entropy_bits: float
    keypoints: int
    sharpness: float


def _gray(image: np.ndarray, encoding: str) -> np.ndarray:
    """Gray uint8 image of any core encoding (ImageError when it is not one)."""
    rgb = to_rgb(image, encoding)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _shrink(gray: np.ndarray, long_side: int) -> np.ndarray:
    h, w = gray.shape
    scale = long_side / max(h, w)
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def frame_stats(image: np.ndarray, encoding: str = 'rgb8',
                work_size: int = 320) -> FrameStats:
    """Measure one frame (any core encoding); the numbers the gate compares."""
    gray = _shrink(_gray(image, encoding), work_size)
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64) / gray.size
    p = hist[hist > 0]
    entropy = float(-(p * np.log2(p)).sum())
    h, w = gray.shape
    if min(h, w) >= 8:
        fast = cv2.FastFeatureDetector_create(_FAST_THRESHOLD)
        keypoints = len(fast.detect(gray))
        half = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        sharpness = float(cv2.Laplacian(half, cv2.CV_64F).var())
    else:  # too small for corners or a Laplacian: nothing to measure
        keypoints, sharpness = 0, 0.0
    return FrameStats(float(hist[:_DARK + 1].sum()), float(hist[_BRIGHT:].sum()),
                      float(gray.std()), entropy, int(keypoints), sharpness)


def check_stats(stats: FrameStats, t: DegenerateThresholds) -> str | None:
    """Return the first failed check as 'reason: detail', or None for a usable frame."""
    if stats.dark_fraction > t.max_dark_fraction:
        return f'underexposed: {stats.dark_fraction:.0%} of pixels <= {_DARK}'
    if stats.bright_fraction > t.max_bright_fraction:
        return f'overexposed: {stats.bright_fraction:.0%} of pixels >= {_BRIGHT}'
    if stats.contrast < t.min_contrast:
        return f'low_contrast: gray std {stats.contrast:.1f} < {t.min_contrast:g}'
    if stats.entropy_bits < t.min_entropy_bits:
        return f'low_entropy: {stats.entropy_bits:.2f} bits < {t.min_entropy_bits:g}'
    if stats.keypoints < t.min_keypoints:
        return f'few_keypoints: {stats.keypoints} corners < {t.min_keypoints}'
    if stats.sharpness < t.min_sharpness:
        return f'blurred: Laplacian variance {stats.sharpness:.1f} < {t.min_sharpness:g}'
    return None


def reason_key(reason: str) -> str:
    """Return the counter name of a reason ('few_keypoints: 3 corners < 20' -> 'few_keypoints')."""
    return reason.split(':', 1)[0]


class DegenerateGate:
    """Callable gate: `gate(image, encoding)` -> reason string, or None for a usable frame."""

    def __init__(self, thresholds: DegenerateThresholds | None = None) -> None:
        self.thresholds = thresholds if thresholds is not None else DegenerateThresholds()
        self.thresholds.validate()

    def __call__(self, image: np.ndarray, encoding: str = 'rgb8') -> str | None:
        """Check one frame; an image the core cannot read raises ImageError as elsewhere."""
        return check_stats(frame_stats(image, encoding, self.thresholds.work_size),
                           self.thresholds)


def degenerate_reason(image: np.ndarray, encoding: str = 'rgb8',
                      thresholds: DegenerateThresholds | None = None) -> str | None:
    """One-shot form of `DegenerateGate`."""
    return DegenerateGate(thresholds)(image, encoding)
