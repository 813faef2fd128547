"""
The simulated camera in low light: exposure and gain, sensor noise, desaturation, motion blur.

Daylight frames are rendered as they always were (exposure 1 ms, gain 1: `Exposure.is_daylight`),
so cached datasets and figures keep their pixels. When the light fails (twilight, night) a real
camera first lengthens its exposure (up to MAX_EXPOSURE_MS: the robot moves, so the frame blurs
along the motion) and then raises its analogue gain (up to MAX_GAIN: the noise grows with it).
The exposure multiplier scales every light of the scene before rendering, so dark frames are not
8-bit quantised before they are brightened; `develop` then adds what the sensor does: blur from
the motion during the exposure (from the depth buffer and the pose change, so near things blur
more than far ones), photon shot noise (signal dependent), read noise growing with the gain, the
grey, desaturated colours of a camera whose colour processing gives up in the dark, and its
noise reduction (an edge-keeping bilateral filter growing with the gain: without it, night frames
were salt-and-pepper noise no camera driver publishes, and the built-in model's R@1 at night fell
from 0.16 to 0.12 on the first 100 frames of the cross-session set).

Automatic exposure (exposure_ms = 0 and/or gain = 0 in the Condition) makes up AE_COMPENSATION
of the light lost to twilight (as a power), so night frames stay darker than day frames, as
they do on a real robot.
"""
from dataclasses import dataclass
import math

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.sim.conditions import Condition, sun_elevation_deg, twilight_level

BASE_EXPOSURE_MS = 1.0      # daylight: the frames as rendered
MAX_EXPOSURE_MS = 50.0      # 1/20 s: longer would smear the scene at walking speed
MAX_GAIN = 32.0             # 30 dB
AE_COMPENSATION = 0.75      # auto exposure recovers (light lost) ** 0.75
FULL_WELL_E = 6000.0        # electrons at full scale, gain 1
READ_NOISE_E = 2.5          # electrons rms, before the gain
MAX_DESATURATION = 0.85     # colour left at MAX_GAIN: 1 - 0.85
NOISE_REDUCTION = 0.12      # the ISP's bilateral filter: range sigma (display units) at MAX_GAIN
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
_MAX_BLUR_SAMPLES = 16


@dataclass(frozen=True)
class Exposure:
    """What the camera does with the light: exposure time (ms) and analogue gain (>= 1)."""

    exposure_ms: float = BASE_EXPOSURE_MS
    gain: float = 1.0

    def multiplier(self) -> float:
        """How much brighter than a daylight frame the same light is recorded."""
        return self.exposure_ms / BASE_EXPOSURE_MS * self.gain

    def is_daylight(self) -> bool:
        """Tell the reference exposure: frames render as before the sensor model existed."""
        return self.exposure_ms == BASE_EXPOSURE_MS and self.gain == 1.0


def auto_multiplier(c: Condition) -> float:
    """Return the auto exposure's brightening for a condition's light (1 in daylight)."""
    level = twilight_level(sun_elevation_deg(c.hour))
    return float(min(level ** -AE_COMPENSATION, MAX_EXPOSURE_MS / BASE_EXPOSURE_MS * MAX_GAIN))


def exposure_for(c: Condition) -> Exposure:
    """
    Return a condition's exposure and gain: explicit values kept, automatic ones (0) set.

    Auto exposure lengthens the exposure first and raises the gain only at the longest one;
    with one of the two fixed, the other makes up what it can.
    """
    want = auto_multiplier(c)
    if c.exposure_ms > 0 and c.gain > 0:
        return Exposure(float(c.exposure_ms), float(c.gain))
    if c.exposure_ms > 0:
        gain = want * BASE_EXPOSURE_MS / c.exposure_ms
        return Exposure(float(c.exposure_ms), float(np.clip(gain, 1.0, MAX_GAIN)))
    if c.gain > 0:
        ms = want / c.gain * BASE_EXPOSURE_MS
        return Exposure(float(np.clip(ms, BASE_EXPOSURE_MS, MAX_EXPOSURE_MS)), float(c.gain))
    ms = float(np.clip(want * BASE_EXPOSURE_MS, BASE_EXPOSURE_MS, MAX_EXPOSURE_MS))
    gain = float(np.clip(want * BASE_EXPOSURE_MS / ms, 1.0, MAX_GAIN))
    return Exposure(ms, gain)


def shutter_motion(world_t_link: np.ndarray, world_t_prev: np.ndarray, dt_s: float,
                   exposure_ms: float) -> np.ndarray:
    """
    4x4 pose of the camera when the shutter opened, in the frame of the camera now.

    The motion from the previous pose (dt_s earlier) is scaled to the exposure time (constant
    velocity over the exposure).
    """
    rel = np.linalg.inv(world_t_link) @ world_t_prev
    f = min(exposure_ms * 1e-3 / dt_s, 1.0) if dt_s > 0 else 0.0
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(Rotation.from_matrix(rel[:3, :3]).as_rotvec()
                                       * f).as_matrix()
    out[:3, 3] = rel[:3, 3] * f
    return out


def motion_blur(lin: np.ndarray, depth: np.ndarray, rays: np.ndarray, k: tuple,
                link_t_open: np.ndarray) -> np.ndarray:
    """
    Average the image along each pixel's motion during the exposure.

    Each pixel's scene point (rays x depth; the sky at infinity, so only rotation moves it) is
    projected into the camera at shutter opening; the frame is the mean of samples along the
    line between the two image positions. k = (fx, fy, cx, cy).
    """
    fx, fy, cx, cy = k
    rot, t = link_t_open[:3, :3], link_t_open[:3, 3]
    sky = depth <= 0.0
    pts = rays * np.where(sky, np.float32(1.0), depth)[..., None]
    pts = pts - np.where(sky[..., None], np.float32(0.0), t.astype(np.float32))
    p_open = pts @ rot.astype(np.float32)            # R^T p for row vectors
    x = np.maximum(p_open[..., 0], np.float32(1e-3))
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    du = (cx - fx * p_open[..., 1] / x - 0.5) - u
    dv = (cy - fy * p_open[..., 2] / x - 0.5) - v
    behind = p_open[..., 0] <= 1e-3
    du[behind] = 0.0
    dv[behind] = 0.0
    length = float(np.sqrt(du * du + dv * dv).max()) if du.size else 0.0
    if length < 0.5:
        return lin
    n = int(min(_MAX_BLUR_SAMPLES, math.ceil(length) + 1))
    acc = np.zeros_like(lin)
    for s in np.linspace(0.0, 1.0, n, dtype=np.float32):
        acc += cv2.remap(lin, u + s * du, v + s * dv, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return acc / np.float32(n)


def develop(lin: np.ndarray, exposure: Exposure, rng: np.random.Generator,
            adc_sigma: float) -> np.ndarray:
    """
    Sensor noise and colour of an exposed frame (linear light, HxWx3 float32) -> uint8.

    Shot noise sqrt(signal x gain / full well) and read noise x gain, per channel (so chroma
    noise), then the colour fades with the gain, then the ADC's own noise (adc_sigma grey
    levels, the daylight model's noise).
    """
    lin = np.maximum(lin, 0.0)
    g = np.float32(exposure.gain)
    var = lin * (g / np.float32(FULL_WELL_E)) + np.float32((READ_NOISE_E * g / FULL_WELL_E) ** 2)
    lin = lin + rng.standard_normal(lin.shape, dtype=np.float32) * np.sqrt(var)
    strength = min(max(math.log(exposure.gain) / math.log(MAX_GAIN), 0.0), 1.0)
    if strength > 0:
        luma = lin @ _LUMA
        lin = luma[..., None] + (lin - luma[..., None]) * np.float32(1.0 - MAX_DESATURATION
                                                                      * strength)
    out = to_display(lin)
    if strength > 0 and NOISE_REDUCTION > 0:
        # the camera's own noise reduction: smooths flat areas, keeps edges (bilateral)
        out = cv2.bilateralFilter(out, 5, float(NOISE_REDUCTION * strength), 2.0)
    if adc_sigma > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(adc_sigma / 255.0)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_linear(img: np.ndarray) -> np.ndarray:
    """Display values -> linear light (the renderer's gamma 2.2)."""
    return np.maximum(img, 0.0) ** np.float32(2.2)


def to_display(lin: np.ndarray) -> np.ndarray:
    """Linear light -> display values."""
    return np.maximum(lin, 0.0) ** np.float32(1.0 / 2.2)
