"""
Training checkpoints: written atomically, read in one place with one set of checks.

`vpr-train` writes `checkpoint.pt` (everything a resumed run needs) every epoch and `best.pt`
(weights, spec and provenance, what `vpr-export` reads) when validation improves. Both go
through `vpr_ros.core.atomic_io.write_atomic`, so a kill never leaves half a file, and both are
read by `load_checkpoint` with `weights_only=True`, so a planted pickle is refused, never run.
"""
import contextlib
import csv
import io
import json
import os
import random
from typing import Sequence

import numpy as np
import torch

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import VPRError

CHECKPOINT = 'checkpoint.pt'
BEST = 'best.pt'
CKPT_VERSION = 1
#: 'format' of a resumable checkpoint and of a best-model file.
FORMAT_CHECKPOINT = 'vpr_ros.train'
FORMAT_BEST = 'vpr_ros.train.best'
_NEEDS = {FORMAT_CHECKPOINT: ('model', 'spec', 'optimizer', 'scheduler', 'scaler', 'sampler',
                              'rng', 'epoch', 'history', 'best'),
          FORMAT_BEST: ('model', 'spec')}


def atomic_save(obj, path: str) -> None:
    """torch.save into memory, then write_atomic: a kill never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def resolve_checkpoint(path: str) -> str:
    """Resolve a run directory to its best.pt (or, failing that, its last checkpoint)."""
    if os.path.isdir(path):
        for name in (BEST, CHECKPOINT):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        raise VPRError(f'no {BEST} or {CHECKPOINT} in {path}')
    if not os.path.exists(path):
        raise VPRError(f'checkpoint {path} not found')
    return path


def load_checkpoint(path: str, formats: Sequence[str] = (FORMAT_CHECKPOINT,)) -> dict:
    """
    Read a vpr-train checkpoint safely (plain data and tensors only) and check its fields.

    `formats` says what the caller can use: resuming needs a full checkpoint, exporting takes
    either. VPRError names the file and what is wrong with it.
    """
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise VPRError(f'cannot read checkpoint {path}: {exc}') from exc
    fmt = ckpt.get('format') if isinstance(ckpt, dict) else None
    if fmt not in _NEEDS:
        raise VPRError(f'{path} is not a vpr-train checkpoint')
    if fmt not in formats:
        raise VPRError(f'{path} is a {fmt!r} file; this needs one of {list(formats)}')
    missing = [k for k in _NEEDS[fmt] if k not in ckpt]
    if missing:
        raise VPRError(f'{path}: checkpoint lacks {", ".join(missing)}')
    if int(ckpt.get('version', CKPT_VERSION)) > CKPT_VERSION:
        raise VPRError(f'{path}: checkpoint version {ckpt["version"]} is newer than this '
                       f'vpr-train ({CKPT_VERSION})')
    return ckpt


def best_state(net, args_json: dict, row: dict, history: list, labels_path: str) -> dict:
    """Return what `best.pt` holds for vpr-export: weights, spec and where they came from."""
    return {'format': FORMAT_BEST, 'version': CKPT_VERSION, 'epoch': row['epoch'],
            'model': {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            'spec': net.spec.to_dict(), 'metrics': json.loads(json.dumps(row, default=str)),
            'args': args_json, 'labels': labels_path,
            'history': json.loads(json.dumps(history, default=str))}


def rng_state() -> dict:
    """Every random generator's state, so a resumed run continues the same sequence."""
    np_state = np.random.get_state()
    st = {'torch': torch.get_rng_state(), 'python': random.getstate(),
          'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': np_state[2],
                    'has_gauss': np_state[3], 'cached': np_state[4]}}
    if torch.cuda.is_available():
        st['cuda'] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore what `rng_state` saved (CUDA states only where CUDA is there)."""
    torch.set_rng_state(st['torch'])
    random.setstate(st['python'])
    n = st['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['cached']))
    if 'cuda' in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(st['cuda'])


def write_csv(path: str, history: list[dict], fields: Sequence[str]) -> None:
    """Rewrite the whole log from the history, atomically: consistent with the checkpoint."""
    text = io.StringIO(newline='')
    w = csv.DictWriter(text, list(fields), extrasaction='ignore')
    w.writeheader()
    for row in history:
        w.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in fields})
    write_atomic(path, text.getvalue().encode())
