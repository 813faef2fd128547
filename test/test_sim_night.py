"""Dusk and night in the simulated garden: sun, lamps, exposure and gain, noise, blur, the set."""
import numpy as np
import pytest

pytest.importorskip('pyrender')

from conftest import SIM_SIZE  # noqa: E402

from vpr_ros.sim.conditions import (  # noqa: E402
    DAYLIGHT_ELEVATION_DEG,
    lamps_on,
    parse_condition,
    PRESETS,
    sun_elevation_deg,
)
from vpr_ros.sim.dataset import (  # noqa: E402
    CROSS_SESSION_MAP,
    cross_session_params,
    CROSS_SESSION_ROUTE,
    CROSS_SESSIONS,
    generate,
)
from vpr_ros.sim.lamps import lit_lamps  # noqa: E402
from vpr_ros.sim.scene import GardenScene, Intrinsics  # noqa: E402
from vpr_ros.sim.sensor import (  # noqa: E402
    exposure_for,
    MAX_EXPOSURE_MS,
    motion_blur,
    shutter_motion,
)
from vpr_ros.sim.trajectories import ROUTES, sample_traverse, TraverseSpec  # noqa: E402
from vpr_ros.sim.world import generate_world  # noqa: E402

W, H = SIM_SIZE   # the conftest renderer's
DAY_PRESETS = ('noon', 'morning', 'evening', 'fog', 'winter', 'overcast')


@pytest.fixture(scope='module')
def route():
    """Poses along the demo's loop at 20 Hz: frame 40 drives straight, 200 turns a corner."""
    world = generate_world(0)
    _, poses = sample_traverse(TraverseSpec(route=tuple(ROUTES['loop_once']), rate_hz=20.0),
                               world)
    return world, poses


def _scene(world, condition, renderer, **kw):
    return GardenScene(world, parse_condition(condition), Intrinsics.from_hfov(W, H),
                       renderer=renderer, **kw)


def _saturation(img):
    f = img.astype(np.float64)
    return float((f.max(axis=2) - f.min(axis=2)).mean())


def test_daylight_presets_take_the_unchanged_path():
    """Cached datasets rely on it: every daylight preset renders exactly as before."""
    for name in DAY_PRESETS:
        c = PRESETS[name]
        assert sun_elevation_deg(c.hour) >= DAYLIGHT_ELEVATION_DEG, name
        assert exposure_for(c).is_daylight() and not lamps_on(c), name
    for text in ('winter,hour=7.5,overcast=0.3', 'evening,fog=30,season=winter',
                 'morning,hour=16'):   # conditions of the training benchmarks
        assert exposure_for(parse_condition(text)).is_daylight(), text


def test_sun_goes_round_the_clock():
    assert sun_elevation_deg(13.0) == pytest.approx(58.0)
    assert sun_elevation_deg(6.0) == pytest.approx(0.0, abs=1e-9)
    assert sun_elevation_deg(20.0) == pytest.approx(0.0, abs=1e-9)
    assert -10 < sun_elevation_deg(PRESETS['dusk'].hour) < -2
    assert sun_elevation_deg(PRESETS['night'].hour) < -18
    assert sun_elevation_deg(1.0) == pytest.approx(-58.0)
    hours = np.linspace(0.0, 24.0, 97)
    elev = np.array([sun_elevation_deg(h) for h in hours])
    assert np.abs(np.diff(elev)).max() < 5.0          # continuous, midnight included


def test_condition_keys_and_validation():
    c = parse_condition('night,gain=8,exposure=20,lamps=off')
    assert (c.hour, c.gain, c.exposure_ms, c.lamps) == (23.0, 8.0, 20.0, 'off')
    e = exposure_for(c)
    assert (e.exposure_ms, e.gain) == (20.0, 8.0) and not lamps_on(c)
    assert exposure_for(parse_condition('night,gain=4')).exposure_ms == MAX_EXPOSURE_MS
    fixed = exposure_for(parse_condition('night,exposure=10'))
    assert fixed.exposure_ms == 10.0 and fixed.gain > 4.0   # the gain makes up the rest
    assert lamps_on(parse_condition('noon,lamps=on'))
    for bad in ('hour=25', 'night,lamps=maybe', 'night,gain=0.5', 'night,exposure=-1'):
        with pytest.raises(ValueError):
            parse_condition(bad)


def test_dusk_and_night_are_darker_greyer_and_noisier(renderer, route):
    world, poses = route
    i = 40
    frames = {}
    for cond in ('noon', 'dusk', 'night'):
        scene = _scene(world, cond, renderer, noise_seed=1)
        a = scene.render(poses[i], 0)[0]
        b = scene.render(poses[i], 1)[0]                  # same pose, other noise
        frames[cond] = (a, float(np.abs(a.astype(int) - b).mean()))
    noon, dusk, night = (frames[c][0] for c in ('noon', 'dusk', 'night'))
    assert noon.mean() > dusk.mean() + 20 and noon.mean() > night.mean() + 20
    assert night.mean() > 5.0                             # lit by lamps, not black
    assert _saturation(night) < 0.5 * _saturation(noon)   # grey at high gain
    assert frames['night'][1] > 3.0 * frames['noon'][1]   # gain noise
    e_dusk, e_night = exposure_for(PRESETS['dusk']), exposure_for(PRESETS['night'])
    assert 1.0 < e_dusk.exposure_ms < e_night.exposure_ms == MAX_EXPOSURE_MS
    assert e_dusk.gain < e_night.gain


def test_lamps_are_the_light_at_night(renderer, route):
    world, poses = route
    assert 2 <= len(lit_lamps(world)) < len(world.lamps)
    lit = _scene(world, 'night', renderer, noise_sigma=0).render(poses[40], 0)[0]
    dark = _scene(world, 'night,lamps=off', renderer, noise_sigma=0).render(poses[40], 0)[0]
    ground = slice(H // 2, H), slice(W // 4, 3 * W // 4)   # where the robot's lamp points
    assert lit[ground].mean() > dark[ground].mean() + 15
    assert lit.max() == 255                               # a glowing lantern


def test_motion_blur_follows_the_motion():
    """A pure yaw blurs along rows only; a frame without motion is left alone."""
    h, w = 48, 64
    k = (32.0, 32.0, 32.0, 24.0)
    yy, xx = np.mgrid[0:h, 0:w]
    columns = np.repeat(((xx // 4) % 2).astype(np.float32)[..., None], 3, axis=2)
    rows = np.repeat(((yy // 4) % 2).astype(np.float32)[..., None], 3, axis=2)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([np.ones_like(u), -(u + 0.5 - k[2]) / k[0], -(v + 0.5 - k[3]) / k[1]],
                    -1).astype(np.float32)
    depth = np.full((h, w), 5.0, np.float32)
    yaw = np.eye(4)
    yaw[:3, :3] = [[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]]
    assert motion_blur(columns, depth, rays, k, np.eye(4)) is columns

    def kept(img, axis):
        out = motion_blur(img, depth, rays, k, yaw)
        return np.abs(np.diff(out, axis=axis)).mean() / np.abs(np.diff(img, axis=axis)).mean()
    assert kept(columns, 1) < 0.5 and kept(rows, 0) > 0.8
    # the shutter opens part of the way back to the previous pose
    half = shutter_motion(np.eye(4), yaw, dt_s=0.1, exposure_ms=50.0)
    np.testing.assert_allclose(np.arctan2(half[1, 0], half[0, 0]), 0.1, atol=1e-9)


def test_night_frames_blur_on_turns(renderer, route):
    world, poses = route
    scene = _scene(world, 'night', renderer, noise_sigma=0)
    still = scene.render(poses[200], 0)[0].astype(np.float64)
    moving = scene.render(poses[200], 0, poses[199], 0.05)[0].astype(np.float64)
    assert np.abs(still - moving).mean() > 0.5
    noon = _scene(world, 'noon', renderer)
    assert noon.render(poses[200], 0, poses[199], 0.05)[0].tobytes() == \
        noon.render(poses[200], 0)[0].tobytes()        # daylight: no blur, as before


def test_cross_session_set(tmp_path):
    params = cross_session_params()
    names = [t.name for t in params.traverses]
    assert names == [CROSS_SESSION_MAP, *CROSS_SESSIONS]
    assert {t.route for t in params.traverses} == {CROSS_SESSION_ROUTE}
    assert params.traverses[0].condition == 'noon'
    with pytest.raises(ValueError):
        cross_session_params((CROSS_SESSION_MAP,))
    small = cross_session_params(('night', 'dusk,gain=8'), max_frames=3)
    small = type(small)(**{**small.__dict__, 'width': 48, 'height': 36, 'bag': False})
    paths = generate(small, str(tmp_path / 'set'), log=lambda *_: None)
    assert paths.names == [CROSS_SESSION_MAP, 'night', 'dusk_gain8']
    meta = paths.meta['traverses']
    assert [t['frames'] for t in meta] == [3, 3, 3]
    assert meta[0]['camera'] == {'exposure_ms': 1.0, 'gain': 1.0}
    assert meta[1]['camera']['gain'] > 1.0 and meta[2]['camera']['gain'] == 8.0
    assert meta[0]['lateral_m'] == 0.0 and meta[1]['lateral_m'] != 0.0   # jitter per session


def test_low_light_sets_get_their_own_cache_version():
    """Changing the night model re-renders night sets only; daylight caches keep their key."""
    from dataclasses import asdict
    import hashlib
    import json

    from vpr_ros.sim import dataset

    def plain(p):   # the key before the low-light model existed
        blob = json.dumps({'v': dataset.GENERATOR_VERSION, **asdict(p)}, sort_keys=True,
                          default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
    day = dataset.SimParams()
    assert day.key() == plain(day)
    night = cross_session_params(('night',))
    assert night.key() != plain(night)
    assert dataset.low_light(parse_condition('noon,lamps=on'))
    assert not dataset.low_light(parse_condition('winter,hour=7.5,overcast=0.3'))
