"""Labels: equal to a brute-force double loop, the paper's cases, the file and the CLI."""
import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.errors import VPRError
from vpr_ros.core.fov import fov_overlap
from vpr_ros.training.data.dataset import write_index
from vpr_ros.training.data.labels import (
    brute_force_pairs,
    compute_pairs,
    load_labels,
    main,
    read_label_meta,
)


def _poses(xy: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    q = Rotation.from_euler('z', np.asarray(yaw)[:, None]).as_quat()
    return np.concatenate([xy, np.full((len(xy), 1), 0.3), q], axis=1)


def _random_set(n: int, seed: int, size: float = 12.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, size, (n, 2)), rng.uniform(-math.pi, math.pi, n)


def test_equals_brute_force_within_one_set() -> None:
    xy, yaw = _random_set(200, 1)
    i, j, psi = compute_pairs(xy, yaw, chunk=997)
    bi, bj, bpsi = brute_force_pairs(xy, yaw)
    assert len(i) > 500  # enough overlapping pairs to mean something
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    assert np.allclose(psi, bpsi, atol=1e-12, rtol=0)
    assert np.all(i < j)
    assert np.any(psi > 0.5) and np.any(psi <= 0.5)


def test_equals_brute_force_query_vs_map_weak_radius() -> None:
    xq, yq = _random_set(70, 2, size=300.0)
    xm, ym = _random_set(60, 3, size=300.0)
    i, j, psi = compute_pairs(xq, yq, xm, ym, radius=50.0, chunk=50)
    bi, bj, bpsi = brute_force_pairs(xq, yq, xm, ym, radius=50.0)
    assert len(i) > 50
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    assert np.allclose(psi, bpsi, atol=1e-12, rtol=0)


def test_paper_cases_and_edge_cases_through_labels() -> None:
    xy = np.array([[0.0, 0.0], [0.0, 0.0],      # 0, 1: one spot, 40° apart
                   [500.0, 0.0], [500.0, 25.0],  # 2, 3: 25 m side by side, heading +x
                   [900.0, 0.0], [900.0, 0.0],  # 4, 5: identical
                   [1300.0, 0.0], [1300.0, 0.0],  # 6, 7: opposite headings
                   [1700.0, 0.0], [1801.0, 0.0],  # 8, 9: farther than 2r
                   [2200.0, 0.0], [2200.0, 0.0]])  # 10, 11: 179° vs -179°
    yaw = np.radians([0, 40, 0, 0, 10, 10, 0, 180, 0, 0, 179, -179])
    i, j, psi = compute_pairs(xy, yaw, radius=50.0)
    got = {(int(a), int(b)): float(p) for a, b, p in zip(i, j, psi)}
    assert set(got) == {(0, 1), (2, 3), (4, 5), (10, 11)}
    assert got[(0, 1)] == pytest.approx(0.5563, abs=0.002)
    assert got[(2, 3)] == pytest.approx(0.4501, abs=0.002)
    assert got[(4, 5)] == pytest.approx(1.0, abs=1e-12)
    assert got[(10, 11)] == pytest.approx(88 / 90, abs=1e-9)


def test_bad_input() -> None:
    with pytest.raises(VPRError):
        compute_pairs(np.array([[0.0, np.nan]]), np.zeros(1))
    i, j, psi = compute_pairs(np.zeros((0, 2)), np.zeros(0))
    assert len(i) == len(j) == len(psi) == 0
    i, j, psi = compute_pairs(np.zeros((1, 2)), np.zeros(1))
    assert len(psi) == 0


def test_cli_round_trip_within_and_query_map(tmp_path, capsys) -> None:
    xy_a, yaw_a = _random_set(40, 4, size=8.0)
    xy_b, yaw_b = _random_set(30, 5, size=8.0)
    for name, xy, yaw in (('w17', xy_a, yaw_a), ('w18', xy_b, yaw_b)):
        write_index(str(tmp_path / name / 'index.json'), 'images/',
                    [f'{k:05d}.png' for k in range(len(xy))], _poses(xy, yaw))
    a = str(tmp_path / 'w17' / 'index.json')
    assert main([a, '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'positives' in out and 'hard negatives' in out and 'histogram' in out
    path = str(tmp_path / 'w17' / 'w17_labels.npz')
    m = load_labels(path)
    assert m.shape == (40, 40)
    assert (abs(m - m.T)).max() == 0 and m.diagonal().max() == 0
    for _ in range(50):  # spot checks against the scalar definition
        r, c = np.random.default_rng(_).integers(0, 40, 2)
        if r != c:
            assert m[r, c] == pytest.approx(fov_overlap(xy_a[r], yaw_a[r], xy_a[c], yaw_a[c]),
                                            abs=1e-6)
    meta = read_label_meta(path)
    assert meta['fov_deg'] == 90.0 and meta['radius'] == 3.5 and meta['mode'] == 'within'
    s = meta['summary']
    assert s['pairs_total'] == 40 * 39 // 2
    assert s['positives'] + s['soft_negatives'] + s['hard_negatives'] == s['pairs_total']
    assert sum(s['histogram']['counts']) == s['pairs_stored'] == m.nnz // 2

    # query (w18) × map (w17) by name under a root, in a subprocess like the console script
    out_qm = str(tmp_path / 'qm.npz')
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.training.data.labels', '--root',
                           str(tmp_path), '--map', 'w17', '--query', 'w18', '--out', out_qm,
                           '--no-progress'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    qm = load_labels(out_qm)
    assert qm.shape == (30, 40)
    i, j, psi = brute_force_pairs(xy_b, yaw_b, xy_a, yaw_a)
    dense = np.zeros((30, 40))
    dense[i, j] = psi
    assert np.allclose(qm.toarray(), dense, atol=1e-6)
    assert read_label_meta(out_qm)['rows']['names'] == ['w18']

    assert main(['--root', str(tmp_path), '--names', 'nope', '--no-progress']) == 2


def test_weak_csv(tmp_path) -> None:
    # compass: 0° = north (+y), 90° = east (+x); two cameras 25 m apart east-west facing north
    rows = [(500000.0, 4000000.0, 0.0), (500025.0, 4000000.0, 0.0),
            (500000.0, 4000000.0, 40.0), (500000.0, 4000300.0, 180.0)]
    path = tmp_path / 'gps.csv'
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['im_path', 'easting', 'northing', 'heading_deg'])
        for k, r in enumerate(rows):
            w.writerow([f'{k}.jpg', *r])
    assert main([str(path), '--no-progress', '--out', str(tmp_path / 'gps.npz')]) == 0
    m = load_labels(str(tmp_path / 'gps.npz')).toarray()
    assert read_label_meta(str(tmp_path / 'gps.npz'))['radius'] == 50.0
    assert m[0, 1] == pytest.approx(0.4501, abs=0.002)
    assert m[0, 2] == pytest.approx(0.5563, abs=0.002)
    assert m[0, 3] == 0.0 and m[1, 3] == 0.0
    bad = tmp_path / 'bad.csv'
    bad.write_text('x,y\n1,2\n')
    assert main([str(bad), '--no-progress']) == 2
    assert os.path.exists(tmp_path / 'gps.npz')


def test_fov_options_are_one_set_for_every_command() -> None:
    """vpr-eval and vpr-train take θ / r (and the ψ threshold) from core.psi, with its defaults."""
    from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M
    from vpr_ros.core.psi import POSITIVE_PSI
    from vpr_ros.training.eval.evaluate import build_parser as eval_parser
    from vpr_ros.training.fit.train_args import build_parser as train_parser

    ev = eval_parser().parse_args(['--map', 'm.json', '--query', 'q.json'])
    tr = train_parser().parse_args(['--train-query', 'q', '--out', 'o'])
    for args in (ev, tr):
        assert (args.fov_deg, args.radius) == (DEFAULT_FOV_DEG, DEFAULT_RADIUS_M)
    assert ev.psi_threshold == POSITIVE_PSI
    out = subprocess.run([sys.executable, '-m', 'vpr_ros.training.data.labels', '--help'],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'field-of-view overlap ψ' in out and '--fov-deg' in out
