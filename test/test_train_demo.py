"""`make train-demo` in reduced form: bags → extract → labels → GCL → export → eval → demo."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FRAMES = 24        # images rendered per traverse
DEMO_FRAMES = 40   # images of the demo bag played into each node
REDUCED = ['--frames', str(FRAMES), '--image-size', '96', '96', '--epochs', '2',
           '--pairs-per-epoch', '64', '--batch-size', '16', '--workers', '0',
           '--demo-frames', str(DEMO_FRAMES), '--no-progress']


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'vpr_ros.training.train_demo', *args],
                          env=os.environ.copy(), capture_output=True, text=True, timeout=900)


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
    assert set(rows) == {'default', 'trained'}
    sets = ['garden winter', 'garden fog'] + (['corridor (real)'] if corridor else [])
    for row in rows.values():
        for name in sets:
            assert 0.0 <= row[name]['r1'] <= row[name]['r5'] <= 1.0, (name, row)
            assert row[name]['n_queries'] > 0
        demo = row['demo']
        assert demo['frames_processed'] == DEMO_FRAMES
        assert demo['node_exit_code'] == 0 and demo['map_saved']
    assert rows['trained']['fingerprint'] == summary['fingerprint']
    assert rows['default']['fingerprint'].startswith('builtin:')
    node_log = (out / 'demo_trained' / 'vpr_node.log').read_text()
    assert summary['fingerprint'] in node_log  # the node ran the trained model
    assert os.path.getsize(summary['report_png']) > 10_000
    assert 'garden winter R@1/R@5' in proc.stdout

    # a second run reuses every stage: nothing is extracted or trained again
    again = _run(['--out', str(out), '--corridor', corridor, *REDUCED, '--no-demo'])
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert 'resumed from' in again.stdout and 'epoch 1/' not in again.stdout
    assert 'kept ' not in again.stdout
    second = json.loads((out / 'train_demo_summary.json').read_text())
    assert second['fingerprint'] == summary['fingerprint']
