"""vpr-train on the small synthetic garden: it learns, it resumes after SIGKILL, DDP on gloo."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from synthetic import make_synthetic_garden
import torch

from vpr_ros.training.fit.train import main

pytestmark = pytest.mark.slow
SMALL = ['--image-size', '64', '64', '--workers', '0', '--no-progress']


@pytest.fixture(scope='module')
def garden(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('garden'))
    make_synthetic_garden(root)
    return root


def _data(root: str, val: bool = True) -> list[str]:
    a = ['--data-root', root, '--train-map', 'train_map', '--train-query', 'train_query']
    return a + (['--val-map', 'val_map', '--val-query', 'val_query'] if val else [])


def _log(out: str) -> list[dict]:
    with open(os.path.join(out, 'train_log.csv')) as f:
        return list(csv.DictReader(f))


def test_training_lowers_loss_and_raises_recall(garden, tmp_path):
    out = str(tmp_path / 'run')
    assert main(_data(garden) + SMALL + ['--epochs', '4', '--batch-size', '32',
                                         '--pairs-per-epoch', '192', '--out', out]) == 0
    rows = _log(out)
    assert [int(r['epoch']) for r in rows] == [0, 1, 2, 3, 4]
    losses = [float(r['loss']) for r in rows[1:]]
    r1 = [float(r['r1']) for r in rows]
    print('loss', losses, 'R@1', r1)
    assert losses[-1] < 0.7 * losses[0]
    assert max(r1[1:]) > r1[0] + 0.1  # untrained ImageNet model vs trained
    best = torch.load(os.path.join(out, 'best.pt'), weights_only=True)
    # issue 14: best by validation R@1 (the default --select-metric); a tie keeps the earlier
    trained = [float(r['r1']) for r in rows[1:]]
    assert best['metrics']['r1'] == max(trained)
    assert best['epoch'] == 1 + trained.index(max(trained))
    assert {'r10', 'map5'} <= set(rows[0])  # every selectable metric is in the log


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'vpr_ros.training.fit.train', *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_and_resume(garden, tmp_path):
    out = str(tmp_path / 'run')
    # Images, not cached features: with the cache an epoch is too quick to be killed inside.
    args = _data(garden, val=False) + SMALL + ['--epochs', '4', '--batch-size', '16',
                                               '--pairs-per-epoch', '96', '--out', out,
                                               '--feature-cache', 'off']
    ckpt = os.path.join(out, 'checkpoint.pt')
    proc = _start(args)
    deadline = time.monotonic() + 90
    while not os.path.exists(ckpt) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'training ended before it could be killed'
    done = int(torch.load(ckpt, weights_only=True)['epoch'])
    assert 1 <= done < 4
    res = subprocess.run([sys.executable, '-m', 'vpr_ros.training.fit.train', *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f'at epoch {done}' in res.stdout
    epochs_run = [int(line.split()[1].split('/')[0]) for line in res.stdout.splitlines()
                  if line.startswith('epoch ')]
    assert epochs_run == list(range(done + 1, 5))  # continued, never restarted from 0
    assert [int(r['epoch']) for r in _log(out)] == [1, 2, 3, 4]
    assert int(torch.load(ckpt, weights_only=True)['epoch']) == 4


def test_ddp_two_ranks_gloo(garden, tmp_path):
    out = str(tmp_path / 'ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           '-m', 'vpr_ros.training.fit.train', *_data(garden, val=False), *SMALL, '--epochs', '1',
           '--batch-size', '16', '--pairs-per-epoch', '48', '--dump-pairs', '--out', out]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert '2 rank(s)' in res.stdout
    ckpt = torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)
    assert ckpt['epoch'] == 1
    p0 = np.load(os.path.join(out, 'pairs', 'epoch1_rank0.npy'))
    p1 = np.load(os.path.join(out, 'pairs', 'epoch1_rank1.npy'))
    assert p0.shape == p1.shape == (2, 24)
    assert not np.array_equal(p0, p1)
    # together the ranks cover the single-process epoch, each pair exactly once
    from vpr_ros.training.data.labels import load_labels
    from vpr_ros.training.data.pairs import PairSampler
    s = PairSampler(load_labels(os.path.join(out, 'train_labels.npz')), pairs_per_epoch=48)
    full = s.epoch_pairs(0)
    np.testing.assert_array_equal(p0, np.stack([full.anchor[0::2], full.partner[0::2]]))
    np.testing.assert_array_equal(p1, np.stack([full.anchor[1::2], full.partner[1::2]]))


def test_feature_cache_trains_the_same_net(garden, tmp_path, capsys):
    """Cached frozen-prefix features give the training the images would give, step for step."""
    base = _data(garden) + SMALL + ['--epochs', '2', '--batch-size', '16',
                                    '--pairs-per-epoch', '64', '--no-initial-eval']
    runs = {}
    for mode in ('on', 'off'):
        out = str(tmp_path / mode)
        assert main(base + ['--feature-cache', mode, '--out', out]) == 0
        runs[mode] = (_log(out), torch.load(os.path.join(out, 'checkpoint.pt'),
                                            weights_only=True)['model'])
    said = capsys.readouterr().out
    assert 'frozen features cached after trunk block 17' in said and 'no feature cache' in said
    (log_on, w_on), (log_off, w_off) = runs['on'], runs['off']
    for a, b in zip(log_on, log_off):
        assert float(a['loss']) == pytest.approx(float(b['loss']), rel=1e-3)
        assert float(a['r5']) == pytest.approx(float(b['r5']), abs=0.02)
    for k in w_off:
        torch.testing.assert_close(w_on[k], w_off[k], rtol=1e-3, atol=1e-4, msg=k)
    # auto: on within the budget, off above it
    out = str(tmp_path / 'auto')
    assert main(base + ['--epochs', '1', '--cache-budget-gb', '0', '--out', out]) == 0
    assert 'feature cache off' in capsys.readouterr().out


def test_default_image_size_is_the_default_model_s() -> None:
    """Issue 9: training ran 480x640 by default while the default model (and node) run 224x224."""
    from vpr_ros.model.encoder import ModelSpec
    from vpr_ros.training.fit.train_args import build_parser

    args = build_parser().parse_args(['--train-query', 'q', '--out', 'o'])
    assert tuple(args.image_size) == tuple(ModelSpec().image_size) == (224, 224)


# ----------------------------------------------------------------------- best-epoch selection
# A CL run's validation history (issue 14): R@5 saturates, R@1 peaks early; the R@5-first rule
# kept epoch 5 (R@1 0.825) over epoch 2 (R@1 0.864).
HISTORY = [
    {'epoch': 0, 'r1': 0.70, 'r5': 0.90, 'r10': 0.95, 'map5': 0.50},
    {'epoch': 1, 'r1': 0.80, 'r5': 0.95, 'r10': 0.97, 'map5': 0.60},
    {'epoch': 2, 'r1': 0.864, 'r5': 0.97, 'r10': 0.98, 'map5': 0.70},
    {'epoch': 3, 'r1': 0.864, 'r5': 0.98, 'r10': 0.99, 'map5': 0.72},
    {'epoch': 4, 'r1': 0.85, 'r5': 0.98, 'r10': 1.00, 'map5': 0.72},
    {'epoch': 5, 'r1': 0.825, 'r5': 0.99, 'r10': 1.00, 'map5': 0.69},
]


def _select(metric: str, history=HISTORY) -> dict:
    from vpr_ros.training.fit.best_epoch import update_best
    best = {'value': None, 'epoch': None}
    for row in history[1:]:  # as vpr-train: the untrained epoch-0 row is never saved as best
        best, _ = update_best(best, row, metric)
    return best


@pytest.mark.parametrize('metric,epoch', [('r1', 2), ('r5', 5), ('r10', 4), ('map', 3)])
def test_best_epoch_by_chosen_metric_ties_to_earlier(metric, epoch) -> None:
    """R@1 keeps epoch 2 (its tie at epoch 3 too); each metric its own first maximum."""
    best = _select(metric)
    assert best['epoch'] == epoch and best['metric'] == metric
    assert best['r1'] == HISTORY[epoch]['r1']


def test_best_epoch_default_is_r1_and_no_validation_keeps_last() -> None:
    from vpr_ros.training.fit.best_epoch import best_from_history, update_best
    from vpr_ros.training.fit.train_args import build_parser

    args = build_parser().parse_args(['--train-query', 'q', '--out', 'o'])
    assert args.select_metric == 'r1'
    assert _select(args.select_metric)['r1'] == 0.864
    best = {'value': None, 'epoch': None}
    for e in (1, 2, 3):  # no validation set: every epoch replaces the last, as before
        best, improved = update_best(best, {'epoch': e, 'r1': None}, 'r1')
        assert improved and best['epoch'] == e
    # a NaN epoch (no query with a positive) never displaces a measured one
    b, improved = update_best(_select('r1'), {'epoch': 6, 'r1': float('nan')}, 'r1')
    assert not improved and b['epoch'] == 2
    # resuming with another --select-metric: the best is recomputed from the history
    assert best_from_history(HISTORY, 'map')['epoch'] == 3
    assert best_from_history(HISTORY, 'r1')['epoch'] == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--train-query', 'q', '--out', 'o', '--select-metric', 'ap'])
