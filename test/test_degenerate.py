"""
Degenerate-frame gate: blank walls and lens caps rejected, real and simulated frames kept.

The measurement in vpr_ros/core/degenerate.py's docstring comes from these tests (run with -s
to see the lowest values of each set).
"""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vpr_ros.core.degenerate import (
    check_stats,
    degenerate_reason,
    DegenerateGate,
    DegenerateThresholds,
    frame_stats,
    reason_key,
    REASONS,
)
from vpr_ros.core.errors import ImageError, VPRError


def _corridor_frames(corridor_dir: str) -> list[np.ndarray]:
    files = sorted(glob.glob(os.path.join(corridor_dir, 'ref', '*.jpg'))
                   + glob.glob(os.path.join(corridor_dir, 'query', '*.jpg')))
    assert len(files) == 222
    return [cv2.imread(f, cv2.IMREAD_COLOR) for f in files]


def _summary(stats) -> dict:
    return {k: min(getattr(s, k) for s in stats)
            for k in ('contrast', 'entropy_bits', 'keypoints', 'sharpness')}


def _blank_frames(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frames a robot camera really produces and that carry no place: all must be rejected."""
    h, w = 240, 320
    noise = rng.normal(0.0, 2.0, (h, w))
    ramp = np.linspace(-25, 25, w)[None, :] + np.linspace(-10, 10, h)[:, None]
    frames = {
        'lens_cap': 4 + noise,
        'lens_cap_noisy': 3 + rng.normal(0.0, 4.0, (h, w)),
        'uniform_wall': 140 + noise,
        'gradient_wall': 120 + ramp + noise,     # vignetting / light falloff: contrast, no corners
        'gradient_wall_noisy': 120 + ramp + rng.normal(0.0, 6.0, (h, w)),
        'white_out': 252 + noise,
    }
    out = {k: np.clip(v, 0, 255).astype(np.uint8) for k, v in frames.items()}
    return {k: np.repeat(v[:, :, None], 3, axis=2) for k, v in out.items()}


def test_blank_walls_and_lens_caps_are_rejected():
    gate = DegenerateGate()
    reasons = {name: gate(img, 'rgb8') for name, img in _blank_frames(np.random.default_rng(0))
               .items()}
    assert all(reasons.values()), reasons
    assert reason_key(reasons['lens_cap']) == 'underexposed'
    assert reason_key(reasons['white_out']) == 'overexposed'
    assert reason_key(reasons['uniform_wall']) == 'low_contrast'
    assert reason_key(reasons['gradient_wall']) == 'few_keypoints'
    assert reason_key(reasons['gradient_wall_noisy']) == 'few_keypoints'
    assert all(reason_key(r) in REASONS for r in reasons.values())


def test_real_corridor_frames_pass_and_heavy_blur_does_not(corridor_dir):
    frames = _corridor_frames(corridor_dir)
    gate = DegenerateGate()
    rejected = [r for r in (gate(f, 'bgr8') for f in frames) if r]
    stats = [frame_stats(f, 'bgr8') for f in frames]
    print('corridor: rejected', len(rejected), 'of', len(frames), 'lowest', _summary(stats))
    assert rejected == []
    # A strong defocus / motion smear of the same frames is rejected as blurred.
    rng = np.random.default_rng(1)
    blurred = [np.clip(cv2.GaussianBlur(f, (0, 0), 4.0) + rng.normal(0, 1.5, f.shape), 0, 255)
               .astype(np.uint8) for f in frames[::10]]
    reasons = [gate(f, 'bgr8') for f in blurred]
    assert all(r is not None and reason_key(r) == 'few_keypoints' for r in reasons), reasons
    # the blur check on its own (corner check off) rejects them too, as blurred
    blur_only = DegenerateGate(DegenerateThresholds(min_keypoints=0))
    reasons = [blur_only(f, 'bgr8') for f in blurred]
    assert all(r is not None and reason_key(r) == 'blurred' for r in reasons), reasons


def _sim_root() -> str:
    """Render (or find cached) the demo's simulated set in a child process (OSMesa vs torch)."""
    code = ('from vpr_ros.sim.dataset import default_dataset; '
            'print(default_dataset(log=lambda *a, **k: None).root)')
    proc = subprocess.run([sys.executable, '-c', code], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail('simulated dataset: ' + proc.stderr[-2000:])
    return proc.stdout.strip().splitlines()[-1]


def test_simulated_demo_frames_pass():
    root = _sim_root()
    meta = json.load(open(os.path.join(root, 'sim_meta.json')))
    gate = DegenerateGate()
    total, rejected, per_traverse = 0, [], {}
    for tr in meta['traverses']:
        files = sorted(glob.glob(os.path.join(root, 'folder', tr['name'], '*.png')))
        assert len(files) == tr['frames']
        stats = [frame_stats(cv2.imread(f, cv2.IMREAD_COLOR), 'bgr8') for f in files]
        rejected += [(f, r) for f, r in zip(files, (check_stats(s, gate.thresholds)
                                                    for s in stats)) if r]
        per_traverse[tr['name']] = _summary(stats)
        total += len(files)
    print('simulated demo set: rejected', len(rejected), 'of', total, per_traverse)
    assert total >= 500 and rejected == []


def test_encodings_small_images_and_thresholds():
    rng = np.random.default_rng(2)
    textured = (rng.random((120, 160)) * 255).astype(np.uint8)
    textured = cv2.GaussianBlur(textured, (0, 0), 0.7)
    assert degenerate_reason(textured, 'mono8') is None
    assert degenerate_reason(textured.astype(np.uint16) * 257, 'mono16') is None
    assert degenerate_reason(np.dstack([textured] * 4), 'bgra8') is None
    assert reason_key(degenerate_reason(np.zeros((4, 4), np.uint8), 'mono8')) == 'underexposed'
    # a 6x6 textured frame is too small to measure corners: rejected, never an exception
    tiny = (rng.random((6, 6)) * 255).astype(np.uint8)
    assert reason_key(degenerate_reason(tiny, 'mono8')) in ('few_keypoints', 'low_entropy')
    # every check can be switched off
    off = DegenerateThresholds(1.0, 1.0, 0.0, 0.0, 0, 0.0)
    assert degenerate_reason(np.zeros((50, 50), np.uint8), 'mono8', off) is None
    with pytest.raises(ImageError):
        degenerate_reason(np.zeros((10, 10, 2), np.uint8), 'rgb8')
    with pytest.raises(VPRError):
        DegenerateGate(DegenerateThresholds(min_keypoints=-1))
    with pytest.raises(VPRError):
        DegenerateGate(DegenerateThresholds(max_dark_fraction=0.0))


def test_smooth_real_photos_and_the_test_sequences_pass():
    """Every frame of the photo-wall sequences the detector tests use (incl. a smooth retina)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from image_sequences import make_sequence
    gate = DegenerateGate()
    seq = make_sequence(glitch=True)
    assert [i for i, f in enumerate(seq.frames) if gate(f, 'rgb8')] == []


def test_large_frames_are_measured_at_work_size():
    """An HD frame and its half-size copy give about the same corner count (same thresholds)."""
    rng = np.random.default_rng(3)
    base = cv2.resize((rng.random((90, 160)) * 255).astype(np.uint8), (640, 360),
                      interpolation=cv2.INTER_CUBIC)
    big = cv2.resize(base, (1280, 720), interpolation=cv2.INTER_CUBIC)
    a, b = frame_stats(base, 'mono8'), frame_stats(big, 'mono8')
    assert abs(a.keypoints - b.keypoints) <= 0.2 * a.keypoints
    assert a.keypoints >= DegenerateThresholds().min_keypoints
