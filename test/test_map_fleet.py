"""
Issue 20: `vpr-map` (info, merge, export, prune) on real maps made with PlaceMap.

Each subcommand runs as the real command line in its own process (`python -m
vpr_ros.tools.map_cli`, what the `vpr-map` console script runs). Merged and pruned maps are
then loaded and continued by PlaceMap, as a node would. One merge uses the real encoder's
dimension and real ORB feature blobs, and verifies a robot-2 frame against robot 1's keyframe
from the merged map.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from vpr_ros.core.verification import features_from_bytes, GeometricVerifier
from vpr_ros.map.place_map import PlaceMap

FP = 'f' * 64
D = 16
S = 10**9
T0 = 1_700_000_000 * S


def vpr_map(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'vpr_ros.tools.map_cli', *args],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


def _unit(n: int, seed: int, dim: int = D) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _robot(d: str, seed: int, sessions=(6, 4), t0: int = T0,
           fp: str = FP) -> tuple[np.ndarray, list]:
    """Save a map of len(sessions) sessions, blobs b'<seed>:<k>' (k: row); descriptors, ids."""
    x = _unit(sum(sessions), seed)
    k, ids = 0, []
    for n in sessions:
        m = PlaceMap.open(d, fp, D, create=True)
        ids += m.add_batch(x[k:k + n], t0 + (k + np.arange(n)) * S,
                           poses=np.tile([k, 0, 0, 0, 0, 0, 1.0], (n, 1)),
                           blobs=[f'{seed}:{k + i}'.encode() for i in range(n)]).tolist()
        k += n
        m.save(d)
        m.close()
    return x, ids


def test_info_names_sessions_model_index_and_sizes(tmp_path) -> None:
    d = str(tmp_path / 'robot1')
    _robot(d, 1)
    res = vpr_map('info', d, '--json')
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info['fingerprint'] == FP and info['dim'] == D and info['index']['type'] == 'flat'
    assert info['keyframes'] == 10 and info['keyframes_with_blobs'] == 10
    assert [(s['session'], s['keyframes']) for s in info['sessions']] == [(0, 6), (1, 4)]
    assert info['sessions'][0]['first_stamp_s'] == T0 / S
    assert info['sessions'][1]['last_stamp_s'] == T0 / S + 9
    assert set(info['files']) == {'index.faiss', 'keyframes.sqlite'}
    assert 0 < info['generation_bytes'] <= info['directory_bytes']
    text = vpr_map('info', d)
    assert text.returncode == 0 and 'session    1:       4 keyframes' in text.stdout, text.stdout


def test_merge_two_robots_keeps_ids_unique_sessions_apart_and_blobs(tmp_path) -> None:
    a, b, c = (str(tmp_path / n) for n in ('robot1', 'robot2', 'merged'))
    xa, ida = _robot(a, 1)
    xb, idb = _robot(b, 2, sessions=(3, 5), t0=T0 + 1000 * S)
    collide = sorted(set(ida) & set(idb))   # each map starts at id 0: they collide
    res = vpr_map('merge', a, b, '--out', c)
    assert res.returncode == 0, res.stderr
    assert f'{len(collide)} ids of robot2 collided' in res.stdout and len(collide) >= 3
    with open(os.path.join(c, 'merge_record.json')) as f:
        record = json.load(f)
    remap = dict(record['remapped_ids']['robot2'])
    start = max(PlaceMap.read_only(a, FP, D).next_id, PlaceMap.read_only(b, FP, D).next_id)
    assert sorted(remap) == collide
    assert sorted(remap.values()) == list(range(start, start + len(collide)))
    remap.update({i: i for i in idb if i not in remap})
    m = PlaceMap.load(c, FP, D)   # a normal map: the node loads it and continues it
    assert len(m) == 18 and m.session == 4 and len(set(m.ids().tolist())) == 18
    assert m.session_sources() == {0: {'source': 'robot1', 'session': 0},
                                   1: {'source': 'robot1', 'session': 1},
                                   2: {'source': 'robot2', 'session': 0},
                                   3: {'source': 'robot2', 'session': 1}}
    for row, old in enumerate(idb):   # robot 2's keyframes under their new ids
        new = remap[old]
        r = m.record(new)
        assert m.blob(new) == f'2:{row}'.encode() and r.stamp_ns == T0 + (1000 + row) * S
        assert r.session == (2 if row < 3 else 3)
        assert m.search(xb[row], 1)[0].id == new
    assert m.blob(ida[8]) == b'1:8' and m.search(xa[8], 1)[0].id == ida[8]
    rec = m.add(_unit(1, 9)[0], T0 + 5000 * S)
    assert rec.id > max(remap.values()) and rec.session == 4
    m.save(c)
    m.close()
    # Merging the merged map again carries the sessions' origins over.
    d = str(tmp_path / 'robot3')
    _robot(d, 3, sessions=(2,))
    res = vpr_map('merge', c, d, '--out', str(tmp_path / 'all'), '--names', 'fleet', 'robot3')
    assert res.returncode == 0, res.stderr
    m = PlaceMap.read_only(str(tmp_path / 'all'), FP, D)
    src = m.session_sources()
    assert src[3] == {'source': 'robot2', 'session': 1} and src[4]['source'] == 'fleet'
    assert src[5] == {'source': 'robot3', 'session': 0} and len(m) == 21


@pytest.mark.parametrize('case', ['other_model', 'out_holds_a_map', 'out_is_a', 'missing',
                                  'garbage'])
def test_merge_refuses_bad_input_with_exit_2(tmp_path, case) -> None:
    a, b, c = (str(tmp_path / n) for n in ('a', 'b', 'c'))
    _robot(a, 1)
    _robot(b, 2, fp='0' * 64)
    other = {'other_model': b, 'missing': str(tmp_path / 'none')}.get(case, a)
    if case == 'garbage':
        os.makedirs(other := str(tmp_path / 'junk'))
        with open(os.path.join(other, 'CURRENT'), 'w') as f:
            f.write('../../etc\n')
    if case == 'out_holds_a_map':
        _robot(c, 3)
    out = a if case == 'out_is_a' else c
    before = sorted(os.listdir(tmp_path))
    res = vpr_map('merge', a, other, '--out', out)
    assert res.returncode == 2, (res.stdout, res.stderr)
    words = {'other_model': 'different models', 'out_holds_a_map': 'already holds a map',
             'out_is_a': 'one of the maps merged', 'missing': 'no map in',
             'garbage': 'is corrupt'}[case]
    assert words in res.stderr and 'Traceback' not in res.stderr, res.stderr
    assert sorted(os.listdir(tmp_path)) == before   # nothing written anywhere


def test_export_writes_the_columns(tmp_path) -> None:
    d = str(tmp_path / 'robot1')
    x, ids = _robot(d, 1)
    out = str(tmp_path / 'out' / 'map.npz')
    os.makedirs(os.path.dirname(out))
    res = vpr_map('export', d, '--out', out)
    assert res.returncode == 0, res.stderr
    with np.load(out, allow_pickle=False) as z:
        assert z['ids'].tolist() == ids and z['sessions'].tolist() == [0] * 6 + [1] * 4
        np.testing.assert_allclose(z['descriptors'], x, atol=1e-6)
        assert z['stamps_ns'][3] == T0 + 3 * S and z['poses'].shape == (10, 7)
        assert str(z['fingerprint']) == FP and int(z['dim']) == D
    assert os.listdir(os.path.dirname(out)) == ['map.npz']
    assert vpr_map('export', d, '--out', str(tmp_path)).returncode == 2   # a directory


def test_prune_a_session_and_old_keyframes(tmp_path) -> None:
    d = str(tmp_path / 'robot1')
    _, ids = _robot(d, 1)
    dry = vpr_map('prune', d, '--session', '0', '--dry-run')
    assert dry.returncode == 0 and 'would remove 6' in dry.stdout
    assert len(PlaceMap.read_only(d, FP, D)) == 10
    res = vpr_map('prune', d, '--session', '0')
    assert res.returncode == 0 and 'removed 6' in res.stdout, res.stderr
    m = PlaceMap.open(d, FP, D)   # continued after the prune: ids and sessions never reused
    assert m.ids().tolist() == ids[6:] and m.blob(ids[7]) == b'1:7' and m.session == 2
    assert m.add(_unit(1, 5)[0], time.time_ns()).id > ids[-1]   # stamped now
    m.save(d)
    m.close()
    # Keyframes stamped in 2023 are more than 30 days old: all but the new one go.
    res = vpr_map('prune', d, '--older-than', '30')
    assert res.returncode == 0, res.stderr
    assert len(PlaceMap.read_only(d, FP, D)) == 1
    assert vpr_map('prune', d).returncode == 2   # nothing said to remove


def test_prune_refuses_a_map_a_node_holds(tmp_path) -> None:
    d = str(tmp_path / 'robot1')
    _robot(d, 1)
    held = PlaceMap.open(d, FP, D)   # this process holds it, as a running node would
    try:
        child = subprocess.Popen(
            [sys.executable, '-m', 'vpr_ros.tools.map_cli', 'prune', d, '--session', '0'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        _, err = child.communicate(timeout=300)
        assert child.returncode == 2 and 'in use by process' in err, err
    finally:
        held.close()
    assert len(PlaceMap.read_only(d, FP, D)) == 10


def test_merge_at_the_encoders_dimension_keeps_verification_working(tmp_path, encoder,
                                                                    seq) -> None:
    """Robot 1 drove the first pass, robot 2 the revisit; robot 2's frame verifies in C."""
    ver = GeometricVerifier()
    first = sorted({j for js in seq.revisits.values() for j in js})
    revisit = sorted(seq.revisits)
    maps = {}
    for name, frames in (('robot1', first), ('robot2', revisit)):
        d = str(tmp_path / name)
        m = PlaceMap.open(d, encoder.fingerprint, encoder.dim, create=True)
        descs = encoder.embed([seq.frames[i] for i in frames], 'rgb8')
        m.add_batch(descs, [seq.stamps_ns[i] for i in frames],
                    poses=np.array([seq.poses[i] for i in frames]),
                    blobs=[ver.extract(seq.frames[i]).to_bytes() for i in frames])
        m.save(d)
        m.close()
        maps[name] = (d, frames, descs)
    c = str(tmp_path / 'merged')
    res = vpr_map('merge', maps['robot1'][0], maps['robot2'][0], '--out', c)
    assert res.returncode == 0, res.stderr
    m = PlaceMap.load(c, encoder.fingerprint, encoder.dim)
    assert encoder.dim == 1280 and len(m) == len(first) + len(revisit)
    verified = 0
    for k, i in enumerate(revisit):
        q = maps['robot2'][2][k]
        best = next(r for r in m.search(q, 5) if r.record.session == 0)   # robot 1's
        res = ver.verify(ver.extract(seq.frames[i]), features_from_bytes(m.blob(best.id)))
        verified += bool(res.ok and first[best.id] in seq.revisits[i])
    assert verified >= len(revisit) // 2, (verified, len(revisit))
    m.close()
