"""
Conditions of a traverse: time of day (sun), season (foliage), fog and cloud cover.

Appearance change between sessions is what place recognition must survive, so every traverse of
the simulated garden is rendered under one Condition. Conditions are plain, hashable values so a
dataset's cache key can include them; `lighting()` turns one into light and sky colours.
"""
from dataclasses import dataclass, replace
import math

import numpy as np

SEASONS = ('spring', 'summer', 'autumn', 'winter')

# Per season: colour factors per material kind (multiplying the textures) and foliage density
# (crown and bush size). Winter crowns are small and grey-brown: bare twigs, roughly.
SEASON_FACTORS = {
    'spring': ({'grass': (1.02, 1.12, 0.95), 'hedge': (1.05, 1.15, 0.95),
                'crown': (1.15, 1.25, 0.95), 'bush': (1.1, 1.2, 0.95),
                'flowers': (1.05, 1.05, 1.05)}, 0.85),
    'summer': ({}, 1.0),
    'autumn': ({'grass': (1.12, 1.0, 0.72), 'hedge': (1.0, 0.92, 0.8),
                'crown': (1.9, 1.05, 0.45), 'bush': (1.6, 1.0, 0.55),
                'flowers': (0.8, 0.7, 0.6)}, 0.8),
    'winter': ({'grass': (1.1, 0.95, 0.85), 'hedge': (0.85, 0.85, 0.85),
                'crown': (1.25, 0.8, 0.7), 'bush': (1.2, 0.85, 0.7),
                'flowers': (0.55, 0.5, 0.45)}, 0.5),
}


@dataclass(frozen=True)
class Condition:
    """
    One traverse's appearance, a value so it can be part of a cache key.

    hour in [4, 22] (local solar time), fog_m is the visibility in m (0: no fog), overcast in
    [0, 1] dims the sun and greys the sky.
    """

    name: str = 'noon'
    hour: float = 12.0
    season: str = 'summer'
    fog_m: float = 0.0
    overcast: float = 0.1

    def __post_init__(self):
        if self.season not in SEASONS:
            raise ValueError(f'season {self.season!r} is not one of {SEASONS}')
        if not 4.0 <= self.hour <= 22.0:
            raise ValueError(f'hour {self.hour} is outside [4, 22]')
        if self.fog_m < 0 or not 0.0 <= self.overcast <= 1.0:
            raise ValueError('fog_m must be >= 0 and overcast in [0, 1]')


PRESETS = {
    'noon': Condition('noon', 12.5, 'summer', 0.0, 0.1),
    'morning': Condition('morning', 8.0, 'spring', 0.0, 0.2),
    'evening': Condition('evening', 18.3, 'autumn', 0.0, 0.15),
    'fog': Condition('fog', 10.0, 'autumn', 22.0, 0.8),
    'winter': Condition('winter', 13.0, 'winter', 0.0, 0.6),
    'overcast': Condition('overcast', 15.0, 'summer', 0.0, 0.9),
}


def parse_condition(text: str) -> Condition:
    """
    'evening', or a preset with overrides 'evening,fog=30', or 'hour=9,season=winter,fog=40'.

    The command line and the dataset parameters use this one spelling.
    """
    items = [t.strip() for t in str(text).split(',') if t.strip()]
    base = PRESETS['noon']
    name = None
    kw: dict = {}
    for it in items:
        if '=' not in it:
            if it not in PRESETS:
                raise ValueError(f'unknown condition {it!r}; presets: {sorted(PRESETS)}')
            base, name = PRESETS[it], it
            continue
        key, val = (s.strip() for s in it.split('=', 1))
        key = {'fog': 'fog_m', 'time': 'hour'}.get(key, key)
        if key not in ('hour', 'season', 'fog_m', 'overcast', 'name'):
            raise ValueError(f'unknown condition key {key!r} in {text!r}')
        kw[key] = val if key in ('season', 'name') else float(val)
    if 'name' not in kw:
        kw['name'] = text.replace(',', '_').replace('=', '') if kw else (name or base.name)
    return replace(base, **kw)


@dataclass(frozen=True)
class Lighting:
    """Light and sky derived from a Condition (all colours linear RGB in [0, ~4])."""

    sun_dir: np.ndarray         # unit vector towards the sun (world, z up)
    sun_color: np.ndarray       # colour x intensity for pyrender's DirectionalLight
    ambient: np.ndarray
    zenith: np.ndarray          # sky colours, sRGB [0, 1]
    horizon: np.ndarray
    fog_color: np.ndarray
    cloud_cover: float


def sun_direction(hour: float) -> np.ndarray:
    """Point towards the sun: it rises in the east (+x) at 6, is south at 13, west at 20."""
    day = (hour - 6.0) / 14.0
    elev = math.radians(max(4.0, 58.0 * math.sin(math.pi * min(max(day, 0.0), 1.0))))
    az = -math.pi * day
    return np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az),
                     math.sin(elev)])


def lighting(c: Condition) -> Lighting:
    """Sun, ambient and sky for a condition: low sun is warm and weak, overcast is flat."""
    d = sun_direction(c.hour)
    s = float(d[2])
    warm = 1.0 - min(max(s / 0.55, 0.0), 1.0)
    sun_rgb = np.array([1.0, 0.97 - 0.3 * warm, 0.92 - 0.5 * warm])
    strength = (1.5 + 2.5 * s) * (1.0 - 0.8 * c.overcast)
    zenith = np.array([0.30, 0.50, 0.85]) * (1 - 0.3 * warm) + np.array([0.1, 0.05, 0.0]) * warm
    horizon = np.array([0.75, 0.84, 0.93]) * (1 - warm) + np.array([0.98, 0.72, 0.50]) * warm
    grey = np.array([0.72, 0.74, 0.77]) * (0.65 + 0.35 * min(s / 0.5, 1.0))
    zenith = zenith * (1 - c.overcast) + grey * 0.9 * c.overcast
    horizon = horizon * (1 - c.overcast) + grey * c.overcast
    ambient = (0.25 + 0.35 * c.overcast) * (0.6 + 0.4 * min(s / 0.5, 1.0)) * \
        (0.5 * horizon + 0.5 * np.array([0.8, 0.85, 0.9]))
    fog = 0.5 * horizon + 0.5 * np.array([0.78, 0.79, 0.80]) * (0.7 + 0.3 * min(s / 0.5, 1.0))
    return Lighting(d, sun_rgb * strength, ambient, zenith, horizon, fog,
                    float(min(1.0, 0.3 + 0.7 * c.overcast)))
