"""
The one image preprocessing used by the node, training and evaluation.

Every path into the encoder goes through here so that a descriptor computed live matches one
computed offline for the same picture. Images are numpy arrays plus a ROS-style ``encoding``
string; the result is a float32 tensor resized to the model's input size and normalised with
the model's mean/std (ImageNet by default). It is kept cheap because the node runs it per frame:
one ``cv2.resize`` on the raw pixels, a channel reorder and a single fused multiply-add.
"""
from typing import Sequence

import cv2
import numpy as np
import torch

from vpr_ros.core.bitdepth import to_8bit
from vpr_ros.core.errors import ImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# encoding -> (channels, dtype)
ENCODINGS = {
    'rgb8': (3, np.uint8),
    'bgr8': (3, np.uint8),
    'rgba8': (4, np.uint8),
    'bgra8': (4, np.uint8),
    'mono8': (1, np.uint8),
    'mono16': (1, np.uint16),
}

_ALIASES = {'8uc1': 'mono8', '16uc1': 'mono16', '8uc3': 'bgr8', '8uc4': 'bgra8'}


def _norm_encoding(encoding: str) -> str:
    if not isinstance(encoding, str):
        raise ImageError(f'image encoding must be a string, got {type(encoding).__name__}')
    enc = encoding.strip().lower()
    enc = _ALIASES.get(enc, enc)
    if enc not in ENCODINGS:
        raise ImageError(f'unknown image encoding {encoding!r}; supported: '
                         + ', '.join(sorted(ENCODINGS)))
    return enc


def _check(image: np.ndarray, encoding: str) -> tuple[np.ndarray, str]:
    """Validate ``image`` against ``encoding``; return it as HxW (mono) or HxWxC."""
    enc = _norm_encoding(encoding)
    if not isinstance(image, np.ndarray):
        raise ImageError(f'image must be a numpy array, got {type(image).__name__}')
    channels, dtype = ENCODINGS[enc]
    if image.ndim not in (2, 3):
        raise ImageError(f'image must be HxW or HxWxC, got shape {image.shape}')
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f'empty image (shape {image.shape})')
    got = 1 if image.ndim == 2 else image.shape[2]
    if got != channels:
        raise ImageError(f'encoding {enc!r} needs {channels} channel(s), image has {got} '
                         f'(shape {image.shape})')
    if image.dtype != dtype:
        raise ImageError(f'encoding {enc!r} needs dtype {np.dtype(dtype).name}, image is '
                         f'{image.dtype.name}')
    if image.ndim == 3 and channels == 1:
        image = image[:, :, 0]
    return image, enc


def _to_rgb_small(image: np.ndarray, enc: str) -> np.ndarray:
    """Channel conversion of an already validated (and usually already resized) image."""
    if enc == 'mono16':
        image = to_8bit(image)  # the one 16 -> 8 bit scaling (vpr_ros.core.bitdepth)
        enc = 'mono8'
    if enc == 'mono8':
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2RGB)
    if enc == 'rgb8':
        return image
    if enc == 'bgr8':
        return image[:, :, ::-1]
    if enc == 'rgba8':
        return image[:, :, :3]
    return image[:, :, 2::-1]  # bgra8


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Return ``image`` as a contiguous HxWx3 uint8 RGB array (for display and features)."""
    image, enc = _check(image, encoding)
    return np.ascontiguousarray(_to_rgb_small(image, enc))


def _resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    # mono16 is resized before the 8-bit conversion, keeping its precision for the average.
    if not image.flags['C_CONTIGUOUS']:
        image = np.ascontiguousarray(image)
    if h > ih or w > iw:
        # INTER_AREA degenerates to nearest neighbour when enlarging; bilinear is better there.
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    # INTER_AREA averages pixels when shrinking (no aliasing). Its general path is slow for
    # large frames (~15 ms for 1080p on one core); its factor-2 path is fast and exact, so
    # halve while the frame is at least twice the target (dropping an odd edge row/column),
    # then area-resize the remaining factor < 2. Same averaging, a fraction of the time.
    while ih >= 2 * h and iw >= 2 * w:
        ih, iw = ih // 2, iw // 2
        image = cv2.resize(image[:2 * ih, :2 * iw], (iw, ih), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def _check_size(size_hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise ImageError(f'size_hw must be (height, width), got {size_hw!r}') from None
    if h <= 0 or w <= 0:
        raise ImageError(f'size_hw must be positive, got {size_hw!r}')
    return h, w


def _scale_offset(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32).reshape(3)
    s = np.asarray(std, dtype=np.float32).reshape(3)
    # (x / 255 - m) / s == x * (1 / (255 s)) + (-m / s): one multiply-add per value.
    return (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)


def _fill(out: np.ndarray, image: np.ndarray, encoding: str, size_hw: tuple[int, int],
          scale: np.ndarray, offset: np.ndarray) -> None:
    """Write one preprocessed CHW image into ``out`` (a (3,H,W) float32 view)."""
    image, enc = _check(image, encoding)
    rgb = _to_rgb_small(_resize(image, size_hw), enc)
    for c in range(3):
        np.multiply(rgb[:, :, c], scale[c], out=out[c], casting='unsafe')
        out[c] += offset[c]


def preprocess(image: np.ndarray, size_hw: Sequence[int], encoding: str = 'rgb8',
               mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Resize and normalise one image to a float32 (3, H, W) tensor for the encoder."""
    return preprocess_batch([image], size_hw, encoding, mean, std)[0]


def preprocess_batch(images: Sequence[np.ndarray] | np.ndarray, size_hw: Sequence[int],
                     encoding: str = 'rgb8', mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """
    Preprocess a list of images (or an NxHxW[xC] array) into one (N, 3, H, W) tensor.

    Images may differ in size; each is resized to ``size_hw``. Written straight into one
    preallocated buffer so batching costs no extra copy.
    """
    h, w = _check_size(size_hw)
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ImageError(f'a batch array must be NxHxW or NxHxWxC, got shape {images.shape}')
    elif not isinstance(images, (list, tuple)):
        raise ImageError(f'images must be a list of arrays, got {type(images).__name__}')
    scale, offset = _scale_offset(mean, std)
    out = np.empty((len(images), 3, h, w), dtype=np.float32)
    n = len(images)
    for i, image in enumerate(images):
        try:
            _fill(out[i], image, encoding, (h, w), scale, offset)
        except ImageError as e:
            if n == 1:
                raise
            raise ImageError(f'image {i} of {n}: {e}') from None
    return torch.from_numpy(out)
