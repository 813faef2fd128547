"""
Issue 20 #4: weights and model files are never read without bound.

The ImageNet weights in the torch hub cache replaced by a link to /dev/zero used to fill memory,
a FIFO there hung start-up without a log line, and `load_model` / `file_fingerprint` on such a
path did the same. Each case runs in a child process (data segment capped at 2 GiB, so the old
unbounded read fails there instead of taking the machine's memory) with a generous timeout: the
old code's hang ends the test as a failure instead of hanging it. The child must refuse with a
ModelFileError naming the path and saying what the file is.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from vpr_ros.model import backbones

WEIGHTS = backbones.get('mobilenet_v2').weights_file

CHILD = textwrap.dedent('''
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))
    from vpr_ros.core.errors import ModelFileError
    from vpr_ros.model import weights
    from vpr_ros.model.encoder import build_encoder
    from vpr_ros.model.model_file import file_fingerprint
    hub, model = sys.argv[1], sys.argv[2]
    for case, call in (('encoder', lambda: build_encoder('')),
                       ('verify', lambda: weights.verify(hub)),
                       ('load_model', lambda: build_encoder(model)),
                       ('fingerprint', lambda: file_fingerprint(model))):
        try:
            call()
            res = {'result': 'loaded'}
        except ModelFileError as err:
            res = {'result': 'refused', 'message': str(err)}
        except MemoryError:
            res = {'result': 'MemoryError'}
        print(json.dumps({'case': case, **res}), flush=True)
''')


def _make(kind: str, path: str) -> None:
    if kind == 'dev_zero':
        os.symlink('/dev/zero', path)
    elif kind == 'fifo':
        os.mkfifo(path)
    else:   # a sparse file of 20 GB: no disk used, but far over any weights or model file
        with open(path, 'wb') as f:
            f.truncate(20 << 30)


@pytest.mark.parametrize('kind,words', [('dev_zero', 'a character device'),
                                        ('fifo', 'a FIFO'),
                                        ('sparse', 'has 21474836480 bytes, more than')])
def test_refused_before_reading(tmp_path, kind, words) -> None:
    """The hub cache's weights (built-in encoder, weights.verify) and a model file's path."""
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    hub = str(tmp_path / 'torch' / 'hub' / 'checkpoints' / WEIGHTS)
    os.makedirs(os.path.dirname(hub))
    model = str(tmp_path / 'model.pt')
    _make(kind, hub)
    _make(kind, model)
    try:
        out = subprocess.run([sys.executable, '-c', CHILD, hub, model], env=env,
                             capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f'reading a {kind} hung (no answer in 300 s) after: {exc.stdout}')
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [r['case'] for r in results] == ['encoder', 'verify', 'load_model', 'fingerprint']
    for r in results:
        path = hub if r['case'] in ('encoder', 'verify') else model
        assert r['result'] == 'refused', r
        assert path in r['message'] and words in r['message'], r
