"""
experiments/ship_model.py, run from the repository root as the README says (issue 18).

A trained model file becomes a shipped one: delta format, network unchanged, the operating
point fitted jointly over the loop reports, the recipe and the benchmark rows. It left the
installed package; this keeps it runnable (`python -m experiments.ship_model`) and tested.
"""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder_pair(folder: str) -> str:
    """Eight places, seen once as references and once again (noisier) as queries."""
    rows = ['query,ref']
    for sub in ('ref', 'query'):
        os.makedirs(os.path.join(folder, sub))
    for i in range(8):
        base = np.kron(np.random.default_rng(i).integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1)))
        for sub, seed in (('ref', 0), ('query', 1)):
            noise = np.random.default_rng(100 * seed + i).normal(0, 6, base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, sub, f'{i}.png'))
        rows.append(f'query/{i}.png,ref/{i}.png')
    with open(os.path.join(folder, 'ground_truth.csv'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    return folder


@pytest.mark.slow
def test_ship_model_makes_a_delta_file_with_its_calibrated_point(tmp_path):
    from synthetic import train_tiny_run

    from vpr_ros.model.model_file import load_model
    from vpr_ros.model.operating_point import PROVENANCE_KEY
    from vpr_ros.training.eval.loop_mode import evaluate_loop
    from vpr_ros.training.ship.export import main as export_main

    _, run = train_tiny_run(str(tmp_path))
    model = str(tmp_path / 'model.pt')
    assert export_main([run, '--out', model]) == 0
    reports = []
    for k in range(2):  # two loop reports, as the shipped file's two loops
        out = str(tmp_path / f'loop{k}')
        evaluate_loop(folder=_folder_pair(str(tmp_path / f'pair{k}')), models=[model],
                      include_default=False, exclusion_frames=2, verify=True, gate=False,
                      device='cpu', out_dir=out, progress=False, verbose=False)
        reports.append(os.path.join(out, 'loop_results.json'))
    summary = tmp_path / 'summary.json'
    summary.write_text(json.dumps({'models': [
        {'model': 'imagenet', 'set': {'r1': 0.5, 'ci': {'r1': [0.4, 0.6]}}},
        {'model': 'gcl s0', 'set': {'r1': 0.7, 'ci': {'r1': [0.6, 0.8]}}}]}))
    shipped = str(tmp_path / 'shipped.pt')
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.ship_model', model, '--summary', str(summary),
         '--row', 'gcl s0', '--loop-report', *reports, '--loop-name', 'a', 'b',
         '--loop-source', 'pair a', 'pair b', '--recipe', 'vpr-train ...', '--train-time',
         '10 s', '--name', 'tiny', '--out', shipped],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'sha256' in proc.stdout
    net, prov = load_model(shipped)
    source, _ = load_model(model)
    for (k, a), (_, b) in zip(net.state_dict().items(), source.state_dict().items()):
        assert torch.equal(a, b), k                      # bit-identical network
    with open(shipped, 'rb') as f:
        assert torch.load(f, weights_only=True)['version'] == 2  # delta from ImageNet
    point = prov[PROVENANCE_KEY]
    assert [s['name'] for s in point['data']['sets']] == ['a', 'b']
    assert point['data']['verification'] == 'orb' and point['data']['map'] == 'node keyframes'
    assert prov['shipped']['name'] == 'tiny' and prov['recipe']['train_time'] == '10 s'
    assert set(prov['benchmark']['rows']) == {'imagenet', 'gcl s0'}
    assert [r['loop'] for r in prov['loops']] == ['a', 'b']
