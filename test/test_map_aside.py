"""
Issue 20 #1: a map outlives a restart; starting afresh moves the old map aside, never deletes it.

`PlaceMap.open(dir, ...)` continues the map (a new session) by default; `load_existing=False,
aside=True` (what the node does with `load_map: false`) moves the committed map to
`dir/aside/<UTC>_s<last session>/`, crash-safely: a SIGKILL at any step of the move leaves
either the old map current or the new (empty) one current with the old one complete aside.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from vpr_ros.core.errors import MapError
from vpr_ros.map.aside import ASIDE_DIR
from vpr_ros.map.place_map import map_exists, PlaceMap

FP = 'a' * 64
D = 8
SEC = 10**9


def _vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def _two_sessions(d: str) -> None:
    """Save a map of two sessions (10 + 5 keyframes, with blobs) in `d`."""
    m = PlaceMap.open(d, FP, D, create=True)
    m.add_batch(_vecs(10, 0), np.arange(10) * SEC, blobs=[b'f%d' % i for i in range(10)])
    m.save(d)
    m.close()
    m = PlaceMap.open(d, FP, D)   # the default: continue
    m.add_batch(_vecs(5, 1), (100 + np.arange(5)) * SEC)
    m.save(d)
    m.close()


def _content(m: PlaceMap) -> tuple:
    return (m.ids().tolist(), [r.session for r in m.records()], m.blob(3))


def test_open_continues_by_default(tmp_path) -> None:
    d = str(tmp_path / 'map')
    _two_sessions(d)
    m = PlaceMap.open(d, FP, D)
    assert len(m) == 15 and m.session == 2
    assert sorted({r.session for r in m.records()}) == [0, 1]
    assert m.search(_vecs(10, 0)[4], 1)[0].id == 4   # yesterday's places are matched
    m.close()


def test_fresh_start_moves_the_old_map_aside_and_keeps_ids_unique(tmp_path) -> None:
    d = str(tmp_path / 'map')
    _two_sessions(d)
    old = PlaceMap.read_only(d, FP, D)
    before = _content(old)
    m = PlaceMap.open(d, FP, D, load_existing=False, aside=True)
    assert len(m) == 0 and not map_exists(d)
    assert os.path.dirname(m.moved_aside) == os.path.join(d, ASIDE_DIR)
    assert os.path.basename(m.moved_aside).endswith('Z_s1')
    kept = PlaceMap.read_only(m.moved_aside, FP, D)
    assert _content(kept) == before and kept.blob(3) == b'f3'
    rec = m.add(_vecs(1, 2)[0], 500 * SEC)
    assert rec.id >= 15 and rec.session >= 2   # never an id or session of the old map
    m.save(d)
    m.close()
    assert sorted(os.listdir(d)) == ['.lock', 'CURRENT', 'IDS', ASIDE_DIR, 'gen-000001']
    assert len(PlaceMap.read_only(d, FP, D)) == 1
    assert _content(PlaceMap.read_only(m.moved_aside, FP, D)) == before
    # A second fresh start keeps the first aside map and adds another.
    m = PlaceMap.open(d, FP, D, load_existing=False, aside=True)
    m.close()
    assert len(os.listdir(os.path.join(d, ASIDE_DIR))) == 2


def test_fresh_start_over_another_models_map_keeps_it(tmp_path) -> None:
    d = str(tmp_path / 'map')
    _two_sessions(d)
    m = PlaceMap.open(d, 'b' * 64, 16, load_existing=False, aside=True)
    assert len(m) == 0 and len(PlaceMap.read_only(m.moved_aside, FP, D)) == 15
    m.close()
    # Nothing to move: no aside folder made.
    e = str(tmp_path / 'empty')
    m = PlaceMap.open(e, FP, D, load_existing=False, aside=True, create=True)
    assert m.moved_aside is None and not os.path.exists(os.path.join(e, ASIDE_DIR))
    m.close()


def test_planted_aside_link_is_refused_and_nothing_moves(tmp_path) -> None:
    d = str(tmp_path / 'map')
    _two_sessions(d)
    outside = tmp_path / 'outside'
    outside.mkdir()
    os.symlink(outside, os.path.join(d, ASIDE_DIR))
    with pytest.raises(MapError, match='symbolic link'):
        PlaceMap.open(d, FP, D, load_existing=False, aside=True)
    assert os.listdir(outside) == [] and map_exists(d)
    assert len(PlaceMap.read_only(d, FP, D)) == 15


CHILD = r'''
import os, shutil, signal, sys
from vpr_ros.map.place_map import PlaceMap
kill_at = int(sys.argv[2])
calls = [0]
def wrap(fn):
    def inner(*a, **kw):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **kw)
    return inner
for name in ('link', 'rename', 'unlink', 'mkdir', 'write', 'fsync'):
    setattr(os, name, wrap(getattr(os, name)))
shutil.rmtree = wrap(shutil.rmtree)
m = PlaceMap.open(sys.argv[1], 'a' * 64, 8, load_existing=False, aside=True)
print('DONE', m.moved_aside)
'''


def test_sigkill_at_every_step_of_the_move_never_loses_the_map(tmp_path) -> None:
    """Old map current, or new map current and the old one complete aside: never neither."""
    src = str(tmp_path / 'src')
    _two_sessions(src)
    expect = _content(PlaceMap.read_only(src, FP, D))
    env = dict(os.environ)
    outcomes = set()
    for kill_at in range(1, 200):
        d = str(tmp_path / f'm{kill_at}')
        subprocess.run(['cp', '-a', src, d], check=True)
        res = subprocess.run([sys.executable, '-c', CHILD, d, str(kill_at)], env=env,
                             capture_output=True, text=True, timeout=120)
        asides = [a for a in os.listdir(os.path.join(d, ASIDE_DIR)) if not a.startswith('.')] \
            if os.path.isdir(os.path.join(d, ASIDE_DIR)) else []
        complete = [a for a in asides
                    if _content(PlaceMap.read_only(os.path.join(d, ASIDE_DIR, a), FP, D))
                    == expect]
        assert complete == asides   # an aside map is never half a map
        if map_exists(d):
            assert _content(PlaceMap.read_only(d, FP, D)) == expect, kill_at
            outcomes.add('old current' + (' + copy aside' if asides else ''))
        else:
            assert len(complete) == 1, (kill_at, res.stdout, res.stderr)
            outcomes.add('new current, old aside')
        # The next start (continue or afresh) works from whatever the kill left.
        m = PlaceMap.open(d, FP, D, load_existing=False, aside=True)
        m.close()
        assert not [a for a in os.listdir(os.path.join(d, ASIDE_DIR)) if a.startswith('.')]
        if 'DONE' in res.stdout:
            assert res.returncode == 0
            break
    else:
        pytest.fail('the move never completed')
    assert outcomes == {'old current', 'old current + copy aside', 'new current, old aside'}
