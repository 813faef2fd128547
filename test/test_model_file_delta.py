"""Model file version 2: a delta from the pinned ImageNet weights, rebuilt the safe way."""
import os

import numpy as np
import pytest
import skimage.data
import torch

from vpr_ros.core.errors import ModelFileError
from vpr_ros.model.backbones import MOBILENET_V2_SHA256
from vpr_ros.model.encoder import build_encoder, Encoder, ModelSpec, VPRNet
from vpr_ros.model.model_file import file_fingerprint, load_model, save_model

torch.set_num_threads(2)
PROVENANCE = {'loss': 'gcl', 'note': 'last two blocks trained'}


@pytest.fixture(scope='module')
def images() -> list:
    cat = skimage.data.chelsea()
    rng = np.random.default_rng(1)
    return [cat, cat[60:260, 80:360]] + [rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
                                         for _ in range(6)]


def _fine_tuned() -> VPRNet:
    """ImageNet MobileNetV2 with its last two blocks and GeM p changed, as train_blocks 2 does."""
    net = VPRNet(ModelSpec(image_size=(64, 80)), pretrained=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in (net.backbone[17], net.backbone[18]):
            for t in block.state_dict().values():
                if t.is_floating_point():
                    t.add_(0.01 * torch.randn(t.shape, generator=gen))
        net.pool.p.fill_(3.7)
    return net.eval()


def _embed(net: VPRNet, images: list) -> np.ndarray:
    return Encoder(net, 'x', device='cpu').embed(images, 'rgb8')


@pytest.fixture(scope='module')
def files(tmp_path_factory, images: list) -> dict:
    d = tmp_path_factory.mktemp('delta')
    net = _fine_tuned()
    full, delta = str(d / 'full.pt'), str(d / 'delta.pt')
    fp_full = save_model(full, net, PROVENANCE)
    fp_delta = save_model(delta, net, PROVENANCE, delta_from_imagenet=True)
    return {'full': full, 'delta': delta, 'fp_full': fp_full, 'fp_delta': fp_delta,
            'embedding': _embed(net, images), 'net': net}


def _raw(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def test_delta_round_trip_gives_the_full_files_descriptors(files, images: list) -> None:
    full, prov_full = load_model(files['full'])
    delta, prov_delta = load_model(files['delta'])
    assert prov_full == prov_delta == PROVENANCE
    assert delta.spec == full.spec and delta.spec.gem_p == pytest.approx(3.7)
    a, b = full.state_dict(), delta.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_allclose(_embed(delta, images), _embed(full, images), atol=1e-6)
    np.testing.assert_allclose(_embed(delta, images), files['embedding'], atol=1e-6)
    enc = build_encoder(files['delta'], device='cpu')
    assert enc.fingerprint == files['fp_delta'] == file_fingerprint(files['delta'])
    assert files['fp_delta'] != files['fp_full']  # another file, another map identity


def test_delta_layout_holds_only_what_changed(files) -> None:
    raw_full, raw = _raw(files['full']), _raw(files['delta'])
    assert raw_full['version'] == 1 and 'base' not in raw_full  # full files stay version 1
    assert raw['version'] == 2 and raw['base'] == MOBILENET_V2_SHA256
    keys = set(raw['state_dict'])
    assert keys and all(k.startswith(('backbone.17.', 'backbone.18.')) for k in keys)
    assert 'pool.p' not in keys  # equal to the spec's p, which rebuilds it
    assert os.path.getsize(files['delta']) < 0.5 * os.path.getsize(files['full'])


def _tampered(files, tmp_path, edit) -> str:
    obj = _raw(files['delta'])
    edit(obj)
    path = str(tmp_path / 'tampered.pt')
    torch.save(obj, path)
    return path


@pytest.mark.parametrize('edit, words', [
    (lambda o: o.update(base='0' * 64), 'field base .* is not the sha256'),
    (lambda o: o.update(base=MOBILENET_V2_SHA256[:8]), 'field base'),
    (lambda o: o.update(base=None), 'state_dict does not fit'),  # a delta read as a full file
    (lambda o: o.pop('base'), 'missing field.*base'),
    (lambda o: o['spec'].update(backbone='resnet18'), 'pins no full sha256'),
    (lambda o: o['state_dict'].update({'backbone.99.weight': torch.zeros(1)}),
     'key.*not in mobilenet_v2.*backbone.99.weight'),
    (lambda o: o['state_dict'].update({'backbone.18.0.weight': torch.zeros(3, 3)}),
     'backbone.18.0.weight is \\(3, 3\\)'),
    (lambda o: o['state_dict'].update(
        {'backbone.18.0.weight': o['state_dict']['backbone.18.0.weight'].double()}),
     'backbone.18.0.weight .*float64'),
])
def test_tampered_delta_refused_naming_the_file(files, tmp_path, edit, words: str) -> None:
    path = _tampered(files, tmp_path, edit)
    with pytest.raises(ModelFileError, match=words) as info:
        load_model(path)
    assert path in str(info.value)


def test_v1_file_with_a_base_field_refused(files, tmp_path) -> None:
    obj = _raw(files['full'])
    obj['base'] = MOBILENET_V2_SHA256
    path = str(tmp_path / 'v1base.pt')
    torch.save(obj, path)
    with pytest.raises(ModelFileError, match='unknown field.*base'):
        load_model(path)


def test_delta_needs_a_pinned_backbone(tmp_path) -> None:
    net = VPRNet(ModelSpec(backbone='resnet18', pooling='avg', image_size=(64, 64)))
    with pytest.raises(ModelFileError, match='pins no full sha256 for resnet18'):
        save_model(str(tmp_path / 'r.pt'), net, {}, delta_from_imagenet=True)
    assert not os.listdir(tmp_path)


def test_delta_refused_when_the_imagenet_file_is_not_genuine(files, tmp_path,
                                                             monkeypatch) -> None:
    """The base is rebuilt only from the hash-checked ImageNet file; a swapped one stops it."""
    home = tmp_path / 'torch'
    ckpt = home / 'hub' / 'checkpoints'
    ckpt.mkdir(parents=True)
    # a valid torchvision state_dict, but not the pinned bytes
    torch.save(files['net'].state_dict(), str(ckpt / 'mobilenet_v2-b0353104.pth'))
    monkeypatch.setenv('TORCH_HOME', str(home))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # undo any earlier torch.hub.set_dir
    with pytest.raises(ModelFileError, match=f'{files["delta"]}.*delta.*sha256') as info:
        load_model(files['delta'])
    assert 'expected ' + MOBILENET_V2_SHA256 in str(info.value)


def test_vpr_export_delta_from_imagenet(tmp_path, images: list) -> None:
    """The writer path: vpr-export --delta-from-imagenet embeds like the full export."""
    from synthetic import train_tiny_run

    from vpr_ros.training.ship.export import main as export_main

    root, run = train_tiny_run(str(tmp_path))
    full, delta = str(tmp_path / 'full.pt'), str(tmp_path / 'delta.pt')
    assert export_main([run, '--out', full]) == 0
    assert export_main([run, '--out', delta, '--delta-from-imagenet']) == 0
    assert _raw(delta)['version'] == 2 and _raw(full)['version'] == 1
    assert os.path.getsize(delta) < os.path.getsize(full)
    np.testing.assert_allclose(build_encoder(delta, device='cpu').embed(images),
                               build_encoder(full, device='cpu').embed(images), atol=1e-6)
