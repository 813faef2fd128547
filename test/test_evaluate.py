"""vpr-eval: the real corridor set with the default model, and synthetic traverses for ψ hits."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.fov import fov_overlap_many
from vpr_ros.core.psi import positives as psi_positives
from vpr_ros.training.data.dataset import write_index
from vpr_ros.training.data.folder_pair import read_folder_pair
from vpr_ros.training.eval.evaluate import evaluate


def _png_ok(path):
    with Image.open(path) as im:
        im.load()
        return im.size[0] > 200 and im.size[1] > 200


@pytest.fixture(scope='module')
def corridor_report(corridor_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('eval_corridor'))
    return evaluate(folder=corridor_dir, whiten_dim=64, out_dir=out, device='cpu',
                    progress=False, cache_dir=os.path.join(out, 'cache')), out


def test_corridor_default_model(corridor_report):
    """ImageNet MobileNetV2 + GeM at 224x224 gives R@1 ≈ 0.64 here; lower means a bug."""
    report, out = corridor_report
    base = report['rows'][0]
    assert base['name'] == 'imagenet-mobilenetv2-gem' and not base['whitened']
    assert report['dataset']['n_map'] == 111 and report['dataset']['n_query'] == 111
    assert report['dataset']['skipped'] == {'map': 0, 'query': 0, 'files': []}
    assert base['recall'][1] >= 0.60, base['recall']
    assert base['recall'][1] <= base['recall'][5] <= base['recall'][10] <= base['recall'][20]
    assert 0.0 < base['ap'] <= 1.0 and 0.0 < base['map'][5] <= 1.0
    assert base['n_without_positive'] == 0
    white = report['rows'][1]
    assert white['whitened'] and white['dim'] == 64 and 0.0 <= white['recall'][1] <= 1.0
    with open(report['files']['json']) as f:
        back = json.load(f)
    assert back['rows'][0]['recall']['1'] == pytest.approx(base['recall'][1])
    assert back['rows'][1]['map']['5'] == pytest.approx(white['map'][5])
    assert _png_ok(report['files']['recall_png']) and _png_ok(report['files']['pr_png'])
    assert os.path.dirname(report['files']['json']) == out


def test_corridor_cli(corridor_dir, corridor_report, tmp_path):
    """The CLI on the same set; descriptors come from the function run's cache (CPU time)."""
    out = str(tmp_path / 'cli')
    cache = os.path.join(corridor_report[1], 'cache')
    assert corridor_report[0]['cache']['hits'] == {'imagenet-mobilenetv2-gem': 0}
    cmd = [sys.executable, '-m', 'vpr_ros.training.eval.evaluate', '--folder', corridor_dir,
           '--out', out, '--device', 'cpu', '--no-progress', '--cache', cache]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=85)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'imagenet-mobilenetv2-gem' in r.stdout and 'R@1' in r.stdout
    with open(os.path.join(out, 'eval_results.json')) as f:
        back = json.load(f)
    assert back['cache']['hits'] == {'imagenet-mobilenetv2-gem': 222}
    assert back['rows'][0]['recall']['1'] == pytest.approx(
        corridor_report[0]['rows'][0]['recall'][1], abs=1e-6)
    assert _png_ok(os.path.join(out, 'recall_at_k.png'))


def test_read_folder_pair(corridor_dir):
    m, q, refs = read_folder_pair(corridor_dir)
    assert len(m) == len(q) == len(refs) == 111
    assert refs[0][0].endswith(os.path.join('ref', '0000000.jpg'))


# ----------------------------------------------------------------------------- synthetic

class TinyEncoder:
    """A fixed, fast 'model': the image downsampled to 8x8 grey, so tests need no network."""

    dim = 64
    fingerprint = 'tiny'

    def embed(self, images, encoding='rgb8'):
        out = []
        for im in images:
            g = np.asarray(im, dtype=np.float32).mean(axis=2)
            h, w = g.shape
            d = g[:h - h % 8, :w - w % 8].reshape(8, h // 8, 8, w // 8).mean(axis=(1, 3))
            d = d.ravel() - d.mean()
            out.append(d / (np.linalg.norm(d) + 1e-9))
        return np.stack(out).astype(np.float32)


def _texture(place, noise_seed):
    rng = np.random.default_rng(1000 + place)
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    img = np.kron(base, np.ones((6, 8, 1)))
    img += np.random.default_rng(noise_seed).normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_traverse(folder, xs, yaws, places, seed, corrupt=()):
    os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
    names, poses = [], []
    for i, (x, yaw, place) in enumerate(zip(xs, yaws, places)):
        name = f'{i:04d}.png'
        path = os.path.join(folder, 'images', name)
        if i in corrupt:
            with open(path, 'wb') as f:
                f.write(b'\x89PNG\r\n\x1a\nnot really')
        else:
            Image.fromarray(_texture(place, seed * 100 + i)).save(path)
        q = Rotation.from_euler('z', yaw).as_quat()
        names.append(name)
        poses.append([x, 0.5, 0.0, *q])
    return write_index(os.path.join(folder, 'index.json'), 'images/', names, poses)


@pytest.fixture(scope='module')
def traverses(tmp_path_factory):
    root = tmp_path_factory.mktemp('trav')
    xs = np.arange(20, dtype=np.float64)
    m = _write_traverse(str(root / 'map'), xs, np.zeros(20), range(20), 1, corrupt=(17,))
    # Queries 0.3 m ahead of map places 2..12, same heading; the last one is far off the map.
    qx = xs[2:14] + 0.3
    qx[-1] = 40.0
    qyaw = np.zeros(12)
    qyaw[-1] = np.pi
    q = _write_traverse(str(root / 'query'), qx, qyaw, range(2, 14), 2)
    return m, q, qx, qyaw


def test_psi_positives_match_all_pairs():
    rng = np.random.default_rng(3)
    n_m, n_q = 60, 25

    def poses(n):
        yaw = rng.uniform(-np.pi, np.pi, n)
        q = Rotation.from_euler('z', yaw[:, None]).as_quat()
        return np.c_[rng.uniform(0, 12, (n, 2)), np.zeros(n), q], yaw
    mp, myaw = poses(n_m)
    qp, qyaw = poses(n_q)
    got = psi_positives(mp, qp, 0.5, 90.0, 3.5)
    ii, jj = np.meshgrid(np.arange(n_q), np.arange(n_m), indexing='ij')
    psi = fov_overlap_many(qp[ii.ravel(), :2], qyaw[ii.ravel()], mp[jj.ravel(), :2],
                           myaw[jj.ravel()], 90.0, 3.5).reshape(n_q, n_m)
    for i in range(n_q):
        assert got[i].tolist() == np.flatnonzero(psi[i] > 0.5).tolist()
    assert sum(len(g) for g in got) > 5


def test_traverse_psi_hits(traverses, tmp_path):
    m, q, qx, qyaw = traverses
    rep = evaluate([m], [q], models=[('tiny', TinyEncoder())], include_default=False,
                   out_dir=str(tmp_path), progress=False, verbose=False)
    ds = rep['dataset']
    assert ds['skipped']['map'] == 1 and ds['skipped']['query'] == 0
    assert ds['n_map'] == 19 and ds['n_query'] == 12
    row = rep['rows'][0]
    # The far query sees nothing the map sees: no positive, left out and counted.
    assert row['n_without_positive'] == 1 and row['n_evaluated'] == 11
    assert row['recall'][1] == 1.0 and row['recall'][5] == 1.0
    assert row['n_positive_pairs'] > 11  # neighbours 1 m apart overlap with ψ > 0.5
    assert os.path.exists(rep['files']['pr_png'])


def test_traverse_distance_hits(traverses):
    m, q, _, _ = traverses
    rep = evaluate([m], [q], models=[('tiny', TinyEncoder())], include_default=False,
                   hit='distance', max_dist=0.5, progress=False, verbose=False)
    row = rep['rows'][0]
    # Within 0.5 m only the map image of the same place; the far query has none.
    assert row['n_positive_pairs'] == 11 and row['n_without_positive'] == 1
    assert row['recall'][1] == 1.0
    assert rep['dataset']['hit'] == {'rule': 'distance', 'max_dist_m': 0.5}


def test_cli_bad_input(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'vpr_ros.training.eval.evaluate', '--map',
                        str(tmp_path / 'missing.json'), '--query', str(tmp_path / 'q.json'),
                        '--no-default', '--model', 'x.pt'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'vpr-eval' in r.stderr
