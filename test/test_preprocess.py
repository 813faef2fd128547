"""Preprocessing: each encoding gives the same tensor for one picture; bad input is refused."""
import time

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from vpr_ros.core.errors import ImageError
from vpr_ros.core.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess,
    preprocess_batch,
    to_rgb,
)

SIZE = (96, 128)


@pytest.fixture(scope='module')
def cat() -> np.ndarray:
    return skimage.data.chelsea()  # 300x451x3 RGB uint8


def _encodings(rgb: np.ndarray) -> dict:
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    return {
        'rgb8': rgb,
        'bgr8': np.ascontiguousarray(rgb[:, :, ::-1]),
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }


def test_colour_encodings_give_same_tensor(cat: np.ndarray) -> None:
    ref = preprocess(cat, SIZE, 'rgb8')
    assert ref.shape == (3, *SIZE) and ref.dtype == torch.float32
    for enc, img in _encodings(cat).items():
        assert torch.equal(preprocess(img, SIZE, enc), ref), enc
    # A bgr8 image passed as rgb8 must differ: the test sees channel order.
    assert not torch.equal(preprocess(_encodings(cat)['bgr8'], SIZE, 'rgb8'), ref)


def test_mono_encodings(cat: np.ndarray) -> None:
    gray = cv2.cvtColor(cat, cv2.COLOR_RGB2GRAY)
    ref = preprocess(gray, SIZE, 'mono8')
    assert ref.shape == (3, *SIZE)
    # Three equal channels once the per-channel normalisation is undone.
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    raw = ref * std + mean
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[0], raw[2], atol=1e-5)
    assert torch.equal(preprocess(gray[:, :, None], SIZE, 'mono8'), ref)
    # mono16 over the full 16-bit range maps back to the same 8-bit picture (to one grey
    # level: mono16 is resized at 16-bit precision and rounded once, after the averaging).
    out16 = preprocess(gray.astype(np.uint16) * 257, SIZE, 'mono16')
    assert torch.allclose(out16, ref, atol=1.01 / (255 * min(IMAGENET_STD)), rtol=0)
    assert float((out16 == ref).float().mean()) > 0.8
    # A same-size mono16 image is converted exactly (no resize involved).
    g16 = cv2.resize(gray, SIZE[::-1], interpolation=cv2.INTER_AREA).astype(np.uint16) * 257
    expected = (torch.from_numpy(g16 // 257).float() / 255 - mean[0]) / std[0]
    assert torch.allclose(preprocess(g16, SIZE, 'mono16')[0], expected, atol=1e-5)
    # A 12-bit mono16 image is dark but valid, not wrapped around.
    dark = preprocess(np.full((50, 60), 4095, np.uint16), SIZE, 'mono16') * std + mean
    assert torch.allclose(dark, torch.full_like(dark, 16 / 255), atol=1e-5)


def test_normalisation_values() -> None:
    img = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    out = preprocess(img, SIZE, 'rgb8')
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(out, expected, atol=1e-5)
    custom = preprocess(img, SIZE, 'rgb8', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(custom, torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1,
                          atol=1e-5)


def test_resize_averages_when_shrinking(cat: np.ndarray) -> None:
    # One-pixel stripes: area averaging gives flat grey; point sampling would alias.
    stripes = np.zeros((333, 741, 3), np.uint8)
    stripes[:, ::2] = 255
    out = preprocess(stripes, (100, 224), 'rgb8', mean=(0, 0, 0), std=(1, 1, 1)) * 255
    assert abs(float(out.mean()) - 127.5) < 2 and float(out.std()) < 6
    # Close to a one-step cv2 INTER_AREA on a natural picture (we halve first for speed).
    big = cv2.resize(cat, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    out = preprocess(big, (224, 224), 'rgb8', mean=(0, 0, 0), std=(1, 1, 1)) * 255
    direct = cv2.resize(big, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert float(np.abs(out.permute(1, 2, 0).numpy() - direct).mean()) < 1.5
    # Enlarging works too, and (h, w) is honoured.
    assert preprocess(cat[:40, :30], (224, 160), 'rgb8').shape == (3, 224, 160)


def test_batch_equals_single(cat: np.ndarray) -> None:
    imgs = [cat, cat[50:250, 100:400], np.ascontiguousarray(cat[::-1])]
    batch = preprocess_batch(imgs, SIZE, 'rgb8')
    assert batch.shape == (3, 3, *SIZE)
    for i, img in enumerate(imgs):
        assert torch.equal(batch[i], preprocess(img, SIZE, 'rgb8'))
    arr = np.stack([cat, cat[::-1]])
    assert torch.equal(preprocess_batch(arr, SIZE, 'rgb8')[1], preprocess(cat[::-1], SIZE, 'rgb8'))
    assert preprocess_batch([], SIZE, 'rgb8').shape == (0, 3, *SIZE)


def test_non_contiguous_views(cat: np.ndarray) -> None:
    view = cat[::2, ::2]
    assert torch.equal(preprocess(view, SIZE, 'rgb8'),
                       preprocess(np.ascontiguousarray(view), SIZE, 'rgb8'))


def test_to_rgb(cat: np.ndarray) -> None:
    for enc, img in _encodings(cat).items():
        out = to_rgb(img, enc)
        assert out.flags['C_CONTIGUOUS'] and np.array_equal(out, cat), enc
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(to_rgb(gray, 'mono8')[:, :, 1], gray)


@pytest.mark.parametrize('image, encoding, words', [
    (np.zeros((0, 0, 3), np.uint8), 'rgb8', 'empty'),
    (np.zeros((0, 10, 3), np.uint8), 'bgr8', 'empty'),
    (np.zeros((10, 0), np.uint8), 'mono8', 'empty'),
    (np.zeros((10, 10, 3), np.uint8), 'mono8', 'channel'),
    (np.zeros((10, 10, 4), np.uint8), 'rgb8', 'channel'),
    (np.zeros((10, 10, 3), np.uint8), 'rgba8', 'channel'),
    (np.zeros((10, 10), np.uint8), 'bgr8', 'channel'),
    (np.zeros((10, 10, 3), np.uint8), 'yuv422', 'unknown image encoding'),
    (np.zeros((10, 10, 3), np.float32), 'rgb8', 'dtype'),
    (np.zeros((10, 10), np.uint8), 'mono16', 'dtype'),
    (np.zeros((10, 10, 3), np.uint16), 'rgb8', 'dtype'),
    (np.zeros((2, 10, 10, 3), np.uint8), 'rgb8', 'shape'),
    (np.zeros(10, np.uint8), 'mono8', 'shape'),
    ([[1, 2], [3, 4]], 'mono8', 'numpy array'),
    (None, 'rgb8', 'numpy array'),
])
def test_bad_input_raises_image_error(image, encoding: str, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        preprocess(image, SIZE, encoding)
    with pytest.raises(ImageError, match='image 0 of 2: .*' + words):
        preprocess_batch([image, image], SIZE, encoding)


def test_bad_size_raises_image_error() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    for size in [(0, 10), (10,), 'ab', (-1, 5)]:
        with pytest.raises(ImageError, match='size_hw'):
            preprocess(img, size, 'rgb8')


def test_fast_enough() -> None:
    # The node runs this per frame next to a ~20 ms forward pass: keep it a few ms, even for
    # 1080p (the general INTER_AREA path alone takes ~15 ms there). Generous bound: shared CPU.
    img = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    preprocess(img, (224, 224), 'bgr8')
    times = []
    for _ in range(15):
        t = time.perf_counter()
        preprocess(img, (224, 224), 'bgr8')
        times.append(time.perf_counter() - t)
    assert float(np.median(times)) < 0.012, times
