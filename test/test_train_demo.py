"""`make train-demo` in reduced form: bags → extract → labels → GCL/CL → export → eval → demo."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

FRAMES = 24        # images rendered per traverse
DEMO_FRAMES = 40   # images of the demo bag played into each node
REDUCED = ['--frames', str(FRAMES), '--image-size', '96', '96', '--epochs', '2',
           '--pairs-per-epoch', '64', '--batch-size', '16', '--workers', '0',
           '--demo-frames', str(DEMO_FRAMES), '--no-progress', '--loss', 'both', '--boot', '200']


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'vpr_ros.training.demo.train_demo', *args],
                          env=os.environ.copy(), capture_output=True, text=True, timeout=900)


@pytest.mark.ros
@pytest.mark.slow
def test_train_demo_reduced(tmp_path, repo_root) -> None:
    from vpr_ros.model.encoder import build_encoder

    corridor = os.path.join(os.path.dirname(repo_root), 'shared', 'data', 'corridor')
    corridor = corridor if os.path.isdir(corridor) else ''
    out = tmp_path / 'td'
    proc = _run(['--out', str(out), '--corridor', corridor, *REDUCED])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / 'train_demo_summary.json').read_text())

    # every bag extracted with every frame (one each 0.4 m, extraction keeps 0.3 m)
    assert summary['frames_extracted'] and set(summary['frames_extracted'].values()) == {FRAMES}
    assert summary['labels']['positives'] > 0

    # the exported file is what the node loads: its size and fingerprint
    enc = build_encoder(summary['model'], device='cpu')
    assert enc.spec.image_size == (96, 96) and enc.fingerprint == summary['fingerprint']

    rows = {r['model']: r for r in summary['models']}
    assert set(rows) == {'imagenet', 'gcl s0', 'cl s0'}
    trained = {m['name']: m for m in summary['trained']}
    assert trained['gcl s0']['lr'] == 0.1 and trained['cl s0']['lr'] == 0.01  # paper's rates
    assert trained['gcl s0']['best']['metric'] == 'r1'
    sets = (['garden winter', 'garden fog', 'garden night (seen condition)']
            + (['corridor (real)'] if corridor else []))
    for row in rows.values():
        for name in sets:
            cell = row[name]
            assert 0.0 <= cell['r1'] <= cell['r5'] <= cell['r10'] <= 1.0, (name, row)
            assert cell['n_queries'] > 0
            for metric in ('r1', 'r5', 'r10', 'map5', 'ap'):
                lo, hi = cell['ci'][metric]
                assert lo <= cell[metric] + 1e-9 and cell[metric] <= hi + 1e-9, (metric, cell)
    for name in ('imagenet', 'gcl s0'):  # the demo ran with the baseline and the first model
        demo = rows[name]['demo']
        assert demo['frames_processed'] == DEMO_FRAMES
        assert demo['node_exit_code'] == 0 and demo['map_saved']
    assert 'demo' not in rows['cl s0']
    for row in rows.values():  # the textureless collapse, measured per model
        assert 0.0 < row['blank_wall_cosine'] <= 1.0
    assert 'two different blank walls, cosine' in proc.stdout
    assert rows['gcl s0']['fingerprint'] == summary['fingerprint']
    assert rows['imagenet']['fingerprint'].startswith('builtin:')
    node_log = (out / 'demo_gcl_s0' / 'vpr_node.log').read_text()
    assert summary['fingerprint'] in node_log  # the node ran the trained model
    assert os.path.getsize(summary['report_png']) > 10_000
    pairs = {(v['set'], v['metric'], v['a'], v['b']) for v in summary['verdicts']}
    assert ('garden winter', 'ap', 'gcl', 'cl') in pairs and len(pairs) == len(sets) * 5 * 3
    assert 'who wins' in proc.stdout and 'garden winter, GCL vs CL: ' in proc.stdout

    # a second run reuses every stage: nothing is extracted or trained again
    again = _run(['--out', str(out), '--corridor', corridor, *REDUCED, '--no-demo'])
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert 'resumed from' in again.stdout and 'epoch 1/' not in again.stdout
    assert 'kept ' not in again.stdout
    second = json.loads((out / 'train_demo_summary.json').read_text())
    assert second['fingerprint'] == summary['fingerprint']


# ---------------------------------------------------------------- bootstrap intervals (fast)
def _toy(n_q: int = 120, noise: float = 1.0, seed: int = 1):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(200, 32))
    q = m[:n_q] + rng.normal(size=(n_q, 32)) * noise
    pos = [np.array([i, i + 1]) if i % 9 else np.zeros(0, np.int64) for i in range(n_q)]
    return q, m, pos


def test_bootstrap_centre_is_vpr_eval_s_numbers() -> None:
    from vpr_ros.core.metrics import evaluate_descriptors
    from vpr_ros.training.eval.bootstrap_ci import bootstrap, per_query_terms

    q, m, pos = _toy()
    q[5] = q[6]  # tied scores: one threshold, as in metrics.precision_recall_curve
    ref = evaluate_descriptors(q, m, pos, ks=(1, 5, 10))
    ci = bootstrap([per_query_terms(q, m, pos)], n_boot=300, seed=3)[0]
    for key, want in (('r1', ref['recall'][1]), ('r5', ref['recall'][5]),
                      ('r10', ref['recall'][10]), ('map5', ref['map'][5]), ('ap', ref['ap'])):
        assert ci[key]['value'] == pytest.approx(want, abs=1e-6), key
        assert ci[key]['lo'] <= want <= ci[key]['hi'], key
        assert ci[key]['hi'] - ci[key]['lo'] > 0.0 or want in (0.0, 1.0), key
    assert ci['n_queries'] == sum(len(p) > 0 for p in pos)
    again = bootstrap([per_query_terms(q, m, pos)], n_boot=300, seed=3)[0]
    assert again == ci  # seeded: a rerun reports the same intervals


def test_bootstrap_interval_shrinks_with_queries_and_verdict_needs_clear_intervals() -> None:
    from vpr_ros.training.eval.bootstrap_ci import bootstrap, per_query_terms, verdict

    small = bootstrap([per_query_terms(*_toy(40, 1.3))], n_boot=300)[0]['r1']
    large = bootstrap([per_query_terms(*_toy(180, 1.3))], n_boot=300)[0]['r1']
    assert large['hi'] - large['lo'] < small['hi'] - small['lo']
    good = bootstrap([per_query_terms(*_toy(150, 0.6))], n_boot=300)
    bad = bootstrap([per_query_terms(*_toy(150, 2.5))], n_boot=300)
    assert verdict(good, bad, 'r1') == 'a' and verdict(bad, good, 'r1') == 'b'
    near = bootstrap([per_query_terms(*_toy(150, 0.62, seed=2))], n_boot=300)
    assert verdict(good, near, 'r1') == 'tie'  # overlapping intervals: no winner
    # one seed of a recipe overlapping the other recipe is enough for no winner
    assert verdict(good + near, bad, 'r1') == 'a'
    assert verdict(good, near + bad, 'r1') == 'tie'


def test_report_says_where_gcl_does_not_win() -> None:
    from vpr_ros.training.demo.train_demo_report import format_table, verdicts

    def cell(v: float, half: float) -> dict:
        d = {k: v for k in ('r1', 'r5', 'r10', 'map5', 'ap')}
        return {**d, 'n_queries': 100, 'ci': {k: [v - half, v + half] for k in d}}
    rows = [{'model': 'imagenet', 's': cell(0.5, 0.02)},
            {'model': 'gcl s0', 's': {**cell(0.80, 0.03), 'ap': 0.6,
                                      'ci': {**cell(0.8, 0.03)['ci'], 'ap': [0.55, 0.65]}}},
            {'model': 'cl s0', 's': {**cell(0.78, 0.03), 'ap': 0.4,
                                     'ci': {**cell(0.78, 0.03)['ci'], 'ap': [0.35, 0.45]}}}]
    v = {(x['metric'], x['a'], x['b']): x['winner'] for x in verdicts(rows, ['s'])}
    assert v[('r1', 'gcl', 'cl')] == 'none (intervals overlap)'
    assert v[('ap', 'gcl', 'cl')] == 'gcl'
    assert v[('r1', 'cl', 'imagenet')] == 'cl'
    text = format_table(rows, ['s'])
    assert 's, GCL vs CL: GCL wins AP (all pairs); no winner on R@1, R@5, R@10, mAP@5' in text
    assert 's, CL vs IMAGENET: CL wins R@1, R@5, R@10, mAP@5; IMAGENET wins AP (all pairs)' in text
    assert '0.800 [0.770, 0.830]' in text


def test_large_benchmark_tests_unseen_gardens_and_conditions() -> None:
    """--large: >= 1,000 unseen-garden queries; a trained condition (night) only in those."""
    from vpr_ros.sim.conditions import parse_condition
    from vpr_ros.sim.trajectories import ROUTES, sample_traverse, TraverseSpec
    from vpr_ros.sim.world import generate_world
    from vpr_ros.training.demo.train_demo_sets import LARGE

    split = LARGE.split
    trained = split.train_map + split.train_query + split.val_map + split.val_query
    by_name = {t.name: (seed, t) for seed, ts in LARGE.gardens for t in ts}
    train_gardens = {by_name[n][0] for n in trained}
    def look(condition: str):  # the appearance, whatever the preset's name
        return dataclasses.replace(parse_condition(condition), name='')
    train_conditions = {look(by_name[n][1].condition) for n in trained}
    assert len(train_gardens) >= 2 and len(LARGE.gardens) >= 4
    n_unseen_garden = 0
    for label, map_name, query_name in split.test:
        seed, q = by_name[query_name]
        assert by_name[map_name][0] == seed  # ψ needs map and query in one garden
        assert query_name not in trained and map_name not in trained
        seen_condition = look(q.condition) in train_conditions
        assert not (seen_condition and seed in train_gardens), label
        route = ROUTES[q.route] if isinstance(q.route, str) else q.route
        n = len(sample_traverse(TraverseSpec(route=tuple(route), rate_hz=2.5),
                                generate_world(seed))[0])
        n_unseen_garden += n if seed not in train_gardens else 0
    assert n_unseen_garden >= 1000
    # the trainer concatenates traverses in order: per-garden ψ blocks need them grouped
    for names in (split.train_query, split.train_map):
        gardens = [LARGE.garden_of(n) for n in names]
        assert gardens == sorted(gardens)


def test_labels_of_two_gardens_are_block_diagonal(tmp_path) -> None:
    """Poses of two gardens share coordinates, not places: no ψ across gardens, blocks exact."""
    from synthetic import make_synthetic_garden

    from vpr_ros.sim.dataset import TraverseConfig
    from vpr_ros.training.data.dataset import select_traverses
    from vpr_ros.training.data.labels import generate_labels, load_labels
    from vpr_ros.training.demo.train_demo_sets import Benchmark, make_labels, Split

    root = str(tmp_path / 'g')
    make_synthetic_garden(root)  # two "gardens": the train pair and the val pair
    bench = Benchmark('two', ((0, (TraverseConfig('train_map'), TraverseConfig('train_query'))),
                              (1, (TraverseConfig('val_map'), TraverseConfig('val_query')))),
                      Split(train_map=('train_map', 'val_map'),
                            train_query=('train_query', 'val_query')))
    out = str(tmp_path / 'labels.npz')
    make_labels(root, out, bench)
    psi = load_labels(out).toarray()
    blocks = []
    for m, q in (('train_map', 'train_query'), ('val_map', 'val_query')):
        path = str(tmp_path / f'{m}.npz')
        generate_labels(select_traverses(root, [q]), select_traverses(root, [m]), path)
        blocks.append(load_labels(path).toarray())
    (r0, c0), (r1, c1) = blocks[0].shape, blocks[1].shape
    assert psi.shape == (r0 + r1, c0 + c1)
    np.testing.assert_array_equal(psi[:r0, :c0], blocks[0])
    np.testing.assert_array_equal(psi[r0:, c0:], blocks[1])
    assert not psi[:r0, c0:].any() and not psi[r0:, :c0].any()
    # labelled together, the second garden's queries would overlap the first garden's map
    naive = str(tmp_path / 'naive.npz')
    generate_labels(select_traverses(root, ['val_query']), select_traverses(root, ['train_map']),
                    naive)
    assert load_labels(naive).nnz > 0


def test_default_corridor_is_the_shared_set_beside_the_checkout(repo_root) -> None:
    """The corridor default names ../shared/data/corridor (it named training/../shared once)."""
    from vpr_ros.training.demo.train_demo import build_parser

    want = os.path.join(os.path.dirname(repo_root), 'shared', 'data', 'corridor')
    assert build_parser().get_default('corridor') == want
