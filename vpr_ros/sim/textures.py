"""
Textures that load offline: skimage.data photographs (tinted), matplotlib's sample photos, noise.

Grass, gravel and brick are real photographs (skimage.data, greyscale 512x512) tinted to colour,
so lawns, paths and walls carry the repetitive natural texture that makes gardens hard for place
recognition. Hedges, crowns, bark and wood are built from the same photos mixed with periodic
fractal noise. Colour photos (skimage.data, matplotlib's grace_hopper.jpg) are the distinctive
landmarks: signs and posters. Everything is a pure function of the seed, cached per process.
"""
from functools import lru_cache
import warnings

import numpy as np

# Photos used as landmark pictures, in a fixed order so a seed picks the same ones every run.
PHOTO_NAMES = ('astronaut', 'coffee', 'chelsea', 'rocket', 'cat', 'hubble_deep_field',
               'immunohistochemistry', 'colorwheel', 'retina', 'logo', 'grace_hopper',
               'minduka', 'coins', 'camera')


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float = 2.0,
                  stretch: float = 1.0) -> np.ndarray:
    """
    Periodic 1/f^beta noise in [0, 1] (tiles seamlessly, so repeated UVs show no seams).

    stretch > 1 elongates features along axis 1, the image's rows (bark and wood grain).
    """
    white = rng.normal(size=shape)
    fy = np.fft.fftfreq(shape[0])[:, None] / stretch
    fx = np.fft.fftfreq(shape[1])[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = np.fft.fft2(white) / f ** (beta / 2.0)
    spec[0, 0] = 0.0
    n = np.real(np.fft.ifft2(spec))
    lo, hi = np.percentile(n, [1, 99])
    return np.clip((n - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def tint(gray: np.ndarray, rgb, gain: float = 1.0) -> np.ndarray:
    """Colour a [0, 1] greyscale image: black stays black, white becomes rgb * gain."""
    out = gray[..., None] * (np.asarray(rgb, dtype=np.float64) * gain)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    img = img / 255.0
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def _skimage(name: str) -> np.ndarray:
    import skimage.data
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        img = getattr(skimage.data, name)()
    return img


def load_photo(name: str) -> np.ndarray:
    """One landmark photo as HxWx3 uint8 (alpha dropped onto white, grey expanded)."""
    if name == 'grace_hopper':
        import matplotlib.cbook
        import matplotlib.image
        with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
            img = np.asarray(matplotlib.image.imread(f, format='jpg'))
    elif name == 'minduka':
        import matplotlib.cbook
        import matplotlib.image
        with matplotlib.cbook.get_sample_data('Minduka_Present_Blue_Pack.png') as f:
            img = np.asarray(matplotlib.image.imread(f, format='png'))
        img = (img * 255.0 + 0.5).astype(np.uint8) if img.dtype != np.uint8 else img
    else:
        img = _skimage(name)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        a = img[..., 3:4].astype(np.float64) / 255.0
        img = (img[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return np.ascontiguousarray(_fit(img, 256))


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of the longer side to size (GL wants no huge textures)."""
    h, w = img.shape[:2]
    s = size / max(h, w)
    if s >= 1.0:
        return img
    ys = (np.arange(int(h * s)) / s).astype(int)
    xs = (np.arange(int(w * s)) / s).astype(int)
    return img[ys][:, xs]


def _dots(rng: np.random.Generator, base: np.ndarray, colors, count: int,
          radius: tuple[float, float]) -> np.ndarray:
    """Scatter round blossoms of the given colours on a base texture (flower beds)."""
    out = base.astype(np.float64)
    h, w = base.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cols = np.asarray(colors, dtype=np.float64)
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(*radius)
        dy = np.minimum(np.abs(yy - cy), h - np.abs(yy - cy))  # wrap: the texture tiles
        dx = np.minimum(np.abs(xx - cx), w - np.abs(xx - cx))
        m = dy * dy + dx * dx < r * r
        shade = rng.uniform(0.75, 1.1)
        out[m] = cols[rng.integers(len(cols))] * shade
    return np.clip(out, 0, 255).astype(np.uint8)


_ATLAS_COLS = 4
_ATLAS_CELL = 256


def photo_uv_rect(name: str) -> tuple[float, float, float, float]:
    """
    (u0, v0, u1, v1) of a photo in the 'photos' atlas (GL convention: v = 0 at the bottom).

    All landmark photos share one texture so every sign in the garden is one draw call.
    """
    k = PHOTO_NAMES.index(name)
    r, c = divmod(k, _ATLAS_COLS)
    rows = -(-len(PHOTO_NAMES) // _ATLAS_COLS)
    inset = 2.0 / (_ATLAS_CELL * _ATLAS_COLS)
    return (c / _ATLAS_COLS + inset, 1.0 - (r + 1) / rows + inset,
            (c + 1) / _ATLAS_COLS - inset, 1.0 - r / rows - inset)


def _photo_atlas() -> np.ndarray:
    """Every photo stretched into one cell of a grid (signs are all the same shape)."""
    rows = -(-len(PHOTO_NAMES) // _ATLAS_COLS)
    atlas = np.full((rows * _ATLAS_CELL, _ATLAS_COLS * _ATLAS_CELL, 3), 128, np.uint8)
    for k, name in enumerate(PHOTO_NAMES):
        img = load_photo(name)
        h, w = img.shape[:2]
        ys = (np.arange(_ATLAS_CELL) * h / _ATLAS_CELL).astype(int)
        xs = (np.arange(_ATLAS_CELL) * w / _ATLAS_CELL).astype(int)
        r, c = divmod(k, _ATLAS_COLS)
        atlas[r * _ATLAS_CELL:(r + 1) * _ATLAS_CELL,
              c * _ATLAS_CELL:(c + 1) * _ATLAS_CELL] = img[ys][:, xs]
    return atlas


@lru_cache(maxsize=4)
def make_textures(seed: int) -> dict[str, np.ndarray]:
    """
    All surface textures of a garden, HxWx3 uint8, keyed by material name.

    Cached per seed: textures take ~1 s to build and every traverse of a world shares them.
    """
    rng = np.random.default_rng([int(seed), 7])
    grass = _gray(_skimage('grass'))
    gravel = _gray(_skimage('gravel'))
    brick = _gray(_skimage('brick'))
    moon = _gray(_skimage('moon'))
    n512 = fractal_noise(rng, (512, 512), beta=2.2)
    fine = fractal_noise(rng, (512, 512), beta=0.8)
    tex: dict[str, np.ndarray] = {}
    # Lawn: the grass photo with patches of lighter, yellower and darker grass.
    patches = fractal_noise(rng, (512, 512), beta=3.0)
    lawn = np.stack([grass * (0.38 + 0.22 * patches), grass * (0.60 + 0.10 * patches),
                     grass * (0.20 + 0.06 * patches)], axis=-1) * 0.8 + 0.08
    tex['grass'] = np.clip(lawn * 255, 0, 255).astype(np.uint8)
    tex['gravel'] = tint(0.25 + 0.75 * gravel, (0.80, 0.74, 0.62))
    tex['brick'] = tint(0.3 + 0.7 * brick, (0.78, 0.42, 0.30))
    # Clipped hedge: fine leaves (grass turned sideways) with shadowed hollows.
    leaves = np.rot90(grass) * 0.6 + fine * 0.4
    tex['hedge'] = tint(0.25 + 0.75 * leaves * (0.55 + 0.45 * n512), (0.25, 0.46, 0.16))
    # Tree crowns: clumps (gravel's pebbles read as leaf clusters) over dark gaps.
    clumps = gravel * 0.6 + fractal_noise(rng, (512, 512), beta=1.5) * 0.4
    tex['foliage'] = tint(0.15 + 0.85 * clumps, (0.30, 0.50, 0.17))
    tex['foliage2'] = tint(0.15 + 0.85 * np.rot90(clumps, 2), (0.40, 0.50, 0.16))
    tex['bush'] = tint(0.2 + 0.8 * (np.rot90(grass, 3) * 0.5 + clumps * 0.5), (0.24, 0.40, 0.18))
    tex['bark'] = tint(0.3 + 0.7 * fractal_noise(rng, (256, 256), beta=2.0, stretch=12.0).T,
                       (0.42, 0.33, 0.25))
    wood = fractal_noise(rng, (256, 256), beta=2.0, stretch=20.0)
    tex['wood'] = tint(0.45 + 0.55 * wood, (0.62, 0.43, 0.26))
    planks = 1.0 - 0.6 * (np.arange(256) % 32 < 2)[:, None]
    tex['shed_wood'] = tint((0.35 + 0.65 * wood) * planks, (0.45, 0.52, 0.50))
    rows = (np.arange(256) % 32 < 3)[:, None] * np.ones((1, 256))
    tex['roof'] = tint(0.35 + 0.65 * (fine[:256, :256] * 0.5 + 0.5) * (1.0 - 0.6 * rows),
                       (0.42, 0.26, 0.22))
    tex['stone'] = tint(0.35 + 0.65 * moon, (0.82, 0.80, 0.74))
    tex['soil'] = tint(0.25 + 0.75 * fractal_noise(rng, (256, 256), beta=1.2), (0.40, 0.29, 0.2))
    tex['water'] = tint(0.5 + 0.5 * fractal_noise(rng, (256, 256), beta=2.5), (0.30, 0.42, 0.48))
    tex['metal'] = tint(0.4 + 0.6 * fractal_noise(rng, (128, 128), beta=1.0), (0.22, 0.23, 0.24))
    green_base = tint(0.3 + 0.7 * np.rot90(grass)[:256, :256], (0.22, 0.40, 0.14))
    palettes = [
        [(200, 30, 40), (230, 190, 40)],                    # red and yellow tulips
        [(120, 60, 170), (235, 235, 235)],                  # lavender and white
        [(235, 120, 170), (240, 80, 110), (250, 240, 200)],  # roses
        [(250, 140, 20), (240, 210, 40)],                   # marigolds
    ]
    for k, pal in enumerate(palettes):
        tex[f'flowers{k}'] = _dots(rng, green_base, pal, count=140, radius=(3.0, 7.0))
    tex['photos'] = _photo_atlas()
    for v in tex.values():
        v.setflags(write=False)
    return tex
