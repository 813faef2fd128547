"""Model file: round trips, strict fields, corrupt and malicious files refused, fingerprints."""
import os
import pickle

import numpy as np
import pytest
import skimage.data
import torch

from vpr_ros.core.errors import ModelFileError
from vpr_ros.model.encoder import build_encoder, Encoder, ModelSpec, VPRNet
from vpr_ros.model.model_file import file_fingerprint, load_model, save_model
from vpr_ros.model.whitening import fit_pca_whitening

torch.set_num_threads(2)
PROVENANCE = {'loss': 'gcl', 'data': 'tb-places/w17', 'metrics': {'R@1': 0.71, 'R@5': [0.9]},
              'date': '2024-05-01T12:00:00Z'}


@pytest.fixture(scope='module')
def images() -> list:
    cat = skimage.data.chelsea()
    rng = np.random.default_rng(0)
    return [cat, cat[60:260, 80:360]] + [rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
                                         for _ in range(30)]


def _net(backbone: str = 'mobilenet_v2', pooling: str = 'gem') -> VPRNet:
    net = VPRNet(ModelSpec(backbone=backbone, pooling=pooling, image_size=(64, 80)),
                 pretrained=backbone == 'mobilenet_v2')
    if pooling == 'gem':
        with torch.no_grad():
            net.pool.p.fill_(4.25)  # as if trained: the saved p must be the trained one
    return net.eval()


def _embed(net: VPRNet, images: list) -> np.ndarray:
    return Encoder(net, 'x', device='cpu').embed(images, 'rgb8')


def _raw(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def _write(path: str, obj) -> str:
    torch.save(obj, path)
    return path


@pytest.fixture(scope='module')
def saved(tmp_path_factory, images: list) -> tuple[str, np.ndarray]:
    path = str(tmp_path_factory.mktemp('model') / 'model.pt')
    net = _net()
    save_model(path, net, PROVENANCE)
    return path, _embed(net, images)


@pytest.mark.parametrize('backbone, pooling', [('mobilenet_v2', 'gem'), ('resnet18', 'avg')])
def test_round_trip_identical_embeddings(tmp_path, images: list, backbone: str,
                                         pooling: str) -> None:
    torch.manual_seed(0)
    net = _net(backbone, pooling)
    before = _embed(net, images)
    path = str(tmp_path / 'm.pt')
    fp = save_model(path, net, PROVENANCE)
    assert fp == file_fingerprint(path) and len(fp) == 64
    loaded, prov = load_model(path)
    assert prov == PROVENANCE
    assert loaded.spec == net.spec and not loaded.training
    if pooling == 'gem':
        assert loaded.spec.gem_p == pytest.approx(4.25)
    assert np.array_equal(_embed(loaded, images), before)
    assert os.listdir(tmp_path) == ['m.pt']  # no temporary file left behind


def test_round_trip_with_whitening(tmp_path, images: list) -> None:
    net = _net()
    mean, proj = fit_pca_whitening(_embed(net, images), 12)
    net.set_whitening(mean, proj)
    before = _embed(net, images)
    assert before.shape == (len(images), 12)
    path = str(tmp_path / 'w.pt')
    save_model(path, net, {})
    raw = _raw(path)
    assert raw['output_dim'] == 12 and raw['spec']['whitening_dim'] == 12
    assert not any(k.startswith('whitening') for k in raw['state_dict'])
    loaded, _ = load_model(path)
    assert loaded.dim == 12 and loaded.spec.whitening_dim == 12
    assert np.array_equal(_embed(loaded, images), before)
    enc = build_encoder(path, device='cpu')
    assert enc.dim == 12 and enc.fingerprint == file_fingerprint(path)
    assert np.allclose(np.linalg.norm(enc.embed(images[:3], 'rgb8'), axis=1), 1, atol=1e-5)


def test_file_layout(saved) -> None:
    raw = _raw(saved[0])
    assert set(raw) == {'format', 'version', 'spec', 'output_dim', 'whitening', 'state_dict',
                        'provenance'}
    assert raw['format'] == 'vpr_ros.model' and raw['version'] == 1
    assert raw['spec'] == {'backbone': 'mobilenet_v2', 'pooling': 'gem', 'gem_p': 4.25,
                           'image_size': [64, 80], 'mean': [0.485, 0.456, 0.406],
                           'std': [0.229, 0.224, 0.225], 'whitening_dim': None}
    assert raw['output_dim'] == 1280 and raw['whitening'] is None


def test_fingerprint_changes_with_weights(tmp_path) -> None:
    net = _net()
    a = save_model(str(tmp_path / 'a.pt'), net, PROVENANCE)
    assert save_model(str(tmp_path / 'a2.pt'), net, PROVENANCE) == a  # same content, same id
    with torch.no_grad():
        net.backbone[18][0].weight[0, 0, 0, 0] += 1e-3
    b = save_model(str(tmp_path / 'a.pt'), net, PROVENANCE)  # overwrite in place
    assert b != a and file_fingerprint(str(tmp_path / 'a.pt')) == b
    assert build_encoder(str(tmp_path / 'a.pt'), device='cpu').fingerprint == b


@pytest.mark.parametrize('edit, words', [
    (lambda o: o.pop('provenance'), 'missing field.*provenance'),
    (lambda o: o.pop('state_dict'), 'missing field.*state_dict'),
    (lambda o: o.update(extra=1), 'unknown field.*extra'),
    (lambda o: o['spec'].pop('gem_p'), 'spec is missing field.*gem_p'),
    (lambda o: o['spec'].update(dropout=0.1), 'spec has unknown field.*dropout'),
    (lambda o: o.update(format='other.model'), 'format'),
    (lambda o: o.update(version=99), 'version'),
    (lambda o: o['spec'].update(backbone='vgg16'), 'backbone'),
    (lambda o: o['spec'].update(pooling='max'), 'pooling'),
    (lambda o: o.update(output_dim=512), 'output_dim'),
    (lambda o: o['spec'].update(whitening_dim=64), 'whitening_dim'),
    (lambda o: o['state_dict'].pop('pool.p'), 'pool.p'),
    (lambda o: o['state_dict'].update({'backbone.99.weight': torch.zeros(1)}), 'backbone.99'),
    (lambda o: o.update(whitening={'mean': torch.zeros(1280)}), 'whitening is missing.*proj'),
    (lambda o: o.update(whitening={'mean': torch.zeros(10), 'proj': torch.zeros(4, 10)}),
     'whitening'),
    (lambda o: o.update(provenance=[1, 2]), 'provenance'),
    (lambda o: o.clear(), 'missing field'),
])
def test_bad_fields_are_named(saved, tmp_path, edit, words: str) -> None:
    obj = _raw(saved[0])
    edit(obj)
    path = _write(str(tmp_path / 'bad.pt'), obj)
    with pytest.raises(ModelFileError, match=words):
        load_model(path)


def test_not_a_dict(tmp_path) -> None:
    with pytest.raises(ModelFileError, match='must be a dict'):
        load_model(_write(str(tmp_path / 'list.pt'), [1, 2, 3]))


def test_corrupt_and_missing_files(saved, tmp_path) -> None:
    data = open(saved[0], 'rb').read()
    cases = {'truncated.pt': data[:len(data) // 2], 'empty.pt': b'',
             'noise.pt': np.random.default_rng(0).bytes(4096),
             'flipped.pt': data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:]}
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(ModelFileError, match='corrupt|refused|state_dict|field'):
            load_model(str(path))
    with pytest.raises(ModelFileError, match='cannot read'):
        load_model(str(tmp_path / 'absent.pt'))
    with pytest.raises(ModelFileError, match='cannot read'):
        build_encoder(str(tmp_path / 'absent.pt'), device='cpu')


class _Evil:
    """A pickle payload: unpickling calls os.system and creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_malicious_pickle_refused_and_not_run(saved, tmp_path) -> None:
    marker = tmp_path / 'pwned'
    # The payload is live: plain pickle would run it (this is what the loader must never do).
    pickle.loads(pickle.dumps(_Evil(str(tmp_path / 'proof'))))
    assert (tmp_path / 'proof').exists()
    # Hidden inside an otherwise valid model file (torch zip format)...
    obj = _raw(saved[0])
    obj['provenance'] = {'note': _Evil(str(marker))}
    zipped = _write(str(tmp_path / 'evil.pt'), obj)
    # ... and as a bare legacy pickle.
    bare = tmp_path / 'evil.pkl'
    bare.write_bytes(pickle.dumps({'format': 'vpr_ros.model', 'x': _Evil(str(marker))}))
    for path in (zipped, str(bare)):
        with pytest.raises(ModelFileError, match='refused'):
            load_model(path)
        with pytest.raises(ModelFileError, match='refused'):
            build_encoder(path, device='cpu')
    assert not marker.exists()


def test_provenance_must_be_json(tmp_path) -> None:
    with pytest.raises(ModelFileError, match='JSON'):
        save_model(str(tmp_path / 'p.pt'), _net(), {'when': object()})
    assert not os.listdir(tmp_path)
    # Tuples are stored as lists (what JSON, and a weights-only load, can hold).
    save_model(str(tmp_path / 'p.pt'), _net(), {'size': (1, 2)})
    assert load_model(str(tmp_path / 'p.pt'))[1] == {'size': [1, 2]}


def test_save_keeps_old_file_on_failure(saved, tmp_path, monkeypatch) -> None:
    path = str(tmp_path / 'keep.pt')
    fp = save_model(path, _net(), PROVENANCE)

    def boom(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(OSError, match='disk full'):
        save_model(path, _net('mobilenet_v2', 'avg'), {})
    monkeypatch.undo()
    assert file_fingerprint(path) == fp and os.listdir(tmp_path) == ['keep.pt']
    assert load_model(path)[0].spec.pooling == 'gem'

