"""
The shipped GCL model (``model_path: gcl_garden``), as issue 14 asks.

Pinned sha256, installed with the package, loaded offline through the model file's safe path,
carrying its provenance and calibrated point.
"""
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from vpr_ros.core.errors import ModelFileError
from vpr_ros.model import imagenet, shipped
from vpr_ros.model.backbones import MOBILENET_V2_SHA256
from vpr_ros.model.encoder import build_encoder, default_net
from vpr_ros.model.model_file import file_fingerprint, load_model, save_model
from vpr_ros.model.operating_point import model_operating_point
from vpr_ros.ros.params import ParamError, Params

torch.set_num_threads(2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'gcl_garden'


def _sha(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_shipped_file_has_the_pinned_hash_and_is_small() -> None:
    path, pinned = shipped.path_and_sha256(NAME)
    assert path == os.path.join(REPO, 'vpr_ros', 'model', 'data', 'gcl_garden_mnv2.pt')
    assert _sha(path) == pinned == file_fingerprint(NAME) and len(pinned) == 64
    assert os.path.getsize(path) < 5_000_000  # a delta: ~3.6 MB, not the full 9 MB
    raw = torch.load(path, map_location='cpu', weights_only=True)
    assert raw['version'] == 2 and raw['base'] == MOBILENET_V2_SHA256


def test_loads_offline_with_provenance_and_calibrated_point(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError('the shipped model must load without the network')

    monkeypatch.setattr(imagenet, '_can_reach', no_network)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    enc = build_encoder(NAME, device='cpu')
    assert enc.fingerprint == shipped.SHIPPED[NAME].sha256
    assert enc.fingerprint != default_net()[1]  # maps of one model are refused by the other
    _, prov = load_model(NAME)
    assert prov['loss'] == 'gcl' and prov['training']['train_blocks'] == 2
    assert 'vpr-train-demo --large' in prov['recipe']['command'] and prov['recipe']['train_time']
    rows = prov['benchmark']['rows']
    assert set(rows) == {'imagenet', 'gcl s0'}
    corridor = rows['gcl s0']['corridor (real)']
    assert corridor['n_queries'] == 111 and len(corridor['ci']['r1']) == 2
    point, why = model_operating_point(NAME)
    assert point is not None, why
    assert point.precision == 1.0 and point.min_inliers is not None
    assert [s['name'] for s in point.data['sets']] == ['simulated demo loop',
                                                      'real corridor as a loop']


def _plant(tmp_path, monkeypatch, write) -> str:
    """Put another file where the shipped one is read from; return its path."""
    monkeypatch.setattr(shipped, 'DATA_DIR', str(tmp_path))
    path = os.path.join(str(tmp_path), shipped.SHIPPED[NAME].file)
    write(path)
    return path


class _CreatesMarker:
    """Unpickling this calls ``open(marker, 'w')``: a file appears if the pickle ever runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_planted_pickle_in_place_of_the_shipped_file_never_runs(tmp_path, monkeypatch) -> None:
    marker = tmp_path / 'pwned'

    def write(path: str) -> None:
        with open(path, 'wb') as f:
            pickle.dump({'format': 'vpr_ros.model', 'x': _CreatesMarker(str(marker))}, f)

    path = _plant(tmp_path, monkeypatch, write)
    for load in (load_model, lambda n: build_encoder(n, device='cpu'), model_operating_point):
        with pytest.raises(ModelFileError, match=f'{path} has sha256 .* expected'):
            load(NAME)
    assert not marker.exists()


def test_valid_model_file_with_another_hash_refused(tmp_path, monkeypatch) -> None:
    net, _ = load_model(NAME)
    path = _plant(tmp_path, monkeypatch,
                  lambda p: save_model(p, net, {'note': 'genuine format, not the pinned bytes'},
                                       delta_from_imagenet=True))
    with pytest.raises(ModelFileError, match='pinned hash of this shipped model'):
        load_model(NAME)
    assert load_model(path)[1] == {'note': 'genuine format, not the pinned bytes'}  # as a path


def test_parameter_accepts_the_name_and_names_the_choices() -> None:
    assert Params({'model_path': NAME}).model_path == NAME
    with pytest.raises(ParamError, match='does not exist.*shipped model.*gcl_garden'):
        Params({'model_path': 'gcl_gardn'})
    with pytest.raises(ModelFileError, match='no shipped model'):
        shipped.path_and_sha256('gcl_gardn')


def test_wheel_installs_the_shipped_file(tmp_path) -> None:
    """`pip install .` (a wheel) carries the file, byte for byte; colcon: test_workspace.py."""
    src = tmp_path / 'src'
    src.mkdir()
    for rel in ('setup.py', 'setup.cfg', 'package.xml', 'resource', 'launch', 'config',
                'vpr_ros', 'training'):
        from_ = os.path.join(REPO, rel)
        if os.path.isdir(from_):
            shutil.copytree(from_, src / rel, symlinks=True,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copy2(from_, src / rel)
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                           '--no-build-isolation', '-q', '-w', str(tmp_path / 'wheel'),
                           str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = os.listdir(tmp_path / 'wheel')
    with zipfile.ZipFile(tmp_path / 'wheel' / wheel) as zf:
        data = zf.read('vpr_ros/model/data/' + shipped.SHIPPED[NAME].file)
    assert hashlib.sha256(data).hexdigest() == shipped.SHIPPED[NAME].sha256
