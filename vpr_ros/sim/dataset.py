"""
Generate simulated garden datasets (TB-Places folder + rosbag2 per traverse), cached by params.

`default_dataset()` is what tests, demos and benchmarks call: a small set (one traverse driving
a loop with a revisit, two shorter ones in other conditions and directions) generated once into
`$VPR_ROS_CACHE/sim/<hash of params>` (default `~/.cache/vpr_ros/sim/...`) and reused after.
`cross_session_dataset()` is the cross-session benchmark: a day map, then sessions at dusk, at
night, in fog and in winter driving the same paths, each session queried against the day map.
Generation goes to a temporary folder renamed into place at the end, so an interrupted or
concurrent run never leaves a half-written cache entry behind.
"""
from dataclasses import asdict, dataclass, field, replace
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.sim.conditions import lamps_on, parse_condition
from vpr_ros.sim.render_backend import Renderer
from vpr_ros.sim.scene import GardenScene, Intrinsics
from vpr_ros.sim.sensor import exposure_for
from vpr_ros.sim.trajectories import ROUTES, sample_traverse, TraverseSpec
from vpr_ros.sim.world import generate_world
from vpr_ros.sim.writers import BagWriter, FolderWriter

# Bump when the world, renderer or writers change what a given set of params produces.
GENERATOR_VERSION = 1
# Bump when the low-light model (twilight, lamps, sensor.py) changes how dusk or night look: only
# sets with such a traverse get a new cache key, daylight sets keep theirs.
LOW_LIGHT_VERSION = 1
META_FILE = 'sim_meta.json'
EPOCH_S = 1_700_000_000


@dataclass(frozen=True)
class TraverseConfig:
    """One traverse: a route (name in ROUTES or crossings) driven under a condition string."""

    name: str
    route: str | tuple[str, ...] = 'loop'
    condition: str = 'noon'
    speed_mps: float = 1.0
    height_m: float | None = None      # None: 1.0 m with a seeded jitter per traverse
    lateral_m: float | None = None     # None: seeded jitter per traverse (0 for the first)


DEFAULT_TRAVERSES = (
    TraverseConfig('day_loop', 'loop_once', 'noon', 1.0),
    TraverseConfig('evening', ('SW', 'S', 'C'), 'evening', 1.0),
    TraverseConfig('fog_reverse', ('C', 'S', 'SW'), 'fog', 1.0),
)


@dataclass(frozen=True)
class SimParams:
    """Everything that determines a generated dataset (and so its cache key)."""

    seed: int = 0
    width: int = 320
    height: int = 240
    hfov_deg: float = 90.0
    rate_hz: float = 5.0
    pose_rate_hz: float = 20.0
    traverses: tuple[TraverseConfig, ...] = DEFAULT_TRAVERSES
    folder: bool = True
    bag: bool = True
    odom_drift: float = 0.0
    noise_sigma: float = 1.5
    max_frames: int | None = None

    def key(self) -> str:
        """Hash of the params and the generator version: the cache folder's name."""
        fields = {'v': GENERATOR_VERSION, **asdict(self)}
        if any(low_light(parse_condition(t.condition)) for t in self.traverses):
            fields['low_light_v'] = LOW_LIGHT_VERSION
        blob = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class DatasetPaths:
    """Where a generated dataset lives: folder root, one index and one bag per traverse."""

    root: str
    folder_root: str | None
    indices: list[str] = field(default_factory=list)
    bags: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def low_light(condition) -> bool:
    """Whether a condition leaves the daylight model (lamps or a longer exposure or gain)."""
    return lamps_on(condition) or not exposure_for(condition).is_daylight()


def cache_root() -> str:
    base = os.environ.get('VPR_ROS_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                           'vpr_ros')
    return os.path.join(base, 'sim')


def _spec_for(k: int, cfg: TraverseConfig, params: SimParams) -> TraverseSpec:
    rng = np.random.default_rng([params.seed, 101, k])
    height = cfg.height_m if cfg.height_m is not None else 1.0 + rng.uniform(-0.1, 0.1)
    lateral = cfg.lateral_m if cfg.lateral_m is not None else (
        0.0 if k == 0 else rng.uniform(-0.35, 0.35))
    route = cfg.route if isinstance(cfg.route, str) else tuple(cfg.route)
    if isinstance(route, str) and route not in ROUTES:
        raise ValueError(f'unknown route {route!r}; named routes: {sorted(ROUTES)}')
    return TraverseSpec(route=route, speed_mps=cfg.speed_mps, rate_hz=params.pose_rate_hz,
                        height_m=height, lateral_m=lateral, seed=params.seed * 1000 + k)


def _render_traverse(k: int, params: SimParams, world, intr: Intrinsics, renderer,
                     paths: 'DatasetPaths', step: int, log) -> tuple[dict, int, float]:
    """Render traverse k into the folder and/or bag; returns (meta entry, frames, render s)."""
    cfg = params.traverses[k]
    cond = parse_condition(cfg.condition)
    spec = _spec_for(k, cfg, params)
    if params.max_frames is not None:
        spec = replace(spec, max_frames=(params.max_frames - 1) * step + 1)
    stamps, poses = sample_traverse(spec, world)
    start_ns = (EPOCH_S + k * 86400 + int(cond.hour * 3600)) * 10**9
    scene = GardenScene(world, cond, intr, renderer=renderer, noise_sigma=params.noise_sigma,
                        noise_seed=params.seed * 1000 + k)
    folder = FolderWriter(paths.folder_root, cfg.name) if params.folder else None
    bag_path = os.path.join(paths.root, 'bags', cfg.name)
    bag = None
    if params.bag:
        os.makedirs(os.path.dirname(bag_path), exist_ok=True)
        bag = BagWriter(bag_path, intr, start_ns, params.odom_drift, seed=params.seed * 1000 + k)
    n_img, render_s = 0, 0.0
    t0 = time.perf_counter()
    for i, (stamp, pose) in enumerate(zip(stamps, poses)):
        if bag is not None:
            bag.add_pose(int(stamp), pose)
        if i % step:
            continue
        tr = time.perf_counter()
        # the pose one pose period earlier gives the motion a long exposure blurs
        rgb, _ = scene.render(pose, n_img, poses[i - 1] if i else None, 1.0 / params.pose_rate_hz)
        render_s += time.perf_counter() - tr
        if folder is not None:
            folder.add(rgb, pose)
        if bag is not None:
            bag.add_image(int(stamp), rgb)
        n_img += 1
    if folder is not None:
        paths.indices.append(folder.close())
    if bag is not None:
        bag.close()
        paths.bags.append(bag_path)
    paths.names.append(cfg.name)
    dt = time.perf_counter() - t0
    log(f'vpr-sim: {cfg.name}: {n_img} frames ({cond.name}) in {dt:.1f} s')
    entry = {'name': cfg.name, 'condition': asdict(cond),
             'route': list(spec.route) if not isinstance(spec.route, str)
             else ROUTES[spec.route], 'frames': n_img, 'start_ns': start_ns,
             'height_m': spec.height_m, 'lateral_m': spec.lateral_m, 'seconds': round(dt, 3),
             'camera': asdict(scene.exposure)}
    return entry, n_img, render_s


def generate(params: SimParams, out_dir: str, log=print) -> DatasetPaths:
    """
    Render every traverse and write the folder and/or bags into out_dir.

    out_dir must be new or empty, so outputs of different params never mix. Returns the paths;
    the timing per frame is in the meta file.
    """
    if not (params.folder or params.bag):
        raise ValueError('nothing to write: enable the folder or the bag output')
    ratio = params.pose_rate_hz / params.rate_hz
    if abs(ratio - round(ratio)) > 1e-9 or ratio < 1:
        raise ValueError('pose_rate_hz must be an integer multiple of rate_hz')
    step = int(round(ratio))
    os.makedirs(out_dir, exist_ok=True)
    if os.listdir(out_dir):
        raise FileExistsError(f'{out_dir} is not empty')
    t_start = time.perf_counter()
    world = generate_world(params.seed)
    intr = Intrinsics.from_hfov(params.width, params.height, params.hfov_deg)
    folder_root = os.path.join(out_dir, 'folder') if params.folder else None
    paths = DatasetPaths(root=out_dir, folder_root=folder_root)
    meta = {'generator_version': GENERATOR_VERSION, 'params_key': params.key(),
            'params': asdict(params), 'intrinsics': asdict(intr),
            'mesh_count': world.mesh_count(), 'landmarks': world.landmarks, 'traverses': []}
    render_s = 0.0
    n_total = 0
    with Renderer(intr.width, intr.height) as renderer:
        for k in range(len(params.traverses)):
            entry, n_img, r_s = _render_traverse(k, params, world, intr, renderer, paths, step,
                                                 log)
            meta['traverses'].append(entry)
            n_total += n_img
            render_s += r_s
    total = time.perf_counter() - t_start
    meta['timing'] = {'total_s': round(total, 3), 'frames': n_total,
                      'render_ms_per_frame': round(1000 * render_s / max(n_total, 1), 2)}
    write_atomic(os.path.join(out_dir, META_FILE),
                 json.dumps(meta, indent=1, default=float).encode())
    paths.meta = meta
    return paths


def load_paths(root: str) -> DatasetPaths:
    """DatasetPaths of a dataset generated earlier (from its meta file)."""
    with open(os.path.join(root, META_FILE)) as f:
        meta = json.load(f)
    names = [t['name'] for t in meta['traverses']]
    p = meta['params']
    folder_root = os.path.join(root, 'folder') if p['folder'] else None
    return DatasetPaths(
        root=root, folder_root=folder_root,
        indices=[os.path.join(folder_root, f'{n}.json') for n in names] if folder_root else [],
        bags=[os.path.join(root, 'bags', n) for n in names] if p['bag'] else [],
        names=names, meta=meta)


def cached_dataset(params: SimParams, cache_dir: str | None = None, force: bool = False,
                   log=print) -> DatasetPaths:
    """Return the dataset for params from the cache, generating it (atomically) when missing."""
    base = cache_dir or cache_root()
    final = os.path.join(base, params.key())
    if not force and os.path.isfile(os.path.join(final, META_FILE)):
        return load_paths(final)
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{params.key()}-', dir=base)
    try:
        generate(params, tmp, log=log)
        if force and os.path.isdir(final):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, META_FILE)):
                raise
            shutil.rmtree(tmp)   # another process finished first: use its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_paths(final)


def default_dataset(cache_dir: str | None = None, force: bool = False, log=print,
                    **overrides) -> DatasetPaths:
    """
    Return the small default set (~550 frames at 320x240, three traverses), generated if missing.

    overrides are SimParams fields (e.g. seed=1, bag=False) and give a different cache entry.
    """
    return cached_dataset(SimParams(**overrides), cache_dir=cache_dir, force=force, log=log)


# The cross-session benchmark: the day map and the sessions queried against it (issue 22).
# The south-west block once round (248 frames): no edge twice, so a session closes loops with
# the day map only, never with itself (the demo's 'loop_once' would add its own revisit).
CROSS_SESSION_ROUTE = ('SW', 'S', 'C', 'W', 'SW')
CROSS_SESSIONS = ('dusk', 'night', 'fog', 'winter')
CROSS_SESSION_MAP = 'day_map'


def session_name(condition: str) -> str:
    """Return the traverse (and file) name of a session: its condition without ',' and '='."""
    return condition.replace(',', '_').replace('=', '')


def cross_session_params(sessions: tuple[str, ...] = CROSS_SESSIONS,
                         max_frames: int | None = None, seed: int = 0,
                         route: str | tuple[str, ...] = CROSS_SESSION_ROUTE) -> SimParams:
    """
    Build a day map (noon) then one traverse per session condition, all on the same route.

    Traverse k > 0 gets the usual seeded lateral offset and camera height jitter and starts k
    days after the map (bag stamps), so the sessions revisit the map's places, never its poses.
    A session's traverse is named after its condition ('night'; 'dusk,gain=8' -> 'dusk_gain8').
    """
    if CROSS_SESSION_MAP in sessions:
        raise ValueError(f'{CROSS_SESSION_MAP!r} is the map, not a session')
    traverses = (TraverseConfig(CROSS_SESSION_MAP, route, 'noon'),) + tuple(
        TraverseConfig(session_name(session), route, session) for session in sessions)
    return SimParams(seed=seed, traverses=traverses, max_frames=max_frames)


def cross_session_dataset(sessions: tuple[str, ...] = CROSS_SESSIONS,
                          max_frames: int | None = None, cache_dir: str | None = None,
                          log=print) -> DatasetPaths:
    """Return the cross-session set (248 frames a traverse at full length), rendered if missing."""
    return cached_dataset(cross_session_params(tuple(sessions), max_frames), cache_dir=cache_dir,
                          log=log)
