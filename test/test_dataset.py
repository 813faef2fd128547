"""TB-Places reader/writer, image loading that never crashes, and the image Dataset."""
import json
import os

import numpy as np
from PIL import Image
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.bitdepth import to_8bit
from vpr_ros.core.errors import VPRError
from vpr_ros.training.data.dataset import (
    LOAD_ERRORS,
    load_image,
    load_traverse,
    poses_from_compass,
    select_traverses,
    traverse_name,
    TraverseImages,
    write_index,
)


def _poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = Rotation.random(n, random_state=seed).as_quat()
    return np.concatenate([rng.normal(size=(n, 3)), q], axis=1)


def _write_images(folder, n: int, size=(24, 32)) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = []
    for k in range(n):
        img = np.full((*size, 3), 20 * k % 255, np.uint8)
        img[:, :, 0] = k
        name = f'{k:04d}.png'
        Image.fromarray(img).save(os.path.join(folder, name))
        names.append(name)
    return names


def test_write_load_round_trip_relative_prefix(tmp_path) -> None:
    poses = _poses(5)
    names = _write_images(tmp_path / 'w17' / 'images', 5)
    idx = str(tmp_path / 'w17' / 'index.json')
    write_index(idx, 'images/', names, poses)
    with open(idx) as f:
        raw = json.load(f)
    assert raw['im_prefix'] == 'images/' and raw['im_paths'] == names
    assert np.array_equal(np.asarray(raw['poses']), poses)  # floats survive JSON exactly
    t = load_traverse(idx)
    assert t.name == 'w17' and len(t) == 5
    assert t.image_paths[2] == os.path.join(str(tmp_path / 'w17'), 'images/', names[2])
    assert all(os.path.isfile(p) for p in t.image_paths)
    assert t.poses.shape == (5, 7) and np.array_equal(t.xy, poses[:, :2])
    # the folder can move: paths follow the index
    os.rename(tmp_path / 'w17', tmp_path / 'moved')
    t2 = load_traverse(str(tmp_path / 'moved' / 'index.json'))
    assert all(os.path.isfile(p) for p in t2.image_paths)
    assert not [f for f in os.listdir(tmp_path / 'moved') if f.startswith('.index-')]


def test_absolute_prefix_override_and_names(tmp_path) -> None:
    names = _write_images(tmp_path / 'data' / 'imgs', 3)
    idx = str(tmp_path / 'idx' / 'W18_query.json')
    write_index(idx, str(tmp_path / 'data'), [f'imgs/{n}' for n in names], _poses(3))
    t = load_traverse(idx)
    assert t.name == 'W18_query'
    assert all(os.path.isfile(p) for p in t.image_paths)
    t3 = load_traverse(idx, image_root_override='/elsewhere')
    assert t3.image_paths[0] == os.path.join('/elsewhere', 'imgs', names[0])
    assert traverse_name('/a/b/garden/index.json') == 'garden'
    assert traverse_name('/a/b/garden/W17.json') == 'W17'


def test_select_traverses(tmp_path) -> None:
    for name, n in (('W16', 2), ('W17', 3), ('W18', 4)):
        write_index(str(tmp_path / name / 'index.json'), '', [f'{k}.png' for k in range(n)],
                    _poses(n))
    (tmp_path / 'W17' / 'extract_summary.json').write_text('{"kept": 3}')
    got = select_traverses(str(tmp_path), ['W18', 'W16'])
    assert [t.name for t in got] == ['W18', 'W16'] and [len(t) for t in got] == [4, 2]
    assert [t.name for t in select_traverses(str(tmp_path))] == ['W16', 'W17', 'W18']
    one = select_traverses(str(tmp_path / 'W17' / 'index.json'))
    assert [t.name for t in one] == ['W17']
    with pytest.raises(VPRError, match='W19'):
        select_traverses(str(tmp_path), ['W19'])


def test_malformed_indices(tmp_path) -> None:
    bad = tmp_path / 'bad.json'
    for text in ('{not json', '{"poses": []}', '{"im_paths": ["a"]}',
                 '{"im_paths": ["a", "b"], "poses": [[0,0,0,0,0,0,1]]}',
                 '{"im_paths": ["a"], "poses": [[0,0,0]]}'):
        bad.write_text(text)
        with pytest.raises(VPRError):
            load_traverse(str(bad))
    with pytest.raises(VPRError):
        write_index(str(tmp_path / 'x.json'), '', ['a'], [[np.nan, 0, 0, 0, 0, 0, 1]])
    with pytest.raises(VPRError):
        write_index(str(tmp_path / 'x.json'), '', ['a', 'b'], _poses(1))
    assert not (tmp_path / 'x.json').exists()
    # empty traverse is fine
    write_index(str(tmp_path / 'empty.json'), '', [], np.zeros((0, 7)))
    assert len(load_traverse(str(tmp_path / 'empty.json'))) == 0


def test_msls_loc_index_and_compass() -> None:
    p = poses_from_compass([10.0, 10.0], [20.0, 20.0], [0.0, 90.0])
    fwd = Rotation.from_quat(p[:, 3:]).apply([1, 0, 0])
    assert np.allclose(fwd[0], [0, 1, 0]) and np.allclose(fwd[1], [1, 0, 0])  # north, east
    assert np.allclose(p[:, :3], [[10, 20, 0], [10, 20, 0]])


def test_msls_loc_index_loads(tmp_path) -> None:
    idx = tmp_path / 'database.json'
    idx.write_text(json.dumps({'im_prefix': '', 'im_paths': ['a.jpg'],
                               'loc': [[500.0, 600.0, 180.0]]}))
    t = load_traverse(str(idx))
    fwd = Rotation.from_quat(t.poses[0, 3:]).apply([1, 0, 0])
    assert np.allclose(fwd, [0, -1, 0])


def test_load_image_skips_and_counts(tmp_path) -> None:
    names = _write_images(tmp_path, 1)
    ok = load_image(str(tmp_path / names[0]))
    assert ok.shape == (24, 32, 3) and ok.dtype == np.uint8
    gray16 = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80)
    Image.fromarray(gray16).save(tmp_path / 'g16.png')
    g = load_image(str(tmp_path / 'g16.png'))
    # 16-bit grey is scaled as the node scales a mono16 camera (not stretched to the image max)
    assert g.shape == (24, 32, 3) and np.array_equal(g[..., 1], to_8bit(gray16))
    assert g.max() == round(int(gray16.max()) / 257) < 255
    (tmp_path / 'junk.png').write_bytes(b'not an image at all')
    full = (tmp_path / names[0]).read_bytes()
    (tmp_path / 'cut.png').write_bytes(full[: len(full) // 2])
    before = dict(LOAD_ERRORS)
    counters: dict = {}
    assert load_image(str(tmp_path / 'missing.png'), counters) is None
    assert load_image(str(tmp_path / 'junk.png'), counters) is None
    assert load_image(str(tmp_path / 'cut.png'), counters) is None
    assert counters == {'missing': 1, 'corrupt': 2}
    assert LOAD_ERRORS['corrupt'] - before.get('corrupt', 0) == 2


def test_image_dataset_skips_unreadable(tmp_path) -> None:
    pytest.importorskip('vpr_ros.core.preprocess')
    import torch

    names = _write_images(tmp_path / 'images', 6)
    (tmp_path / 'images' / names[1]).write_bytes(b'garbage')
    os.remove(tmp_path / 'images' / names[4])
    idx = str(tmp_path / 'index.json')
    write_index(idx, 'images', names, _poses(6))
    ds = TraverseImages(load_traverse(idx), size_hw=(16, 20))
    assert len(ds) == 4
    assert ds.valid.tolist() == [0, 2, 3, 5] and ds.skipped.tolist() == [1, 4]
    x, i = ds[1]
    assert i == 2 and isinstance(x, torch.Tensor) and tuple(x.shape) == (3, 16, 20)
    # different images give different tensors (red channel carries the index)
    assert not torch.equal(ds[0][0], ds[1][0])
    # a file that breaks after the check is replaced by the next readable one, index told
    os.remove(tmp_path / 'images' / names[3])
    x, i = ds[2]
    assert i == 5
    assert ds.summary()['missing'] == 1 and ds.summary()['skipped_up_front'] == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch, ids = next(iter(loader))
    assert tuple(batch.shape) == (2, 3, 16, 20) and ids.tolist() == [0, 2]


def test_real_jpegs_through_an_index(tmp_path, corridor_dir) -> None:
    pytest.importorskip('vpr_ros.core.preprocess')
    ref = os.path.join(corridor_dir, 'ref')
    names = sorted(os.listdir(ref))[:8]
    idx = str(tmp_path / 'corridor_ref.json')
    write_index(idx, ref, names, _poses(len(names)))  # absolute prefix: nothing copied
    t = load_traverse(idx)
    img = load_image(t.image_paths[0])
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8 and img.std() > 5
    ds = TraverseImages(t, size_hw=(96, 128))
    assert len(ds) == 8 and ds.summary()['skipped_up_front'] == 0
    x, i = ds[7]
    assert i == 7 and tuple(x.shape) == (3, 96, 128)
    assert abs(float(x.mean())) < 3.0  # ImageNet-normalised, not raw 0..255
