"""
Hostile map directories (issue 11 #9): a MapError naming the file, never a traceback.

Every damaged or crafted file gives a MapError naming it, never a raw traceback, MemoryError,
RecursionError or a map that loads and then fails every frame.
"""
import copy
import hashlib
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest

from vpr_ros.core.errors import MapError, MapMismatchError
from vpr_ros.map.place_map import PlaceMap

FP = 'a' * 64
D = 8
SEC = 1_000_000_000


def _sha(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module', params=['flat', 'hnsw'])
def pristine(tmp_path_factory, request) -> str:
    """Save a small map (with blobs and unknown poses) to copy and damage."""
    d = str(tmp_path_factory.mktemp('pristine') / 'm')
    rng = np.random.default_rng(0)
    m = PlaceMap(D, FP, index=request.param, hnsw_m=4)
    x = rng.normal(size=(40, D))
    poses = rng.normal(size=(40, 7))
    poses[::3] = np.nan
    m.add_batch(x, np.arange(40) * SEC, poses=poses, blobs=[b'b'] * 40)
    m.save(d)
    m.close()
    return d


def _copy(pristine: str, tmp_path) -> tuple[str, str]:
    d = str(tmp_path / 'm')
    shutil.copytree(pristine, d)
    return d, os.path.join(d, 'gen-000001')


def _rewrite_manifest(gen: str, edit) -> None:
    path = os.path.join(gen, 'manifest.json')
    with open(path) as f:
        man = json.load(f)
    edit(man)
    with open(path, 'w') as f:
        json.dump(man, f)


def _refresh_hashes(gen: str) -> None:
    """Make the manifest agree with the files, as a crafted (not just damaged) map would."""
    def edit(man):
        for name in ('index.faiss', 'keyframes.sqlite'):
            path = os.path.join(gen, name)
            man['files'][name] = {'size': os.path.getsize(path), 'sha256': _sha(path)}
    _rewrite_manifest(gen, edit)


def _load_or_map_error(d: str, what: str, verify: bool = True) -> None:
    """Either a clear MapError naming a map file, or a map that works (search and add)."""
    try:
        m = PlaceMap.load(d, FP, D, verify=verify)
    except MapMismatchError as err:  # another model or dimension: names the directory
        assert d in str(err), (what, str(err))
        return
    except MapError as err:
        assert any(n in str(err) for n in ('manifest.json', 'index.faiss', 'keyframes.sqlite',
                                           'CURRENT', 'IDS')), (what, str(err))
        return
    q = np.ones(D)
    m.search(q, 5, query_stamp_ns=0, exclusion_s=1.0)
    m.add(q, 10**12)
    m.close()


HOSTILE_VALUES = [2**64, 2**63, 2**40, -1, -2**63, 0, 1.5, float('nan'), 'x', '', None, True,
                  [], {}, [1, 2], {'a': 1}, 10**30, 'gen-000001', '../x']


def _manifest_mutations(man: dict, rng: np.random.Generator, n: int) -> list[dict]:
    """`n` deterministic manifests: fields replaced, removed or nested (seeded)."""
    paths = [(k,) for k in man] + [('index', k) for k in man['index']] + [
        ('files', f, k) for f in man['files'] for k in ('size', 'sha256')]
    out = []
    for _ in range(n):
        m = copy.deepcopy(man)
        for _ in range(int(rng.integers(1, 3))):
            path = paths[int(rng.integers(len(paths)))]
            parent = m
            for p in path[:-1]:
                parent = parent.get(p) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue
            if rng.random() < 0.15:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        out.append(m)
    return out


def test_fuzzed_manifests(pristine, tmp_path) -> None:
    d, gen = _copy(pristine, tmp_path)
    path = os.path.join(gen, 'manifest.json')
    with open(path) as f:
        man = json.load(f)
    cases = [json.dumps(m) for m in _manifest_mutations(man, np.random.default_rng(11), 150)]
    cases += ['[' * 100_000 + ']' * 100_000, '{"a":' * 50_000 + '1' + '}' * 50_000,
              '', 'null', '\xff\xfe', json.dumps(man)[:-40], ' ' * (64 << 20)]
    for k, text in enumerate(cases):
        with open(path, 'w', encoding='utf-8', errors='surrogateescape') as f:
            f.write(text)
        _load_or_map_error(d, f'manifest case {k}: {text[:80]}')


@pytest.mark.parametrize('field,value', [('next_id', 2**64), ('next_id', 2**63 - 1),
                                         ('session_count', 2**40), ('session_count', 2**64),
                                         ('count', 10**15), ('dim', 2**40)])
def test_absurd_counts_refused_at_load(pristine, tmp_path, field, value) -> None:
    d, gen = _copy(pristine, tmp_path)
    _rewrite_manifest(gen, lambda man: man.__setitem__(field, value))
    with pytest.raises(MapError, match='manifest.json'):
        PlaceMap.load(d, FP, D)


def test_fuzzed_index_headers(pristine, tmp_path) -> None:
    """Bytes of the index's headers and vector sizes replaced, hashes refreshed (crafted)."""
    d, gen = _copy(pristine, tmp_path)
    path = os.path.join(gen, 'index.faiss')
    with open(path, 'rb') as f:
        good = f.read()
    rng = np.random.default_rng(5)
    for k in range(120):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, min(len(data), 160))) if k % 3 else int(
                rng.integers(0, len(data)))
            width = int(rng.choice([1, 4, 8]))
            data[pos:pos + width] = rng.bytes(width)[:len(data) - pos]
        if k % 10 == 0:
            data = data[:int(rng.integers(0, len(data)))]
        with open(path, 'wb') as f:
            f.write(bytes(data))
        _refresh_hashes(gen)
        _load_or_map_error(d, f'index case {k}')


def test_huge_vector_size_in_index_header(pristine, tmp_path) -> None:
    d, gen = _copy(pristine, tmp_path)
    path = os.path.join(gen, 'index.faiss')
    with open(path, 'r+b') as f:
        data = bytearray(f.read())
        # The first vector size follows the IxM2 header and the inner header: 2 x 37 bytes.
        inner = 37 + 4 + 33
        data[inner:inner + 8] = (2**39).to_bytes(8, 'little')
        f.seek(0)
        f.write(data)
    _refresh_hashes(gen)
    with pytest.raises(MapError, match='index.faiss'):
        PlaceMap.load(d, FP, D)


@pytest.mark.parametrize('sql', [
    "UPDATE keyframes SET stamp_ns = 'yesterday' WHERE id = 3",
    "UPDATE keyframes SET tx = 'north' WHERE id = 4",
    "UPDATE keyframes SET session = 'first' WHERE id = 5",
    'UPDATE keyframes SET session = 4294967296 WHERE id = 5',
    "UPDATE keyframes SET frame_id = x'00ff' WHERE id = 6",
    'UPDATE keyframes SET stamp_ns = 1.5 WHERE id = 7',
    'DROP TABLE blobs',
    "INSERT INTO blobs VALUES (1000, x'00')",
])
def test_bad_database_values(pristine, tmp_path, sql) -> None:
    d, gen = _copy(pristine, tmp_path)
    db = os.path.join(gen, 'keyframes.sqlite')
    conn = sqlite3.connect(db)
    conn.execute(sql)
    conn.commit()
    conn.close()
    _refresh_hashes(gen)
    with pytest.raises(MapError, match='keyframes.sqlite'):
        PlaceMap.load(d, FP, D)


def test_fuzzed_database_bytes(pristine, tmp_path) -> None:
    d, gen = _copy(pristine, tmp_path)
    db = os.path.join(gen, 'keyframes.sqlite')
    with open(db, 'rb') as f:
        good = f.read()
    rng = np.random.default_rng(9)
    for k in range(40):
        data = bytearray(good)
        for _ in range(8):
            pos = int(rng.integers(0, len(data)))
            data[pos] = int(rng.integers(0, 256))
        with open(db, 'wb') as f:
            f.write(bytes(data))
        _refresh_hashes(gen)
        _load_or_map_error(d, f'database case {k}')


@pytest.mark.parametrize('content', [b'garbage', b'{"next_id": 18446744073709551616, '
                                     b'"session_count": 1}', b'{"next_id": 5}',
                                     b'{"next_id": "5", "session_count": 1}', b'[' * 5000,
                                     b'{"next_id": 1, "session_count": 1}' + b' ' * 10000])
def test_bad_id_reservation_is_refused(pristine, tmp_path, content) -> None:
    d, _ = _copy(pristine, tmp_path)
    with open(os.path.join(d, 'IDS'), 'wb') as f:
        f.write(content)
    with pytest.raises(MapError, match='IDS'):
        PlaceMap.load(d, FP, D)
    with pytest.raises(MapError, match='IDS'):
        PlaceMap.open(d, FP, D, load_existing=False)


def test_id_reservation_symlink_is_refused(pristine, tmp_path) -> None:
    d, _ = _copy(pristine, tmp_path)
    (tmp_path / 'elsewhere').write_text('{"next_id": 1, "session_count": 1}')
    os.symlink(tmp_path / 'elsewhere', os.path.join(d, 'IDS'))
    with pytest.raises(MapError, match='IDS.*symbolic link'):
        PlaceMap.load(d, FP, D)


@pytest.mark.parametrize('kw', [{'hnsw_ef_search': 10**12}, {'hnsw_m': 10**12},
                                {'hnsw_m': 1.5e12}, {'hnsw_ef_construction': 0},
                                {'hnsw_threshold': -1}, {'hnsw_m': 'many'}])
def test_absurd_index_parameters_are_map_errors(kw) -> None:
    with pytest.raises(MapError, match=list(kw)[0]):
        PlaceMap(D, FP, index='hnsw', **kw)


def test_absurd_live_ef_search_is_a_map_error() -> None:
    m = PlaceMap(D, FP, index='hnsw')
    with pytest.raises(MapError, match='hnsw_ef_search'):
        m.hnsw_ef_search = 10**12
    assert m.hnsw_ef_search == 256


def test_current_pointer_symlink_is_refused(pristine, tmp_path) -> None:
    d, _ = _copy(pristine, tmp_path)
    os.rename(os.path.join(d, 'CURRENT'), str(tmp_path / 'pointer'))
    os.symlink(tmp_path / 'pointer', os.path.join(d, 'CURRENT'))
    with pytest.raises(MapError, match='CURRENT.*symbolic link'):
        PlaceMap.load(d, FP, D)
