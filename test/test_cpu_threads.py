"""
numpy's OpenBLAS limited as the node does it (vpr_ros/core/cpu_threads.py), in a fresh process.

Each case runs in its own interpreter: the limit is process-wide and the test process's own
BLAS must stay as pytest found it.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = '''
import json, numpy
from vpr_ros.core.cpu_threads import blas_threads, limit_blas_threads
before = blas_threads()
done = limit_blas_threads(1)
after = blas_threads()
a = numpy.ones((64, 64), numpy.float32)
print(json.dumps({'before': before, 'done': done, 'after': after,
                  'product': float((a @ a)[0, 0])}))
'''


def _run(env_extra: dict) -> dict:
    env = dict(os.environ)
    env.pop('OPENBLAS_NUM_THREADS', None)
    env.update(env_extra)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    out = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_limit_sets_numpy_openblas_to_one_thread():
    got = _run({})
    if not got['before']:
        pytest.skip('numpy is not linked against an OpenBLAS with a thread setter here')
    assert got['done'] >= 1
    assert set(got['after'].values()) == {1}
    assert any('openblas' in p.lower() for p in got['after'])
    assert got['product'] == 64.0  # products still right


def test_user_setting_wins():
    got = _run({'OPENBLAS_NUM_THREADS': '2'})
    if not got['before']:
        pytest.skip('numpy is not linked against an OpenBLAS with a thread setter here')
    assert got['done'] == 0
    assert got['after'] == got['before'] and set(got['after'].values()) == {2}
