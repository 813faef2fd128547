"""
The simulated gardens `vpr-train-demo` trains and tests on: the small demo set and the larger one.

A benchmark is a few gardens (simulator seeds), each with its traverses, and a split naming which
traverses train, validate and test. Nothing trained on is tested on: test traverses are other
sessions, in conditions training never saw (winter, fog and their mixes) or at night (a trained
condition, another session), and (large set) whole gardens training never saw.
Each traverse after a garden's first is driven at a seeded height (1.0 ± 0.1 m) and lateral
offset (± 0.35 m) of its own (`vpr_ros.sim.dataset`), so a place is revisited from another
viewpoint, as between TB-Places W17 and W18. Renders are cached by their parameters.

ψ labels are computed per garden (poses of two gardens share one coordinate frame but not one
place) and joined block-diagonally: images of different gardens are negatives.
"""
from dataclasses import dataclass
import os
import subprocess
import sys
from typing import Sequence

import numpy as np

from vpr_ros.core.errors import VPRError
from vpr_ros.sim.dataset import DatasetPaths, load_paths, TraverseConfig

FIGURE8_REVERSED = ('S', 'SW', 'W', 'C', 'E', 'NE', 'N', 'C', 'S', 'SW')


@dataclass(frozen=True)
class Split:
    """Which traverses play which part; names are the TraverseConfig names."""

    train_map: tuple[str, ...] = ('train_map_noon',)
    train_query: tuple[str, ...] = ('train_morning', 'train_evening', 'train_overcast',
                                    'train_dusk', 'train_night')
    val_map: tuple[str, ...] = ('val_map_noon',)
    val_query: tuple[str, ...] = ('val_evening',)
    # (set label, map traverse, query traverse); map and query of one garden
    test: tuple[tuple[str, str, str], ...] = (
        ('garden winter', 'test_map_noon', 'test_winter'),
        ('garden fog', 'test_map_noon', 'test_fog'),
        ('garden night (seen condition)', 'test_map_noon', 'test_night'))


@dataclass(frozen=True)
class Benchmark:
    """Gardens (simulator seed, traverses) and the split over their traverses."""

    name: str
    gardens: tuple[tuple[int, tuple[TraverseConfig, ...]], ...]
    split: Split

    def garden_of(self, traverse: str) -> int:
        """Index into gardens of the garden a traverse was rendered in."""
        for g, (_, traverses) in enumerate(self.gardens):
            if any(t.name == traverse for t in traverses):
                return g
        raise VPRError(f'traverse {traverse!r} is in no garden of benchmark {self.name}')


# One garden (seed 0, the demo's). Training sees noon, morning, evening, overcast, dusk and
# night (lamps, long exposure, high gain: `vpr_ros.sim.conditions`); winter and fog appear only
# in the test traverses; the night test traverse is another session in a trained condition.
# Between them the routes cover every garden path.
SMALL = Benchmark('small', ((0, (
    TraverseConfig('train_map_noon', 'figure8', 'noon'),
    TraverseConfig('train_morning', FIGURE8_REVERSED, 'morning'),
    TraverseConfig('train_evening', 'big', 'evening'),
    TraverseConfig('train_overcast', 'figure8', 'overcast'),
    TraverseConfig('train_dusk', 'big', 'dusk'),
    TraverseConfig('train_night', FIGURE8_REVERSED, 'night'),
    TraverseConfig('val_map_noon', 'loop_once', 'noon'),
    TraverseConfig('val_evening', 'loop_once', 'evening'),
    TraverseConfig('test_map_noon', 'east', 'noon'),
    TraverseConfig('test_winter', 'east', 'winter'),
    TraverseConfig('test_fog', 'east', 'fog'),
    TraverseConfig('test_night', 'east', 'night'),
)),), Split())

# Test conditions: the unseen ones (season, weather: all in winter or fog, or both) and night,
# a trained condition met in gardens never trained on.
UNSEEN = {'winter': 'winter', 'fog': 'fog', 'winterdawn': 'winter,hour=7.5,overcast=0.3',
          'duskfog': 'evening,fog=30,season=winter', 'night': 'night'}


def _train_garden(g: str) -> tuple[TraverseConfig, ...]:
    return (TraverseConfig(f'{g}_train_map_noon', 'figure8', 'noon'),
            TraverseConfig(f'{g}_train_morning', FIGURE8_REVERSED, 'morning'),
            TraverseConfig(f'{g}_train_evening', 'big', 'evening'),
            TraverseConfig(f'{g}_train_overcast', 'figure8', 'overcast'),
            TraverseConfig(f'{g}_train_spring_late', 'big', 'morning,hour=16'),
            TraverseConfig(f'{g}_train_autumn_noon', 'big', 'noon,season=autumn'),
            TraverseConfig(f'{g}_train_dusk', FIGURE8_REVERSED, 'dusk'),
            TraverseConfig(f'{g}_train_night', 'big', 'night'))


def _test_garden(g: str, route: str, conditions: Sequence[str]) -> tuple[TraverseConfig, ...]:
    return ((TraverseConfig(f'{g}_test_map_noon', route, 'noon'),)
            + tuple(TraverseConfig(f'{g}_test_{c}', route, UNSEEN[c]) for c in conditions))


def _large() -> Benchmark:
    """Two training gardens, two test-only gardens; >= 1,000 test queries at full length."""
    g0 = _train_garden('g0') + (
        TraverseConfig('g0_val_map_noon', 'loop_once', 'noon'),
        TraverseConfig('g0_val_evening', 'loop_once', 'evening'),
    ) + _test_garden('g0', 'east', ('winter', 'fog'))
    g1 = _train_garden('g1')
    g2 = _test_garden('g2', 'big', ('winter', 'fog', 'winterdawn', 'duskfog', 'night'))
    g3 = _test_garden('g3', 'big', ('winter', 'fog', 'winterdawn', 'duskfog', 'night'))
    train = [t.name for t in g0 + g1 if '_train_' in t.name]
    split = Split(
        train_map=tuple(n for n in train if n.endswith('_map_noon')),
        train_query=tuple(n for n in train if not n.endswith('_map_noon')),
        val_map=('g0_val_map_noon',), val_query=('g0_val_evening',),
        test=tuple((f'{g} {c} (garden {"seen" if g == "g0" else "unseen"})',
                    f'{g}_test_map_noon', f'{g}_test_{c}')
                   for g, cs in (('g0', ('winter', 'fog')),
                                 ('g2', ('winter', 'fog', 'winterdawn', 'duskfog', 'night')),
                                 ('g3', ('winter', 'fog', 'winterdawn', 'duskfog', 'night')))
                   for c in cs))
    return Benchmark('large', ((0, g0), (1, g1), (2, g2), (3, g3)), split)


LARGE = _large()
BENCHMARKS = {'small': SMALL, 'large': LARGE}


def sim_argv(seed: int, traverses: Sequence[TraverseConfig], frames: int) -> list[str]:
    """vpr-sim options of one garden: 2.5 images/s at 1 m/s, one every 0.4 m."""
    argv = ['--default', '--seed', str(seed), '--rate', '2.5', '--pose-rate', '20',
            '--no-folder']
    for t in traverses:
        route = t.route if isinstance(t.route, str) else '-'.join(t.route)
        argv += ['--traverse', f'{t.name}:{route}:{t.condition}:{t.speed_mps:g}']
    return argv + (['--frames', str(frames)] if frames else [])


def simulate(argv: Sequence[str]) -> DatasetPaths:
    """
    Render (or find in the cache) a set with vpr-sim in a process of its own, as a user would.

    Not in this process: OSMesa's llvmpipe and the LLVM inside triton (which torch imports)
    clash, and importing torch after rendering crashed with a segmentation fault here.
    """
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.sim.cli', *argv], env=os.environ.copy(),
                          stdout=subprocess.PIPE, text=True)
    print(proc.stdout, end='', flush=True)
    roots = [line.split(':', 1)[1].strip() for line in proc.stdout.splitlines()
             if line.startswith('root:')]
    if proc.returncode != 0 or not roots:
        raise VPRError(f'vpr-sim {" ".join(argv)} failed with exit code {proc.returncode}')
    return load_paths(roots[0])


def simulate_benchmark(bench: Benchmark, frames: int) -> dict[str, str]:
    """Render every garden (cached); return bag path by traverse name, in benchmark order."""
    bags: dict[str, str] = {}
    for seed, traverses in bench.gardens:
        argv = sim_argv(seed, traverses, frames)
        print('vpr-sim ' + ' '.join(argv), flush=True)
        paths = simulate(argv)
        bags.update(zip(paths.names, paths.bags))
    return bags


def make_labels(data_root: str, out_path: str, bench: Benchmark) -> dict:
    """ψ of the training queries × the training map, per garden, joined block-diagonally."""
    from vpr_ros.training.data.dataset import select_traverses
    from vpr_ros.training.data.labels import (
        format_summary,
        generate_labels,
        read_label_meta,
        save_labels,
        summarize,
    )

    if os.path.isfile(out_path):
        return read_label_meta(out_path)['summary']
    split = bench.split
    queries = select_traverses(data_root, split.train_query)
    maps = select_traverses(data_root, split.train_map)
    gardens = sorted({bench.garden_of(n) for n in split.train_query + split.train_map})
    if len(gardens) == 1:
        _, summary = generate_labels(queries, maps, out_path, progress=True)
        print(format_summary(summary), flush=True)
        return summary
    # the trainer concatenates traverses in the order given: garden blocks must be contiguous
    parts, r0, c0 = [], 0, 0
    q_names, m_names = list(split.train_query), list(split.train_map)
    for names in (q_names, m_names):
        if [bench.garden_of(n) for n in names] != sorted(bench.garden_of(n) for n in names):
            raise VPRError('training traverses must be listed garden by garden')
    for g in gardens:
        qs = [t for t, n in zip(queries, q_names) if bench.garden_of(n) == g]
        ms = [t for t, n in zip(maps, m_names) if bench.garden_of(n) == g]
        tmp = f'{out_path}.g{g}.npz'
        generate_labels(qs, ms, tmp)
        with np.load(tmp, allow_pickle=False) as z:
            parts.append((z['i'] + r0, z['j'] + c0, z['psi']))
        os.remove(tmp)
        r0 += sum(len(t) for t in qs)
        c0 += sum(len(t) for t in ms)
    i, j, psi = (np.concatenate(x) for x in zip(*parts))
    summary = summarize(i, psi, r0, c0, False)
    meta = {'version': 1, 'mode': 'query_map', 'symmetric': False, 'kind': 'strong',
            'n_rows': r0, 'n_cols': c0, 'gardens': gardens, 'summary': summary}
    save_labels(out_path, i, j, psi, _with_label_meta(meta, queries, maps))
    print(format_summary(summary), flush=True)
    return summary


def _with_label_meta(meta: dict, queries, maps) -> dict:
    """Add the fields generate_labels writes (θ, r, version, traverses) to joined labels."""
    from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M
    from vpr_ros.training.data import labels as lab

    return {**meta, 'version': lab.LABELS_VERSION, 'fov_deg': float(DEFAULT_FOV_DEG),
            'radius': float(DEFAULT_RADIUS_M), 'min_psi': lab.MIN_PSI,
            'rows': lab.meta_side(queries), 'cols': lab.meta_side(maps)}
