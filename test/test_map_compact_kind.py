"""
The 'compact' index kind of PlaceMap (issue 13): PCA-HNSW candidates, exact re-rank, persisted.

Data with the structure of CNN descriptors (non-negative, most variance in a few directions);
queries are keyframes moved by noise.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from vpr_ros.core.errors import MapError
from vpr_ros.map import compact_kind
from vpr_ros.map.place_map import PlaceMap

FP = 'c' * 64
SEC = 1_000_000_000


def _data(n: int, d: int = 96, rank: int = 16, nq: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)).astype(np.float32)
    scale = (1.0 / np.arange(1, rank + 1) ** 0.5).astype(np.float32)
    mean = np.abs(rng.standard_normal(d)).astype(np.float32) * 2

    def make(z):
        x = mean + (z * scale) @ basis + 0.05 * rng.standard_normal((len(z), d))
        x = np.maximum(x, 0).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    z = rng.standard_normal((n, rank)).astype(np.float32)
    src = rng.choice(n, nq, replace=False)
    return make(z), make(z[src] + 0.15 * rng.standard_normal((nq, rank)).astype(np.float32))


def _pair(x: np.ndarray, **kw) -> tuple[PlaceMap, PlaceMap]:
    maps = []
    for kind in ('flat', 'compact'):
        m = PlaceMap(x.shape[1], FP, index=kind, **kw)
        m.add_batch(x, np.arange(len(x)) * SEC)
        maps.append(m)
    return maps[0], maps[1]


@pytest.fixture(scope='module')
def data():
    return _data(3000)


def test_recall_and_exact_scores_vs_flat(data) -> None:
    x, q = data
    flat, comp = _pair(x, hnsw_m=16)
    assert comp.index_type == 'compact' and comp._compact.ready(len(x))
    assert comp._compact.cs.basis.shape == (compact_kind.out_dim_for(x.shape[1]), x.shape[1])
    hits = []
    for v in q:
        exact = flat.search(v, 5)
        got = comp.search(v, 5)
        assert len(got) == 5
        hits.append(len({r.id for r in got} & {r.id for r in exact}) / 5)
        # Scores are the full vectors' inner products, best first.
        np.testing.assert_allclose([r.score for r in got], x[[r.id for r in got]] @ v,
                                   rtol=1e-5, atol=1e-6)
        assert all(a.score >= b.score for a, b in zip(got, got[1:]))
    assert np.mean(hits) >= 0.99
    # A batch goes through the same path.
    batch = comp.search_batch(q[:5], 5)
    assert [[r.id for r in b] for b in batch] == [[r.id for r in comp.search(v, 5)]
                                                  for v in q[:5]]


def test_temporal_exclusion_same_rule_as_flat(data) -> None:
    x, _ = data
    flat, comp = _pair(x, hnsw_m=16)
    same = 0
    for i in range(0, len(x), 150):
        kw = dict(query_stamp_ns=i * SEC, exclusion_s=40.0, exclusion_n=100)
        got = comp.search(x[i], 5, **kw)
        exact = flat.search(x[i], 5, **kw)
        assert len(got) == 5
        for r in got:   # nothing within 40 s of the query, nothing of the last 100 added
            assert abs(r.id - i) > 40 and r.id < len(x) - 100
        same += [r.id for r in got] == [r.id for r in exact]
    assert same >= 0.9 * len(range(0, len(x), 150))
    # Excluding almost all of the map: the few eligible ones come back, as with flat.
    kw = dict(query_stamp_ns=0, exclusion_s=1e9, exclusion_n=len(x) - 3)
    assert comp.search(x[0], 5, **kw) == []
    kw = dict(exclusion_n=len(x) - 3)
    assert [r.id for r in comp.search(x[0], 5, **kw)] == [
        r.id for r in flat.search(x[0], 5, **kw)]


def test_below_min_count_it_is_flat(data) -> None:
    x, q = data
    flat, comp = _pair(x[:compact_kind.MIN_COUNT - 1])
    assert not comp._compact.ready(len(comp)) and comp._compact.fits == 0
    for v in q[:10]:
        assert [(r.id, r.score) for r in comp.search(v, 5)] == [
            (r.id, r.score) for r in flat.search(v, 5)]
    # Reaching the minimum fits the projection once; later adds extend the graph.
    comp.add_batch(x[len(comp):len(comp) + 5], np.arange(5) * SEC + 10**12)
    assert comp._compact.ready(len(comp)) and comp._compact.fits == 1
    comp.add(x[-1], 2 * 10**12)
    assert comp._compact.ready(len(comp)) and comp._compact.fits == 1
    comp.reset()
    assert len(comp) == 0 and comp.search(q[0], 5) == []


def test_saved_and_loaded_without_refit(data, tmp_path, monkeypatch) -> None:
    x, q = data
    d = str(tmp_path / 'm')
    _, comp = _pair(x, hnsw_m=16)
    before = [[(r.id, r.score) for r in comp.search(v, 5)] for v in q]
    gen = comp.save(d)
    comp.close()
    with open(os.path.join(gen, 'manifest.json')) as f:
        man = json.load(f)
    assert man['index']['type'] == 'compact' and 'compact.bin' in man['files']

    def no_fit(*a, **kw):
        raise AssertionError('the projection was refitted on load')
    monkeypatch.setattr(compact_kind, 'fit_projection', no_fit)
    m = PlaceMap.load(d, FP, x.shape[1])
    assert m.index_type == 'compact' and m._compact.ready(len(x)) and m._compact.fits == 0
    assert [[(r.id, r.score) for r in m.search(v, 5)] for v in q] == before
    m.add(x[0], 10**13)   # new rows join the loaded graph, no refit
    assert m._compact.ready(len(m))
    m.close()


def test_kind_changes_on_load(data, tmp_path) -> None:
    x, q = data
    d = str(tmp_path / 'm')
    flat, _ = _pair(x)
    flat.save(d)
    flat.close()
    m = PlaceMap.load(d, FP, x.shape[1], index='compact')   # built (fitted) here
    assert m.index_type == 'compact' and m._compact.ready(len(x)) and m._compact.fits == 1
    gen = m.save(d)
    m.close()
    assert os.path.exists(os.path.join(gen, 'compact.bin'))
    m = PlaceMap.load(d, FP, x.shape[1], index='flat')
    assert m.index_type == 'flat' and not m._compact.ready(len(x))
    gen = m.save(d)
    m.close()
    assert not os.path.exists(os.path.join(gen, 'compact.bin'))


# ------------------------------------------------------------------ hostile files
D = 8


def _sha(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _refresh(gen: str) -> None:
    path = os.path.join(gen, 'manifest.json')
    with open(path) as f:
        man = json.load(f)
    for name in man['files']:
        p = os.path.join(gen, name)
        man['files'][name] = {'size': os.path.getsize(p), 'sha256': _sha(p)}
    with open(path, 'w') as f:
        json.dump(man, f)


@pytest.fixture(scope='module')
def pristine(tmp_path_factory) -> str:
    """Save a small compact map with a graph (minimum lowered) to copy and damage."""
    mp = pytest.MonkeyPatch()
    mp.setattr(compact_kind, 'MIN_COUNT', 50)
    d = str(tmp_path_factory.mktemp('pristine') / 'm')
    m = PlaceMap(D, FP, index='compact', hnsw_m=4)
    m.add_batch(np.random.default_rng(0).normal(size=(60, D)), np.arange(60) * SEC)
    assert m._compact.ready(60)
    m.save(d)
    m.close()
    mp.undo()
    return d


def _copy(pristine: str, tmp_path) -> tuple[str, str]:
    d = str(tmp_path / 'm')
    shutil.copytree(pristine, d)
    return d, os.path.join(d, 'gen-000001')


def test_fuzzed_compact_file(pristine, tmp_path) -> None:
    """Bytes of the compact file replaced or cut, hashes refreshed: MapError naming it or a map."""
    d, gen = _copy(pristine, tmp_path)
    path = os.path.join(gen, 'compact.bin')
    with open(path, 'rb') as f:
        good = f.read()
    rng = np.random.default_rng(7)
    loaded = 0
    for k in range(150):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            # Mostly the header, the projection and the graph's headers; sometimes anywhere.
            pos = int(rng.integers(0, min(len(data), 400))) if k % 3 else int(
                rng.integers(0, len(data)))
            width = int(rng.choice([1, 4, 8]))
            data[pos:pos + width] = rng.bytes(width)[:len(data) - pos]
        if k % 10 == 0:
            data = data[:int(rng.integers(0, len(data)))]
        with open(path, 'wb') as f:
            f.write(bytes(data))
        _refresh(gen)
        try:
            m = PlaceMap.load(d, FP, D)
        except MapError as err:
            assert 'compact.bin' in str(err), (k, str(err))
            continue
        loaded += 1
        assert len(m.search(np.ones(D), 3)) == 3
        m.add(np.ones(D), 10**15)
        m.close()
    assert loaded < 150


@pytest.mark.parametrize('edit', ['missing', 'unlisted', 'other_dim', 'empty_graph_extra'])
def test_crafted_compact_files(pristine, tmp_path, edit) -> None:
    d, gen = _copy(pristine, tmp_path)
    path = os.path.join(gen, 'compact.bin')
    if edit == 'missing':
        os.unlink(path)
        with pytest.raises(MapError, match='compact.bin'):
            PlaceMap.load(d, FP, D)
        return
    if edit == 'unlisted':
        man_path = os.path.join(gen, 'manifest.json')
        with open(man_path) as f:
            man = json.load(f)
        del man['files']['compact.bin']
        with open(man_path, 'w') as f:
            json.dump(man, f)
        with pytest.raises(MapError, match='manifest.json'):
            PlaceMap.load(d, FP, D)
        return
    with open(path, 'r+b') as f:
        data = bytearray(f.read())
        if edit == 'other_dim':
            data[8:12] = (9).to_bytes(4, 'little')
        else:   # no graph announced, but bytes follow
            data[12:16] = (0).to_bytes(4, 'little')
        f.seek(0)
        f.write(data)
    _refresh(gen)
    with pytest.raises(MapError, match='compact.bin'):
        PlaceMap.load(d, FP, D)
