"""The collapse experiment's table and PNG say what was measured, per model, in one row each."""
import os

import pytest

from experiments.collapse_experiment import format_table, parse_models, plot

SUMMARY = {
    'blank_wall_cosine': {'imagenet': 0.846, 'gcl': 0.971},
    'lowtex_cosine_test': {'imagenet': 0.842, 'gcl': 0.959},
    'r1': {'g2_test_winter': {'imagenet': [0.384, 0.333, 0.438], 'gcl': [0.771, 0.721, 0.815]}},
    'loops': {'corridor loop': {
        n: {'r1': r, 'recall_p100': p, 'r1_sequence': rv, 'recall_p100_sequence': pv}
        for n, r, p, rv, pv in (('imagenet', 0.531, 0.045, 0.486, 0.153),
                                ('gcl', 0.540, 0.009, 0.522, 0.117))}},
}


def test_models_are_named_and_imagenet_comes_first():
    assert parse_models(['a=/x/a.pt', 'b=b.pt']) == [('imagenet', ''), ('a', '/x/a.pt'),
                                                      ('b', 'b.pt')]
    for bad in ('a.pt', '=a.pt', 'a='):
        with pytest.raises(ValueError):
            parse_models([bad])


def test_table_rows_hold_every_measure(tmp_path):
    lines = format_table(SUMMARY).splitlines()
    assert len(lines) == 4 and 'low-tex cos (test)' in lines[0]
    assert lines[0].count('|') == lines[2].count('|') == lines[3].count('|')
    assert lines[3].split(' | ')[:4] == ['| gcl', '0.971', '0.959', '0.771 [0.721, 0.815]']
    assert lines[2].rstrip(' |').endswith('0.531 | 0.045 | 0.486 | 0.153')
    path = plot(SUMMARY, str(tmp_path / 'c.png'))
    assert os.path.getsize(path) > 10_000
