"""Keyframe map: search with temporal exclusion, persistence, crash-safe saves, refusals."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vpr_ros.core.errors import MapError, MapMismatchError
from vpr_ros.map.place_map import KeyframeRecord, PlaceMap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = 'a' * 64
FP2 = 'b' * 64
SEC = 1_000_000_000


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int,
              spread: float = 0.3) -> np.ndarray:
    centres = unit(rng, n_clusters, d)
    x = centres[rng.integers(0, n_clusters, n)] + spread / np.sqrt(d) * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tree_digest(directory: str) -> dict:
    """Every file's bytes under `directory`, so 'untouched' can be asserted exactly."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def brute_force(m: PlaceMap, q: np.ndarray, k: int, allowed) -> list[int]:
    ids = m.ids()
    vecs = np.stack([m.descriptor(i) for i in ids])
    scores = vecs @ (q / np.linalg.norm(q))
    order = [int(ids[j]) for j in np.argsort(-scores, kind='stable') if allowed(int(ids[j]))]
    return order[:k]


@pytest.fixture
def small_map() -> tuple[PlaceMap, np.ndarray]:
    rng = np.random.default_rng(0)
    x = unit(rng, 200, 32)
    m = PlaceMap(32, FP)
    for i in range(200):
        pose = np.array([i, 0, 0, 0, 0, 0, 1.0]) if i % 3 else None
        m.add(x[i], stamp_ns=i * SEC, pose=pose, frame_id='cam',
              blob=bytes([i % 256]) * i if i else None)
    return m, x


def test_add_and_search_exact(small_map) -> None:
    m, x = small_map
    assert len(m) == 200 and m.session == 0 and m.next_id == 200
    res = m.search(x[17] * 3.0, k=10)  # not unit: the map normalises
    assert res[0].id == 17 and res[0].score == pytest.approx(1.0, abs=1e-5)
    scores = [r.score for r in res]
    assert scores == sorted(scores, reverse=True) and len(res) == 10
    assert [r.id for r in res] == brute_force(m, x[17], 10, lambda i: True)
    rec = m.record(17)
    assert isinstance(rec, KeyframeRecord) and rec.stamp_ns == 17 * SEC
    assert rec.frame_id == 'cam' and rec.session == 0 and rec.has_pose
    assert not m.record(3).has_pose and np.all(np.isnan(m.record(3).pose))
    assert m.blob(5) == b'\x05' * 5 and m.blob(0) is None
    np.testing.assert_allclose(m.descriptor(42), x[42], atol=1e-6)
    # several at once, in the order asked (the sequence evidence reads its candidates so)
    np.testing.assert_array_equal(m.descriptors([42, 7, 199]),
                                  np.stack([m.descriptor(k) for k in (42, 7, 199)]))
    assert m.descriptors([]).shape == (0, 32)
    with pytest.raises(KeyError):
        m.descriptors([7, 999])
    assert [r.id for r in m.records()] == list(range(200))
    with pytest.raises(KeyError):
        m.record(999)


def test_refuses_bad_descriptors(small_map) -> None:
    m, x = small_map
    for bad, what in [(np.zeros(31, np.float32), 'dimension 32'),
                      (np.full(32, np.nan, np.float32), 'NaN'),
                      (np.r_[np.inf, np.ones(31)], 'NaN or inf'),
                      (np.zeros(32), 'zero norm')]:
        with pytest.raises(MapError, match=what):
            m.add(bad, 0)
        with pytest.raises(MapError, match=what):
            m.search(bad, 3)
    with pytest.raises(MapError, match='7-vector'):
        m.add(x[0], 0, pose=np.zeros(3))
    with pytest.raises(MapError, match='exclusion_s'):
        m.search(x[0], 3, query_stamp_ns=0, exclusion_s=-1.0)
    assert len(m) == 200
    with pytest.raises(MapError, match='index must be'):
        PlaceMap(32, FP, index='ivf')


def test_exclusion_by_time_keeps_k(small_map) -> None:
    m, x = small_map
    q, qs = x[150], 150 * SEC
    res = m.search(q, k=8, query_stamp_ns=qs, exclusion_s=60.5)
    ids = [r.id for r in res]
    assert len(ids) == 8 and all(abs(i - 150) > 60 for i in ids)
    assert ids == brute_force(m, q, 8, lambda i: abs(i - 150) > 60)
    # Inclusive, as the detector always applied it: a keyframe exactly exclusion_s away is
    # excluded (issue 9: one rule, the map's; the map used to keep it, the detector drop it).
    res = m.search(x[100], k=200, query_stamp_ns=150 * SEC, exclusion_s=50.0)
    assert 99 in [r.id for r in res] and 100 not in [r.id for r in res]
    assert len(res) == 200 - 100
    # Almost everything excluded: the few eligible keyframes still come back, all of them.
    res = m.search(q, k=10, query_stamp_ns=qs, exclusion_s=148.5)
    assert sorted(r.id for r in res) == [0, 1]


def test_exclusion_by_count(small_map) -> None:
    m, x = small_map
    res = m.search(x[199], k=5, exclusion_n=30)
    assert len(res) == 5 and all(r.id < 170 for r in res)
    assert [r.id for r in res] == brute_force(m, x[199], 5, lambda i: i < 170)
    both = m.search(x[10], k=5, query_stamp_ns=10 * SEC, exclusion_s=5.5, exclusion_n=30)
    assert [r.id for r in both] == brute_force(
        m, x[10], 5, lambda i: i < 170 and abs(i - 10) > 5)


def test_search_batch_matches_search(small_map) -> None:
    m, x = small_map
    stamps = [i * SEC for i in (5, 50, 120, 199)]
    batch = m.search_batch(x[[5, 50, 120, 199]], 6, stamps, exclusion_s=20.5, exclusion_n=10)
    for q, s, got in zip((5, 50, 120, 199), stamps, batch):
        one = m.search(x[q], 6, query_stamp_ns=s, exclusion_s=20.5, exclusion_n=10)
        assert [r.id for r in got] == [r.id for r in one]


def test_add_batch_equals_add() -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 50, 16)
    a, b = PlaceMap(16, FP), PlaceMap(16, FP)
    for i in range(50):
        a.add(x[i], i * SEC, blob=b'z' if i == 7 else None)
    ids = b.add_batch(x, [i * SEC for i in range(50)],
                      blobs=[b'z' if i == 7 else None for i in range(50)])
    assert list(ids) == list(range(50)) and b.blob(7) == b'z'
    for q in (0, 20, 49):
        ra = a.search(x[q], 5, q * SEC, exclusion_s=3.5, exclusion_n=4)
        rb = b.search(x[q], 5, q * SEC, exclusion_s=3.5, exclusion_n=4)
        assert [r.id for r in ra] == [r.id for r in rb]


def test_round_trip_and_new_session(small_map, tmp_path) -> None:
    m, x = small_map
    d = str(tmp_path / 'map')
    m.save(d)
    m2 = PlaceMap.load(d, FP, 32)
    assert len(m2) == 200 and m2.session == 1 and m2.next_id == 200
    for kid in (0, 3, 17, 199):
        a, b = m.record(kid), m2.record(kid)
        assert (a.id, a.stamp_ns, a.session, a.frame_id) == (b.id, b.stamp_ns, b.session,
                                                              b.frame_id)
        np.testing.assert_array_equal(a.pose, b.pose)  # NaN poses come back as NaN
        assert m2.blob(kid) == m.blob(kid)
        np.testing.assert_array_equal(m2.descriptor(kid), m.descriptor(kid))
    # The new session's ids continue; its own recent keyframes are excluded, old ones never.
    new = m2.add(x[5], stamp_ns=5 * SEC, blob=b'new')
    assert new.id == 200 and new.session == 1
    res = m2.search(x[5], k=3, query_stamp_ns=5 * SEC, exclusion_s=10.0, exclusion_n=1)
    assert res[0].id == 5 and 200 not in [r.id for r in res]
    assert [r.id for r in m2.search(x[5], k=2)] in ([5, 200], [200, 5])
    # Blobs of saved keyframes are read from disk and survive a second save, to a new dir too.
    m2.save(d)
    m2.save(str(tmp_path / 'copy'))
    for where in (d, str(tmp_path / 'copy')):
        m3 = PlaceMap.load(where, FP, 32)
        assert m3.session == 2 and m3.next_id == 201 and len(m3) == 201
        assert m3.blob(150) == bytes([150]) * 150 and m3.blob(200) == b'new'
        assert m3.record(200).session == 1 and m3.record(199).session == 0
    # IDS: the id reservation (ids unique across crashes), written before ids are handed out.
    assert sorted(os.listdir(d)) == ['.lock', 'CURRENT', 'IDS', 'gen-000002']


def test_reset_keeps_ids_increasing(small_map, tmp_path) -> None:
    m, x = small_map
    m.reset()
    assert len(m) == 0 and m.search(x[0], 5) == [] and m.next_id == 200
    assert m.add(x[0], 0).id == 200
    m.save(str(tmp_path / 'm'))
    m2 = PlaceMap.load(str(tmp_path / 'm'), FP, 32)
    assert m2.ids().tolist() == [200] and m2.next_id == 201 and m2.blob(200) is None


def test_open_existing_and_new(small_map, tmp_path) -> None:
    m, x = small_map
    d = str(tmp_path / 'm')
    fresh = PlaceMap.open(d, FP, 32, load_existing=True)
    assert len(fresh) == 0 and not os.path.exists(d)
    m.save(d)
    before = tree_digest(d)
    assert len(PlaceMap.open(d, FP, 32, load_existing=True)) == 200
    new = PlaceMap.open(d, FP, 32, load_existing=False)
    assert len(new) == 0 and tree_digest(d) == before  # nothing deleted until a save
    new.add(x[0], 0)
    new.save(d)
    assert len(PlaceMap.load(d, FP, 32)) == 1


def test_mismatch_refused_map_untouched(small_map, tmp_path) -> None:
    m, _ = small_map
    d = str(tmp_path / 'm')
    m.save(d)
    before = tree_digest(d)
    with pytest.raises(MapMismatchError) as err:
        PlaceMap.load(d, FP2, 32)
    assert FP in str(err.value) and FP2 in str(err.value)
    with pytest.raises(MapMismatchError, match='dimension 32.*dimension 64'):
        PlaceMap.open(d, FP, 64, load_existing=True)
    assert tree_digest(d) == before
    assert len(PlaceMap.load(d, FP, 32)) == 200


def _corrupt(path: str, data: bytes = None, keep_size: bool = True) -> None:
    size = os.path.getsize(path)
    with open(path, 'r+b' if keep_size else 'wb') as f:
        f.write(data if data is not None else np.random.default_rng(0).bytes(size))


@pytest.mark.parametrize('target,verify,expect', [
    ('index.faiss', True, 'index.faiss does not match its sha256'),
    ('index.faiss', False, r'map index .*index.faiss is corrupt'),
    ('keyframes.sqlite', False, r'map database .*keyframes.sqlite is corrupt'),
    ('manifest.json', True, r'map manifest .*manifest.json is unreadable'),
    ('CURRENT', True, r'map pointer .*CURRENT is (corrupt|unreadable)'),
    ('truncate', True, r'index.faiss has \d+ bytes, the manifest says'),
])
def test_corrupt_files_raise_map_error(small_map, tmp_path, target, verify, expect) -> None:
    m, _ = small_map
    d = str(tmp_path / 'm')
    m.save(d)
    gen = os.path.join(d, 'gen-000001')
    if target == 'CURRENT':
        _corrupt(os.path.join(d, 'CURRENT'), b'\xff\x00garbage', keep_size=False)
    elif target == 'truncate':
        with open(os.path.join(gen, 'index.faiss'), 'r+b') as f:
            f.truncate(1000)
    else:
        _corrupt(os.path.join(gen, target))
    with pytest.raises(MapError, match=expect):
        PlaceMap.load(d, FP, 32, verify=verify)
    with pytest.raises(MapError):
        PlaceMap.open(d, FP, 32, load_existing=True)


def test_missing_map_is_an_error(tmp_path) -> None:
    with pytest.raises(MapError, match='no map in'):
        PlaceMap.load(str(tmp_path), FP, 32)


CHILD = r'''
import sys, time
import numpy as np
from vpr_ros.map import place_map
stage, d = sys.argv[1], sys.argv[2]
m = place_map.PlaceMap.load(d, sys.argv[3], 64)
rng = np.random.default_rng(5)
m.add_batch(rng.normal(size=(20000, 64)), np.arange(20000) * 10**7,
            blobs=[b'new'] * 20000)
def hook(s):
    if s == stage:
        print('AT', s, flush=True)
        time.sleep(120)
place_map._SAVE_HOOK = hook
m.save(d)
print('DONE', flush=True)
'''


@pytest.mark.parametrize('stage', ['gen_created', 'index_written', 'db_written',
                                   'manifest_written', 'current_tmp_written', 'committed'])
def test_crash_during_save_keeps_previous_map(small_map, tmp_path, stage) -> None:
    m, x = small_map
    m = PlaceMap(64, FP)
    rng = np.random.default_rng(3)
    old = unit(rng, 300, 64)
    m.add_batch(old, np.arange(300) * SEC, blobs=[b'old'] * 300)
    d = str(tmp_path / 'm')
    m.save(d)
    proc = subprocess.Popen([sys.executable, '-c', CHILD, stage, d, FP], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f'AT {stage}', proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    loaded = PlaceMap.load(d, FP, 64)
    if stage == 'committed':  # CURRENT was already switched: the new map is the map
        assert len(loaded) == 20300 and loaded.blob(20299) == b'new'
        return
    # The killed child handed out 20000 ids in session 1 (reserved in IDS before): they and
    # its session are never reused, although its save never committed (issue 11 #6).
    assert len(loaded) == 300 and loaded.next_id >= 20300 and loaded.session == 2
    assert loaded.blob(299) == b'old'
    assert loaded.search(old[123], 1)[0].id == 123
    # The half-written generation is ignored, then cleaned away by the next save.
    loaded.add(old[0], 0)
    loaded.save(d)
    assert sorted(n for n in os.listdir(d) if n.startswith('gen-')) == ['gen-000003']
    assert len(PlaceMap.load(d, FP, 64)) == 301


def test_100k_round_trip_d256(tmp_path) -> None:
    rng = np.random.default_rng(7)
    n, d = 100_000, 256
    x = unit(rng, n, d)
    poses = rng.normal(size=(n, 7))
    poses[::10] = np.nan
    m = PlaceMap(d, FP)
    m.add_batch(x, np.arange(n, dtype=np.int64) * 50_000_000, poses=poses,
                frame_ids=['cam'] * n, blobs=[bytes([i % 251]) * 8 if i % 7 == 0 else None
                                              for i in range(n)])
    t0 = time.perf_counter()
    m.save(str(tmp_path / 'big'))
    t_save = time.perf_counter() - t0
    t0 = time.perf_counter()
    m2 = PlaceMap.load(str(tmp_path / 'big'), FP, d)
    t_load = time.perf_counter() - t0
    print(f'100k x 256: save {t_save:.2f} s, load {t_load:.2f} s')
    assert len(m2) == n and m2.next_id == n and m2.session == 1
    assert np.array_equal(m2.ids(), np.arange(n))
    np.testing.assert_array_equal(m2.poses(), m.poses())
    for kid in (0, 7, 49_999, 99_995, 99_999):
        np.testing.assert_array_equal(m2.descriptor(kid), m.descriptor(kid))  # bit-exact
        np.testing.assert_allclose(m2.descriptor(kid), x[kid], atol=1e-6)
        assert m2.blob(kid) == m.blob(kid) and m2.record(kid).stamp_ns == kid * 50_000_000
    for q in (11, 77_777):
        assert m2.search(x[q], 1)[0].id == q


def test_hnsw_matches_flat_top1_on_clusters(tmp_path) -> None:
    rng = np.random.default_rng(11)
    x = clustered(rng, 5000, 64, 50)
    flat = PlaceMap(64, FP)
    hnsw = PlaceMap(64, FP, index='hnsw', hnsw_m=16, hnsw_ef_construction=80,
                    hnsw_ef_search=64)
    flat.add_batch(x, np.arange(5000) * SEC)
    hnsw.add_batch(x, np.arange(5000) * SEC)
    q = x[rng.choice(5000, 200, replace=False)]
    q = q + 0.05 / 8 * rng.normal(size=q.shape)
    f1 = [r[0].id for r in flat.search_batch(q, 1)]
    h1 = [r[0].id for r in hnsw.search_batch(q, 1)]
    assert np.mean(np.array(f1) == np.array(h1)) >= 0.99
    # Exclusion holds for HNSW too, and enough results come back.
    res = hnsw.search(x[4000], 5, query_stamp_ns=4000 * SEC, exclusion_s=2000.5)
    assert len(res) == 5 and all(abs(r.id - 4000) > 2000 for r in res)
    hnsw.save(str(tmp_path / 'h'))
    h2 = PlaceMap.load(str(tmp_path / 'h'), FP, 64, hnsw_ef_search=32)
    assert h2.index_type == 'hnsw' and h2.hnsw_ef_search == 32
    assert h2.search(x[42], 1)[0].id == 42


def test_auto_switch_to_hnsw_past_threshold() -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 300, 16)
    m = PlaceMap(16, FP, hnsw_threshold=250)
    m.add_batch(x[:249], np.arange(249))
    assert m.index_type == 'flat'
    for i in range(249, 300):
        m.add(x[i], i)
    assert m.index_type == 'hnsw' and len(m) == 300
    assert m.search(x[10], 1)[0].id == 10 and m.search(x[290], 1)[0].id == 290


def test_load_changes_index_type(tmp_path) -> None:
    rng = np.random.default_rng(4)
    x = unit(rng, 400, 16)
    flat = PlaceMap(16, FP)
    flat.add_batch(x, np.arange(400))
    d = str(tmp_path / 'm')
    flat.save(d)
    h = PlaceMap.open(d, FP, 16, load_existing=True, hnsw_threshold=300, hnsw_m=8)
    assert h.index_type == 'hnsw' and h.search(x[3], 1)[0].id == 3
    h.save(d)
    kept = PlaceMap.load(d, FP, 16, hnsw_m=48, hnsw_ef_search=20)  # graph kept: M stays 8
    assert kept.index_type == 'hnsw' and kept.hnsw_ef_search == 20
    kept.save(d)
    with open(os.path.join(d, 'gen-000003', 'manifest.json')) as f:
        assert '"hnsw_m": 8' in f.read()
    back = PlaceMap.load(d, FP, 16, index='flat')
    assert back.index_type == 'flat' and back.search(x[399], 1)[0].id == 399
