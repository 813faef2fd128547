"""
Conditions of a traverse: time of day (sun), season (foliage), fog, cloud cover, lamps, camera.

Appearance change between sessions is what place recognition must survive, so every traverse of
the simulated garden is rendered under one Condition. Conditions are plain, hashable values so a
dataset's cache key can include them; `lighting()` turns one into light and sky colours.

The sun follows the hour round the clock: above 4 degrees of elevation (about 6:20 to 19:40) the
light is what it always was, so every daylight preset renders as before; below, twilight dims the
sky and the ambient light, and once the sun is down the garden lamps and the robot's own lamp
(`lamps`, on by default when the sun is below 1 degree) are the only light. The camera's exposure
and gain (`exposure_ms`, `gain`; 0 = automatic, `vpr_ros.sim.sensor`) follow the light level, and
with them come sensor noise, desaturation and motion blur.
"""
from dataclasses import dataclass, replace
import math

import numpy as np

SEASONS = ('spring', 'summer', 'autumn', 'winter')
LAMP_MODES = ('auto', 'on', 'off')
# Above this sun elevation the light is the daylight model (unchanged since the first datasets);
# below it twilight takes over. Lamps switch on (lamps='auto') below LAMPS_ON_ELEVATION_DEG.
DAYLIGHT_ELEVATION_DEG = 4.0
LAMPS_ON_ELEVATION_DEG = 1.0

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

    hour in [0, 24] (local solar time: sunrise 6, sunset 20), fog_m is the visibility in m (0: no
    fog), overcast in [0, 1] dims the sun and greys the sky. lamps: 'auto' (on when the sun is
    below LAMPS_ON_ELEVATION_DEG), 'on' or 'off': the garden lamps and the robot's lamp.
    exposure_ms and gain: the camera's, 0 = automatic (daylight: 1 ms and gain 1, the frames
    as rendered; see vpr_ros.sim.sensor).
    """

    name: str = 'noon'
    hour: float = 12.0
    season: str = 'summer'
    fog_m: float = 0.0
    overcast: float = 0.1
    lamps: str = 'auto'
    exposure_ms: float = 0.0
    gain: float = 0.0

    def __post_init__(self):
        if self.season not in SEASONS:
            raise ValueError(f'season {self.season!r} is not one of {SEASONS}')
        if not 0.0 <= self.hour <= 24.0:
            raise ValueError(f'hour {self.hour} is outside [0, 24]')
        if self.fog_m < 0 or not 0.0 <= self.overcast <= 1.0:
            raise ValueError('fog_m must be >= 0 and overcast in [0, 1]')
        if self.lamps not in LAMP_MODES:
            raise ValueError(f'lamps {self.lamps!r} is not one of {LAMP_MODES}')
        if self.exposure_ms < 0 or not (self.gain == 0 or self.gain >= 1):
            raise ValueError('exposure_ms must be >= 0 (0: auto) and gain >= 1 (0: auto)')


PRESETS = {
    'noon': Condition('noon', 12.5, 'summer', 0.0, 0.1),
    'morning': Condition('morning', 8.0, 'spring', 0.0, 0.2),
    'evening': Condition('evening', 18.3, 'autumn', 0.0, 0.15),
    'fog': Condition('fog', 10.0, 'autumn', 22.0, 0.8),
    'winter': Condition('winter', 13.0, 'winter', 0.0, 0.6),
    'overcast': Condition('overcast', 15.0, 'summer', 0.0, 0.9),
    # the sun 5 degrees below the horizon: a glow in the west, lamps on, longer exposure
    'dusk': Condition('dusk', 20.3, 'summer', 0.0, 0.2),
    # the sun far below: garden lamps and the robot's lamp only, high gain
    'night': Condition('night', 23.0, 'summer', 0.0, 0.2),
}
_KEYS = {'fog': 'fog_m', 'time': 'hour', 'exposure': 'exposure_ms'}
_TEXT_KEYS = ('season', 'name', 'lamps')


def parse_condition(text: str) -> Condition:
    """
    'evening', or a preset with overrides 'evening,fog=30', or 'hour=9,season=winter,fog=40'.

    Keys: hour (time), season, fog (fog_m), overcast, lamps (auto/on/off), exposure
    (exposure_ms), gain, name; e.g. 'night,gain=8' or 'hour=21,lamps=off'.

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
        key = _KEYS.get(key, key)
        if key not in ('hour', 'season', 'fog_m', 'overcast', 'name', 'lamps', 'exposure_ms',
                       'gain'):
            raise ValueError(f'unknown condition key {key!r} in {text!r}')
        kw[key] = val if key in _TEXT_KEYS else float(val)
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
    # Twilight only (daylight keeps the defaults, so its sky is computed as it always was):
    glow_scale: float = 1.0              # the sun's glow in the sky
    cloud_color: np.ndarray | None = None  # None: lit by the sun (the daylight formula)
    elevation_deg: float = 90.0          # of the sun; below 4 degrees twilight applies


def sun_elevation_deg(hour: float) -> float:
    """Sun elevation in degrees: 58 at 13:00, 0 at 6:00 and 20:00, -58 at 1:00."""
    day = (hour - 6.0) / 14.0
    if 0.0 <= day <= 1.0:
        return 58.0 * math.sin(math.pi * day)
    night = ((hour - 20.0) % 24.0) / 10.0
    return -58.0 * math.sin(math.pi * night)


def sun_direction(hour: float) -> np.ndarray:
    """Point towards the sun: it rises in the east (+x) at 6, is south at 13, west at 20."""
    day = (hour - 6.0) / 14.0
    elev = math.radians(sun_elevation_deg(hour))
    az = -math.pi * day
    return np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az),
                     math.sin(elev)])


def lamps_on(c: Condition) -> bool:
    """Whether the garden lamps and the robot's lamp are lit under a condition."""
    if c.lamps != 'auto':
        return c.lamps == 'on'
    return sun_elevation_deg(c.hour) < LAMPS_ON_ELEVATION_DEG


def lighting(c: Condition) -> Lighting:
    """Sun, ambient and sky for a condition: low sun is warm and weak, overcast is flat."""
    d = sun_direction(c.hour)
    elev = sun_elevation_deg(c.hour)
    # daylight formulas; in twilight they are evaluated at the lowest daylight sun, then dimmed
    s = float(d[2]) if elev >= DAYLIGHT_ELEVATION_DEG else \
        math.sin(math.radians(DAYLIGHT_ELEVATION_DEG))
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
    day = Lighting(d, sun_rgb * strength, ambient, zenith, horizon, fog,
                   float(min(1.0, 0.3 + 0.7 * c.overcast)), elevation_deg=elev)
    return day if elev >= DAYLIGHT_ELEVATION_DEG else _twilight(day, elev, c.overcast)


# Sky brightness (linear, relative to the lowest daylight sun) against the sun's elevation:
# civil twilight ends at -6 degrees, nautical at -12; below that only sky glow remains.
_TWILIGHT_ELEV = (-18.0, -12.0, -8.0, -4.0, 0.0, DAYLIGHT_ELEVATION_DEG)
_TWILIGHT_LEVEL = (0.0001, 0.001, 0.006, 0.05, 0.3, 1.0)
_NIGHT_ZENITH = np.array([0.05, 0.07, 0.16])     # deep blue (sRGB, before dimming)
_NIGHT_HORIZON = np.array([0.30, 0.24, 0.30])    # the town's glow
_DUSK_HORIZON = np.array([0.98, 0.55, 0.35])


def twilight_level(elev_deg: float) -> float:
    """Sky and ambient light relative to daylight at the lowest daylight sun (1 above it)."""
    return float(np.exp(np.interp(elev_deg, _TWILIGHT_ELEV, np.log(_TWILIGHT_LEVEL))))


def _twilight(day: Lighting, elev: float, overcast: float) -> Lighting:
    """Dim and recolour daylight below DAYLIGHT_ELEVATION_DEG: dusk glow, then night sky."""
    level = twilight_level(elev)
    # 0 at the lowest daylight sun, 1 at -8 degrees: the colours of night
    t = float(np.clip((DAYLIGHT_ELEVATION_DEG - elev) / 12.0, 0.0, 1.0))
    sun_fade = float(np.clip((elev + 1.0) / (DAYLIGHT_ELEVATION_DEG + 1.0), 0.0, 1.0)) ** 2
    display = level ** (1.0 / 2.2)          # sky colours are sRGB: dim them in display terms
    dusk = float(np.clip(1.0 - abs(t - 0.4) / 0.6, 0.0, 1.0)) * (1.0 - overcast)
    horizon = day.horizon * (1 - t) + _NIGHT_HORIZON * t
    horizon = horizon * (1 - dusk) + _DUSK_HORIZON * dusk
    zenith = day.zenith * (1 - t) + _NIGHT_ZENITH * t
    grey = np.array([0.45, 0.45, 0.5]) * overcast
    zenith, horizon = zenith * (1 - overcast) + grey, horizon * (1 - overcast) + grey * 1.1
    return replace(day, sun_color=day.sun_color * sun_fade, ambient=day.ambient * level,
                   zenith=zenith * display, horizon=horizon * display,
                   fog_color=day.fog_color * display, glow_scale=display * (1.0 - 0.7 * t),
                   cloud_color=(0.5 * horizon + 0.25) * display)
