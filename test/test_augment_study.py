"""The augmentation study's tables: seeds grouped per recipe, verdicts by intervals, loop CIs."""
import json
import math
import os

import pytest

from experiments.augment_study import (
    format_seeds,
    format_table,
    main,
    parse_sets,
    seed_stats,
    seed_verdicts,
    wilson,
)

R1 = {'garden night': {
    'imagenet': [0.10, 0.05, 0.15],
    'gcl s0': [0.60, 0.52, 0.68], 'gcl s1': [0.64, 0.56, 0.72],
    'cl s0': [0.40, 0.32, 0.48], 'cl s1': [0.50, 0.42, 0.58],
    'gcl+photo+geo s0': [0.62, 0.54, 0.70], 'gcl+photo+geo s1': [0.66, 0.58, 0.74]}}


def test_wilson_interval_of_a_proportion():
    lo, hi = wilson(54, 54)
    assert hi == 1.0 and lo == pytest.approx(0.934, abs=1e-3)
    lo, hi = wilson(10, 20)
    assert lo == pytest.approx(0.299, abs=1e-3) and hi == pytest.approx(0.701, abs=1e-3)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_sets_name_their_root_map_and_query():
    assert parse_sets(['night=/a/b:day_map:night']) == [('night', '/a/b', 'day_map', 'night')]
    with pytest.raises(ValueError):
        parse_sets(['night=/a/b:night'])


def test_seed_statistics_and_verdicts_per_recipe():
    st = seed_stats(R1)['garden night']
    assert set(st) == {'imagenet', 'gcl', 'cl', 'gcl+photo+geo'}
    assert st['gcl']['mean'] == pytest.approx(0.62) and st['gcl']['range'] == [0.6, 0.64]
    assert st['cl']['sd'] == pytest.approx(0.0707, abs=1e-4) and st['imagenet']['sd'] == 0.0
    won = {(v['a'], v['b']): v['winner'] for v in seed_verdicts(R1)}
    assert won[('gcl', 'cl')] == 'none (intervals overlap)'  # cl s1's interval reaches 0.58
    assert won[('gcl', 'imagenet')] == 'gcl'
    assert won[('gcl+photo+geo', 'gcl')] == 'none (intervals overlap)'
    assert ('gcl+photo+geo', 'imagenet') in won
    assert '0.620 ± 0.028 (0.600, 0.640)' in format_seeds(seed_stats(R1))


def test_table_and_report_files(tmp_path):
    table = {'models': {n: '' for n in R1['garden night']}, 'r1': R1,
             'blank_wall_cosine': {n: 0.9 for n in R1['garden night']},
             'loops': {'demo loop': {n: {'r1': 0.5, 'r1_ci': [0.4, 0.6], 'recall_p100': 0.3,
                                         'recall_p100_sequence': 0.35}
                                     for n in R1['garden night']}}}
    lines = format_table(table).splitlines()
    assert len(lines) == 2 + len(R1['garden night'])
    assert lines[2].startswith('| imagenet | 0.100 [0.050, 0.150] | 0.500 [0.400, 0.600]')
    path = tmp_path / 'seeds.json'
    path.write_text(json.dumps(table))
    out = str(tmp_path / 'report')
    assert main(['report', '--table', f'seeds={path}', '--seeds', 'seeds', '--out', out]) == 0
    rep = json.loads(open(out + '.json').read())
    assert rep['tables']['seeds']['seed_stats']['garden night']['gcl']['mean'] == 0.62
    assert rep['command'].startswith('python -m experiments.augment_study report --table')
    assert os.path.getsize(out + '.png') > 10_000
