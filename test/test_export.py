"""vpr-export: the trained network as a model file that build_encoder loads, same embeddings."""
import os

import numpy as np
import pytest
from synthetic import make_synthetic_garden

from vpr_ros.model.encoder import build_encoder, Encoder
from vpr_ros.model.model_file import load_model
from vpr_ros.model.whitening import apply_whitening
from vpr_ros.training.data.dataset import load_image, load_traverse
from vpr_ros.training.fit.train import main as train_main
from vpr_ros.training.ship.export import load_trained_net
from vpr_ros.training.ship.export import main as export_main


@pytest.fixture(scope='module')
def run(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp('garden'))
    make_synthetic_garden(root)
    out = str(tmp_path_factory.mktemp('run'))
    assert train_main(['--data-root', root, '--train-map', 'train_map', '--train-query',
                       'train_query', '--image-size', '64', '64', '--workers', '0',
                       '--no-progress', '--epochs', '1', '--batch-size', '16',
                       '--pairs-per-epoch', '32', '--out', out]) == 0
    return root, out


def _images(root: str, n: int = 12) -> list[np.ndarray]:
    t = load_traverse(os.path.join(root, 'val_query', 'index.json'))
    return [load_image(p) for p in t.image_paths[:n]]


def test_export_embeds_like_the_trained_net(run, tmp_path):
    root, out = run
    path = str(tmp_path / 'model.pt')
    assert export_main([out, '--out', path]) == 0
    net, _ = load_trained_net(out)
    imgs = _images(root)
    want = Encoder(net, 'trained', device='cpu').embed(imgs)
    enc = build_encoder(path, device='cpu')
    got = enc.embed(imgs)
    assert enc.spec.image_size == (64, 64) and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    _, prov = load_model(path)
    assert prov['loss'] == 'gcl' and prov['epoch'] == 1 and prov['created']
    assert prov['data']['train_query'] == ['train_query'] and 'git_commit' in prov
    assert prov['whitening'] is None


def test_export_with_whitening(run, tmp_path):
    root, out = run
    path = str(tmp_path / 'model_w.pt')
    assert export_main([out, '--out', path, '--whiten-dim', '32', '--data-root', root,
                        '--whiten-map', 'train_map']) == 0
    enc = build_encoder(path, device='cpu')
    assert enc.dim == 32
    net, _ = load_trained_net(out)
    imgs = _images(root)
    raw = Encoder(net, 'trained', device='cpu').embed(imgs)
    w = enc.net.whitening
    expected = apply_whitening(raw, w.mean.numpy(), w.proj.numpy())
    np.testing.assert_allclose(enc.embed(imgs), expected, atol=1e-4)
    _, prov = load_model(path)
    assert prov['whitening']['dim'] == 32 and prov['whitening']['fitted_on'] == ['train_map']


def test_export_refuses_missing_checkpoint(tmp_path):
    assert export_main([str(tmp_path), '--out', str(tmp_path / 'm.pt')]) == 2
