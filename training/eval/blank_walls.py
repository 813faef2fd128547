"""
The textureless collapse of a model: how alike it finds two different blank walls.

A network trained to pull overlapping views together can map every frame without structure to
nearly one descriptor (a trained model gave two different walls cosine 0.975), so blank frames
"match" each other. The node's degenerate-frame gate refuses such frames before matching; this
measures the model itself, for comparing models (`vpr-train-demo` reports it per model).
The walls are the ones the gate's tests use: a plain beige wall and a grey-blue wall with a
brightness gradient (vignetting), each with sensor noise, 240x320.
"""
import numpy as np


def blank_walls(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two different blank walls as HxWx3 uint8 RGB frames."""
    rng = np.random.default_rng(seed)
    h, w = 240, 320
    beige = np.array([196.0, 178.0, 150.0])[None, None, :] + rng.normal(0.0, 2.0, (h, w, 1))
    ramp = np.linspace(-25, 25, w)[None, :, None] + np.linspace(-10, 10, h)[:, None, None]
    blue = np.array([110.0, 120.0, 140.0])[None, None, :] + ramp + rng.normal(0.0, 2.0, (h, w, 1))
    return tuple(np.clip(x, 0, 255).astype(np.uint8) for x in (beige, blue))


def blank_wall_cosine(encoder) -> float:
    """Cosine of the encoder's descriptors of the two walls (1.0: collapsed to one point)."""
    a, b = blank_walls()
    d = np.asarray(encoder.embed([a, b], 'rgb8'), dtype=np.float64)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return float(d[0] @ d[1])
