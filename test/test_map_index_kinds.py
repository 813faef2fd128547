"""
Issue 18: a new index kind is one entry in the table, nothing else.

A toy kind is registered in a test (one `IndexKind` entry: flat storage plus a state of its own
with its own file and its own candidate search) and a map made with it is added to, searched,
saved, checked, loaded and searched again, without a line of the map, its storage, manifest or
search knowing the kind. The node's `map_index` parameter offers the table's kinds.
"""
import json
import os
import struct

import faiss
import numpy as np
import pytest

from vpr_ros.core.errors import MapError
from vpr_ros.map import index_kinds
from vpr_ros.map.index_file import FLAT_TAG, IndexFileWalker, open_nofollow
from vpr_ros.map.kind_base import IndexKind, KindState
from vpr_ros.map.place_map import PlaceMap
from vpr_ros.map.search import flat_arrays
from vpr_ros.ros.params import BY_NAME, ParamError, validate

FP = 't' * 64
D = 16
SEC = 10**9


class ToyState(KindState):
    """Keeps the sum of the stored vectors (its 'structure'), saved in toy.bin; proposes all."""

    FILES = ('toy.bin',)
    proposed = 0
    reads = 0

    def __init__(self, params, total=None) -> None:
        super().__init__(params)
        self.total = total

    def sync(self, index) -> None:
        self.total = flat_arrays(index)[0].sum(axis=0)

    def clear(self) -> None:
        self.total = None

    def ready(self, count: int) -> bool:
        return self.total is not None

    def proposer(self, index, count):
        xb, ids = flat_arrays(index)

        def propose(q, f, k):
            ToyState.proposed += 1
            scores = xb @ q
            top = np.argsort(-scores, kind='stable')[:f]
            return ids[top], scores[top]
        return propose

    def write(self, gen: str, dim: int, count: int) -> None:
        fd = open_nofollow(os.path.join(gen, 'toy.bin'), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, 'wb') as f:
            f.write(struct.pack('<Q', count) + np.asarray(self.total, '<f4').tobytes())

    @classmethod
    def read(cls, gen: str, dim: int, count: int, params) -> 'ToyState':
        path = os.path.join(gen, 'toy.bin')
        with os.fdopen(open_nofollow(path, os.O_RDONLY), 'rb') as f:
            data = f.read()
        if len(data) != 8 + 4 * dim or struct.unpack('<Q', data[:8])[0] != count:
            raise MapError(f'toy state {path} disagrees with the manifest')
        cls.reads += 1
        return cls(params, np.frombuffer(data[8:], '<f4').copy())


TOY = IndexKind('toy', FLAT_TAG, lambda dim, p: faiss.IndexFlatIP(dim),
                lambda inner: isinstance(inner, faiss.IndexFlatIP), lambda inner, p: None,
                IndexFileWalker.flat_body, 'a test kind', state=ToyState)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(index_kinds.INDEX_KINDS, 'toy', TOY)
    ToyState.proposed = ToyState.reads = 0
    return TOY


def _data(n: int = 300, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_registered_kind_is_added_to_searched_saved_and_loaded(toy, tmp_path) -> None:
    x = _data()
    flat = PlaceMap(D, FP)
    m = PlaceMap(D, FP, index='toy')
    for pm in (flat, m):
        pm.add_batch(x, np.arange(len(x)) * SEC, blobs=[bytes([i % 256]) for i in range(len(x))])
    assert m.index_type == 'toy'
    kw = dict(query_stamp_ns=100 * SEC, exclusion_s=20.0, exclusion_n=5)
    got = [[(r.id, round(r.score, 5)) for r in m.search(v, 5, **kw)] for v in x[:20]]
    assert got == [[(r.id, round(r.score, 5)) for r in flat.search(v, 5, **kw)] for v in x[:20]]
    assert ToyState.proposed >= 20   # the kind's own candidates were used

    d = str(tmp_path / 'm')
    gen = m.save(d)
    m.close()
    with open(os.path.join(gen, 'manifest.json')) as f:
        man = json.load(f)
    assert man['index']['type'] == 'toy'
    assert sorted(man['files']) == ['index.faiss', 'keyframes.sqlite', 'toy.bin']
    back = PlaceMap.load(d, FP, D)
    assert back.index_type == 'toy' and ToyState.reads == 1
    np.testing.assert_allclose(back._compact.total, x.sum(axis=0), rtol=1e-5)
    # Earlier sessions are never excluded: the loaded map answers like flat without exclusion.
    assert [[(r.id, round(r.score, 5)) for r in back.search(v, 5, **kw)] for v in x[:20]] == [
        [(r.id, round(r.score, 5)) for r in flat.search(v, 5)] for v in x[:20]]
    assert back.blob(7) == bytes([7]) and back.session == 1
    back.add(x[0], 10**12)          # continued in a new session
    back.save(d)
    back.close()
    # A kind change on load rebuilds into another entry of the table, and back.
    as_flat = PlaceMap.load(d, FP, D, index='flat')
    gen = as_flat.save(d)
    as_flat.close()
    assert not os.path.exists(os.path.join(gen, 'toy.bin'))
    again = PlaceMap.load(d, FP, D, index='toy')
    assert again.index_type == 'toy' and len(again) == len(x) + 1
    again.close()


def test_the_kinds_files_are_checked_like_the_others(toy, tmp_path) -> None:
    m = PlaceMap(D, FP, index='toy')
    m.add_batch(_data(50), np.arange(50) * SEC)
    d = str(tmp_path / 'm')
    gen = m.save(d)
    m.close()
    path = os.path.join(gen, 'toy.bin')
    with open(path, 'r+b') as f:   # same size, other bytes: the manifest's sha256 catches it
        f.write(b'\xff' * 8)
    with pytest.raises(MapError, match='toy.bin does not match its sha256'):
        PlaceMap.load(d, FP, D)
    os.unlink(path)
    with pytest.raises(MapError, match='toy.bin is missing'):
        PlaceMap.load(d, FP, D)


def test_unknown_kind_refused_and_params_take_the_choices_from_the_table(toy) -> None:
    with pytest.raises(MapError, match="index must be one of .*'toy'"):
        PlaceMap(D, FP, index='ivf')
    spec = BY_NAME['map_index']
    assert spec.choices == ('flat', 'hnsw', 'compact')   # the table as shipped
    for name in spec.choices:
        assert f'{name} (' in spec.description and validate('map_index', name) == name
    assert index_kinds.INDEX_KINDS['compact'].description in spec.description
    with pytest.raises(ParamError, match="'map_index'"):
        validate('map_index', 'ivf')
