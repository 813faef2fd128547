"""
Map safety: no writes through symlinks, atomic adds, ids unique across crashes (issue 11).

Nothing is written outside map_dir through planted links (#2), a failed add changes nothing
(#5), and ids stay unique across SIGKILLs (#6).
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from vpr_ros.core.errors import MapError
from vpr_ros.map.place_map import PlaceMap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = 'a' * 64
SEC = 1_000_000_000
D = 16


def unit(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def saved_map(directory: str, n: int = 20, seed: int = 0) -> tuple[PlaceMap, np.ndarray]:
    """Save a map of n keyframes in `directory` (and released, as a finished tool would)."""
    x = unit(np.random.default_rng(seed), n)
    m = PlaceMap(D, FP)
    m.add_batch(x, np.arange(n) * SEC, blobs=[b'f%d' % i for i in range(n)])
    m.save(directory)
    return m, x


# ------------------------------------------------------------------ symlinks (11 #2)
def test_planted_current_tmp_symlink_is_not_followed(tmp_path) -> None:
    d = str(tmp_path / 'm')
    m, x = saved_map(d)
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep me')
    os.symlink(victim, os.path.join(d, 'CURRENT.tmp'))
    os.symlink(tmp_path / 'created_outside', os.path.join(d, '.CURRENT.tmp'))
    m.add(x[0], 100 * SEC)
    m.save(d)
    assert victim.read_text() == 'keep me'
    assert not os.path.lexists(tmp_path / 'created_outside')
    assert len(PlaceMap.load(d, FP, D)) == 21


def test_planted_lock_symlink_is_refused(tmp_path) -> None:
    d = tmp_path / 'm'
    d.mkdir()
    os.symlink(tmp_path / 'elsewhere.lock', d / '.lock')
    m = PlaceMap(D, FP)
    m.add(unit(np.random.default_rng(1), 1)[0], 0)
    with pytest.raises(MapError, match=r'\.lock.*(symbolic link|not a regular file)'):
        m.save(str(d))
    with pytest.raises(MapError, match=r'\.lock'):
        PlaceMap.open(str(d), FP, D, load_existing=True)
    assert not os.path.lexists(tmp_path / 'elsewhere.lock')


def test_symlinked_generation_or_file_is_refused(tmp_path) -> None:
    d = str(tmp_path / 'm')
    saved_map(d)
    gen = os.path.join(d, 'gen-000001')
    outside = str(tmp_path / 'outside_gen')
    os.rename(gen, outside)
    os.symlink(outside, gen)
    with pytest.raises(MapError, match='gen-000001.*symbolic link'):
        PlaceMap.load(d, FP, D)
    os.unlink(gen)
    os.rename(outside, gen)
    idx = os.path.join(gen, 'index.faiss')
    os.rename(idx, str(tmp_path / 'outside.faiss'))
    os.symlink(tmp_path / 'outside.faiss', idx)
    with pytest.raises(MapError, match='index.faiss.*symbolic link'):
        PlaceMap.load(d, FP, D)


def test_save_never_writes_into_a_symlinked_generation(tmp_path) -> None:
    d = str(tmp_path / 'm')
    m, x = saved_map(d)
    outside = tmp_path / 'outside_dir'
    outside.mkdir()
    (outside / 'precious').write_text('data')
    os.symlink(outside, os.path.join(d, 'gen-000007'))
    m.add(x[1], 200 * SEC)
    m.save(d)
    assert sorted(os.listdir(outside)) == ['precious']
    assert (outside / 'precious').read_text() == 'data'
    assert len(PlaceMap.load(d, FP, D)) == 21


def test_manifest_file_names_must_be_plain(tmp_path) -> None:
    d = str(tmp_path / 'm')
    saved_map(d)
    man_path = os.path.join(d, 'gen-000001', 'manifest.json')
    with open(man_path) as f:
        man = json.load(f)
    (tmp_path / 'secret').write_bytes(b'x' * 10)
    import hashlib
    man['files']['../../secret'] = {'size': 10, 'sha256': hashlib.sha256(b'x' * 10).hexdigest()}
    with open(man_path, 'w') as f:
        json.dump(man, f)
    with pytest.raises(MapError, match='plain name'):
        PlaceMap.load(d, FP, D)


# ------------------------------------------------------------------- atomic add (11 #5)
class FailingBlob(bytes):
    """A blob whose copy fails, as a write into a full disk or memory would, mid-add."""

    def __bytes__(self):
        raise OSError('simulated blob write failure')


def _state(m: PlaceMap, q: np.ndarray) -> tuple:
    return (len(m), m.next_id, m.ids().tolist(), [r.id for r in m.search(q, 50)])


@pytest.mark.parametrize('index', ['flat', 'hnsw'])
def test_failed_add_changes_nothing(tmp_path, index) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 30)
    m = PlaceMap(D, FP, index=index)
    m.add_batch(x[:10], np.arange(10) * SEC)
    before = _state(m, x[10])
    with pytest.raises(OSError, match='simulated'):
        m.add(x[10], 10 * SEC, blob=FailingBlob(b'abc'))
    assert _state(m, x[10]) == before
    with pytest.raises(OSError, match='simulated'):
        m.add_batch(x[10:20], np.arange(10, 20) * SEC,
                    blobs=[b'ok'] * 5 + [FailingBlob(b'bad')] + [b'ok'] * 4)
    assert _state(m, x[10]) == before
    rec = m.add(x[20], 20 * SEC, blob=b'good')
    m.save(str(tmp_path / 'm'))
    m2 = PlaceMap.load(str(tmp_path / 'm'), FP, D)
    assert len(m2) == 11 and m2.blob(rec.id) == b'good'
    assert m2.search(x[20], 1)[0].id == rec.id


# ------------------------------------------------- ids unique across crashes (11 #6)
ADDER = r'''
import sys, time
import numpy as np
from vpr_ros.map.place_map import PlaceMap
d, n_saved, n_unsaved, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = PlaceMap.open(d, 'a' * 64, 16, load_existing=True)
rng = np.random.default_rng(seed)
def add(n):
    for _ in range(n):
        x = rng.normal(size=16)
        print('ID', m.add(x, time.time_ns()).id, m.session, flush=True)
add(n_saved)
if n_saved:
    m.save(d)
add(n_unsaved)
print('READY', flush=True)
time.sleep(300)
'''


def _run_and_kill(d: str, n_saved: int, n_unsaved: int, seed: int) -> tuple[list[int], int]:
    """Run ADDER, SIGKILL it once it has handed out its ids; return the ids and its session."""
    proc = subprocess.Popen([sys.executable, '-c', ADDER, d, str(n_saved), str(n_unsaved),
                             str(seed)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ids, session = [], -1
    try:
        for line in proc.stdout:
            if line.startswith('ID'):
                ids.append(int(line.split()[1]))
                session = int(line.split()[2])
            elif line.strip() == 'READY':
                break
        assert len(ids) == n_saved + n_unsaved, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return ids, session


def test_ids_never_reused_after_sigkill(tmp_path) -> None:
    d = str(tmp_path / 'm')
    handed_out = []
    # Killed before any save, on a fresh directory; then killed after saving part of its adds.
    for k, (n_saved, n_unsaved) in enumerate([(0, 7), (5, 9), (3, 4)]):
        ids, session = _run_and_kill(d, n_saved, n_unsaved, k)
        assert len(set(ids)) == len(ids) and not set(ids) & set(handed_out)
        handed_out += ids
        m = PlaceMap.open(d, FP, D, load_existing=True)
        assert m.session > session
        assert len(m) == sum(ns for ns, _ in [(0, 7), (5, 9), (3, 4)][:k + 1])
        new = [m.add(v, k * SEC).id for v in unit(np.random.default_rng(k), 5)]
        assert not set(new) & set(handed_out), (new, handed_out)
        assert min(new) > max(handed_out)
        handed_out += new
        m.close()  # unsaved: these ids are handed out too and never come back


def test_maps_of_one_process_share_ids_and_sessions(tmp_path) -> None:
    d = str(tmp_path / 'm')
    saved_map(d)
    a, b = PlaceMap.load(d, FP, D), PlaceMap.load(d, FP, D)
    assert a.session != b.session
    x = unit(np.random.default_rng(4), 6)
    ids = [m.add(v, 0).id for v, m in zip(x, [a, b, a, b, b, a])]
    assert len(set(ids)) == 6 and min(ids) >= 20
