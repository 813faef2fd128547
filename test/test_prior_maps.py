"""
Issue 20: prior maps (`prior_map_dirs`): other robots' maps opened read-only and searched.

Robot 2's map is held by robot 2's process (the directory lock), which saves new generations
while robot 1 reads it: robot 1 must open it, search it and read its features, and change
nothing in it (every byte and file name under the directory compared before and after).
"""
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vpr_ros.core.errors import MapError, MapMismatchError
from vpr_ros.map.place_map import PlaceMap
from vpr_ros.map.prior_maps import PriorMaps

FP = 'p' * 64
D = 16
S = 10**9


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _tree(directory: str) -> dict:
    """Every file's name, mode and bytes under `directory` (the lock file included)."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in files + dirs:
            path = os.path.join(root, name)
            st = os.lstat(path)
            data = b''
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as f:
                    data = f.read()
            out[os.path.relpath(path, directory)] = (st.st_mode, st.st_mtime_ns,
                                                     hashlib.sha256(data).hexdigest())
    return out


ROBOT2 = textwrap.dedent('''
    import sys
    import numpy as np
    from vpr_ros.map.place_map import PlaceMap
    d = sys.argv[1]
    x = np.random.default_rng(2).normal(size=(40, 16)).astype(np.float32)
    m = PlaceMap.open(d, 'p' * 64, 16, create=True)   # held: the lock, as a node holds it
    m.add_batch(x[:20], np.arange(20) * 10**9, poses=np.tile([1, 2, 0, 0, 0, 0, 1.0], (20, 1)),
                blobs=[b'r2:%d' % i for i in range(20)])
    m.save(d)
    print('SAVED', flush=True)
    sys.stdin.readline()                              # robot 1 reads the map now
    m.add_batch(x[20:], (20 + np.arange(20)) * 10**9)
    m.save(d)                                         # a new generation; the old one removed
    print('SAVED AGAIN', flush=True)
    sys.stdin.readline()
''')


def test_a_map_another_process_holds_and_saves_is_read_and_left_unchanged(tmp_path) -> None:
    d = str(tmp_path / 'robot2')
    child = subprocess.Popen([sys.executable, '-c', ROBOT2, d], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == 'SAVED'
        before = _tree(d)
        prior = PriorMaps([d], FP, D)
        x = np.random.default_rng(2).normal(size=(40, D)).astype(np.float32)
        got = prior.search(x[7], 3)
        best = got[0]
        assert (best.map_name, best.map_dir, best.id, best.session) == ('robot2', d, 7, 0)
        assert best.source == 'robot2' and best.stamp_ns == 7 * S
        assert best.score == pytest.approx(1.0, abs=1e-5) and best.pose[:2].tolist() == [1, 2]
        assert [g.score for g in got] == sorted((g.score for g in got), reverse=True)
        assert prior.blob(best) == b'r2:7' and len(prior) == 20
        assert _tree(d) == before   # no lock taken, nothing written, not even an mtime
        child.stdin.write('\n')
        child.stdin.flush()
        assert child.stdout.readline().strip() == 'SAVED AGAIN'
        # The snapshot keeps reading the generation robot 2 has since removed.
        assert prior.blob(prior.search(x[11], 1)[0]) == b'r2:11' and len(prior) == 20
        assert len(PriorMaps([d], FP, D)) == 40   # a new snapshot sees the new generation
        prior.close()
    finally:
        child.stdin.write('\n')
        child.stdin.close()
        child.wait(timeout=60)
    assert child.returncode == 0


def test_several_maps_merged_sessions_and_names(tmp_path) -> None:
    dirs = []
    for k, name in enumerate(('robot1', 'robot2')):
        d = str(tmp_path / 'fleet' / name)
        m = PlaceMap.open(d, FP, D, create=True)
        m.add_batch(_unit(10, k), np.arange(10) * S, blobs=[b'%d' % k] * 10)
        m.save(d)
        m.close()
        dirs.append(d)
    prior = PriorMaps(dirs, FP, D, names=['alpha', 'beta'])
    q = _unit(10, 1)[4]
    assert [(p.map_name, p.id) for p in prior.search(q, 1)] == [('beta', 4)]
    assert {p.map_name for p in prior.search(q, 20)} == {'alpha', 'beta'}
    assert len(prior.search(q, 20)) == 20 and prior.blob(prior.search(q, 1)[0]) == b'1'
    with pytest.raises(MapError, match='repeat'):
        PriorMaps([dirs[0], dirs[0]], FP, D)


@pytest.mark.parametrize('case', ['missing', 'empty', 'garbage', 'other_model', 'other_dim'])
def test_bad_prior_maps_are_refused_naming_the_directory(tmp_path, case) -> None:
    d = str(tmp_path / 'prior')
    if case in ('other_model', 'other_dim'):
        m = PlaceMap.open(d, FP if case == 'other_dim' else 'q' * 64, D, create=True)
        m.add(_unit(1, 0)[0], 0)
        m.save(d)
        m.close()
    elif case == 'empty':
        os.makedirs(d)
    elif case == 'garbage':
        os.makedirs(os.path.join(d, 'gen-000001'))
        with open(os.path.join(d, 'CURRENT'), 'w') as f:
            f.write('gen-000001\n')
        with open(os.path.join(d, 'gen-000001', 'manifest.json'), 'w') as f:
            f.write('{"format_version": 1, "dim": "lots"')
    before = _tree(d) if os.path.exists(d) else None
    err = MapMismatchError if case.startswith('other') else MapError
    dim = D + 1 if case == 'other_dim' else D
    with pytest.raises(err, match=f'prior map {d}') as info:
        PriorMaps([d], FP, dim)
    words = {'missing': 'no map in', 'empty': 'no map in', 'garbage': 'manifest',
             'other_model': 'model fingerprint', 'other_dim': 'dimension'}[case]
    assert words in str(info.value)
    assert (_tree(d) if os.path.exists(d) else None) == before
