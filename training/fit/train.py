"""
``vpr-train``: siamese training with the Generalized Contrastive Loss (or the binary CL baseline).

One shared-weight `VPRNet` embeds both images of every pair in a single forward pass; pairs come
from the graded labels ψ (`training.pairs`), the loss is `training.losses`. Defaults follow the
GCL paper: SGD, lr 0.1 (0.01 for CL) divided by 10 every 15 epochs, 64 pairs per step, only the
last two backbone blocks trained, τ = 0.5.

Runs as one process or under ``torchrun`` (DistributedDataParallel): the code path is the same,
world size 1 simply has no DDP wrapper. ``--batch-size`` is the number of pairs per optimiser
step over all ranks and accumulation steps, so a run optimises the same thing on 1 or 8 GPUs.
Only rank 0 validates and writes files. Every epoch ends with an atomic checkpoint (model,
optimiser, scheduler, AMP scaler, sampler state, RNG states, history); a run finding one in its
output directory continues from it, so a killed job is simply started again. The epoch with the
best validation metric (``--select-metric``, R@1 by default, ψ > 0.5 hits; a tie keeps the
earlier epoch) is kept as ``best.pt``, the input of ``vpr-export``.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import VPRError
from vpr_ros.core.psi import add_fov_arguments
from vpr_ros.model.encoder import ModelSpec, VPRNet
from vpr_ros.training.best_epoch import (
    best_from_history,
    DEFAULT_SELECT_METRIC,
    SELECT_METRICS,
    update_best,
)
from vpr_ros.training.checkpoint import (
    atomic_save,
    BEST,
    CHECKPOINT,
    CKPT_VERSION,
    FORMAT_BEST,
    FORMAT_CHECKPOINT,
    load_checkpoint,
    rng_state,
    set_rng_state,
    write_csv,
)
from vpr_ros.training.distributed import all_sum, barrier, Dist, setup_distributed
from vpr_ros.training.losses import DEFAULT_MARGIN, PairLoss
from vpr_ros.training.lowtex import add_lowtex_arguments, wrap_lowtex
from vpr_ros.training.pairs import PairImages, PairSampler
from vpr_ros.training.train_data import cache_cut, load_train_labels, load_traverses, ValSet

LOG_CSV = 'train_log.csv'
DEFAULT_LR = {'gcl': 0.1, 'cl': 0.01}
CSV_FIELDS = ('epoch', 'loss', 'lr', 'r1', 'r5', 'r10', 'map5', 'time_s')


# ----------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='vpr-train', description='Train a place-recognition network with the GCL '
        '(graded FoV-overlap labels) or the binary contrastive loss. Use torchrun for '
        'several GPUs.')
    d = ap.add_argument_group('data')
    d.add_argument('--data-root', default='', help='folder holding the traverses (indices); '
                   'without it the traverse arguments are index paths')
    d.add_argument('--train-map', nargs='+', default=[], help='map traverses (partners); '
                   'omitted: pairs within --train-query')
    d.add_argument('--train-query', nargs='+', required=True, help='query traverses (anchors)')
    d.add_argument('--val-map', nargs='+', default=[], help='validation map traverses')
    d.add_argument('--val-query', nargs='+', default=[], help='validation query traverses')
    d.add_argument('--labels', default='', help='ψ file from vpr-labels (query × map); default: '
                   'the one vpr-labels writes next to the first query index, else computed')
    d.add_argument('--pairs-per-epoch', type=int, default=0,
                   help='pairs per epoch over all ranks (default: one per query image)')
    d.add_argument('--workers', type=int, default=4, help='DataLoader worker processes')
    d.add_argument('--prefetch', type=int, default=4, help='batches prefetched per worker')
    d.add_argument('--feature-cache', choices=('auto', 'on', 'off'), default='auto',
                   help='run the frozen blocks once per image and train on their cached output '
                        '(same result, several times faster); auto: on for one process when '
                        'it fits --cache-budget-gb')
    d.add_argument('--cache-budget-gb', type=float, default=4.0,
                   help='memory the feature cache may take (auto mode)')
    m = ap.add_argument_group('model')
    m.add_argument('--backbone', default='mobilenet_v2')
    m.add_argument('--pooling', choices=('gem', 'avg'), default='gem')
    m.add_argument('--gem-p', type=float, default=3.0)
    m.add_argument('--image-size', type=int, nargs=2, default=ModelSpec().image_size,
                   metavar=('H', 'W'), help="network input (default: the default model's, so a "
                   'trained model runs at the size the node runs)')
    m.add_argument('--train-blocks', type=int, default=2, help='trained last backbone blocks')
    m.add_argument('--no-pretrained', action='store_true', help='random init, not ImageNet')
    m.add_argument('--backbone-checkpoint', default='',
                   help='local torchvision classifier state_dict to start from')
    o = ap.add_argument_group('optimisation')
    o.add_argument('--loss', choices=('gcl', 'cl'), default='gcl')
    o.add_argument('--margin', type=float, default=DEFAULT_MARGIN, help='margin τ')
    o.add_argument('--epochs', type=int, default=30)
    o.add_argument('--batch-size', type=int, default=64, help='pairs per optimiser step')
    o.add_argument('--accum-steps', type=int, default=1,
                   help='split each step into this many micro-batches (less memory)')
    o.add_argument('--lr', type=float, default=None, help='default 0.1 for gcl, 0.01 for cl')
    o.add_argument('--momentum', type=float, default=0.9)
    o.add_argument('--weight-decay', type=float, default=0.0)
    o.add_argument('--lr-step', type=int, default=15, help='epochs between lr ÷ 10')
    o.add_argument('--lr-gamma', type=float, default=0.1)
    o.add_argument('--no-amp', action='store_true', help='no mixed precision on CUDA')
    o.add_argument('--seed', type=int, default=0)
    add_lowtex_arguments(o)
    r = ap.add_argument_group('run')
    r.add_argument('--out', required=True, help='output directory (checkpoints, logs)')
    r.add_argument('--resume', default='', help='checkpoint to resume from (default: the one '
                   'in --out, when there is one)')
    r.add_argument('--no-resume', action='store_true', help='ignore a checkpoint in --out')
    r.add_argument('--device', default='auto', help='auto, cpu or cuda')
    r.add_argument('--eval-batch', type=int, default=64)
    r.add_argument('--select-metric', choices=tuple(SELECT_METRICS), default=DEFAULT_SELECT_METRIC,
                   help='validation metric that picks best.pt (map: mAP@5); a tie keeps the '
                        'earlier epoch')
    r.add_argument('--no-initial-eval', action='store_true',
                   help='skip validating the untrained network (epoch 0 row)')
    r.add_argument('--no-progress', action='store_true')
    r.add_argument('--dump-pairs', action='store_true',
                   help='debug: every rank saves the pairs it trained on (pairs/*.npy)')
    add_fov_arguments(ap)
    return ap


def _json_args(args) -> dict:
    return json.loads(json.dumps(vars(args), default=str))


# ----------------------------------------------------------------------------- training
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _fmt(x) -> str:
    return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.4f}'


def train(args) -> dict:
    """Run (or resume) training as configured; returns a summary (rank 0's view)."""
    dist = setup_distributed(args.device)
    try:
        return _train(args, dist)
    finally:
        if dist.ddp and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclasses.dataclass
class _Run:
    """What one training run holds between its stages (data, network, optimiser, progress)."""

    args: argparse.Namespace
    dist: Dist
    spec: ModelSpec
    within: bool
    q_images: object
    m_images: object
    sampler: PairSampler
    labels_path: str
    micro: int
    net: VPRNet = None
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    scaler: object = None
    start_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {'value': None, 'epoch': None})

    @property
    def amp(self) -> bool:
        return self.dist.device.type == 'cuda' and not self.args.no_amp


def _prepare_data(args, dist: Dist) -> _Run:
    """Traverses, ψ labels, image sets and the pair sampler; the micro-batch size per rank."""
    from vpr_ros.training.dataset import TraverseImages

    queries = load_traverses(args.data_root, args.train_query)
    maps = load_traverses(args.data_root, args.train_map)
    within = not maps or [t.index_path for t in maps] == [t.index_path for t in queries]
    if within:
        maps = []
    psi, labels_path = load_train_labels(args, queries, maps, dist)
    spec = ModelSpec(backbone=args.backbone, pooling=args.pooling, gem_p=args.gem_p,
                     image_size=tuple(args.image_size))
    q_images = TraverseImages(queries, spec.image_size)
    m_images = q_images if within else TraverseImages(maps, spec.image_size)
    sampler = PairSampler(psi, within=within, binary=args.loss == 'cl',
                          pairs_per_epoch=args.pairs_per_epoch or None, seed=args.seed,
                          num_replicas=dist.world_size, rank=dist.rank,
                          anchors=q_images.valid, partners=m_images.valid)
    steps_split = dist.world_size * args.accum_steps
    micro = max(1, args.batch_size // steps_split)
    if micro * steps_split != args.batch_size and dist.main:
        print(f'vpr-train: {args.batch_size} pairs per step do not split into '
              f'{dist.world_size} ranks × {args.accum_steps} micro-batches; using '
              f'{micro * steps_split}', flush=True)
    return _Run(args, dist, spec, within, q_images, m_images, sampler, labels_path, micro)


def _build_model(run: _Run) -> None:
    """Build the network with its trainable blocks, SGD, the step schedule, the AMP scaler."""
    args = run.args
    net = VPRNet(run.spec, pretrained=not args.no_pretrained,
                 checkpoint=args.backbone_checkpoint)
    net.set_trainable_blocks(args.train_blocks)
    # channels_last: training steps measured 1.5x faster on CPU (MobileNetV2, 224x224).
    net.to(run.dist.device, memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    run.net = net
    run.optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
    run.scheduler = torch.optim.lr_scheduler.StepLR(run.optimizer, step_size=max(1, args.lr_step),
                                                    gamma=args.lr_gamma)
    run.scaler = torch.amp.GradScaler('cuda', enabled=run.amp)


def _resume(run: _Run) -> None:
    """Continue from --resume or the checkpoint in --out, when there is one."""
    args = run.args
    resume = args.resume or ('' if args.no_resume else os.path.join(args.out, CHECKPOINT))
    if resume and os.path.exists(resume):
        ckpt = load_checkpoint(resume, (FORMAT_CHECKPOINT,))
        run.net.load_state_dict(ckpt['model'])
        run.optimizer.load_state_dict(ckpt['optimizer'])
        run.scheduler.load_state_dict(ckpt['scheduler'])
        run.scaler.load_state_dict(ckpt['scaler'])
        run.sampler.load_state_dict(ckpt['sampler'])
        set_rng_state(ckpt['rng'])
        run.start_epoch, run.history = int(ckpt['epoch']), list(ckpt['history'])
        run.best = best_from_history(run.history, args.select_metric)  # metric may differ
        if run.dist.main:
            print(f'vpr-train: resumed from {resume} at epoch {run.start_epoch}', flush=True)
    elif args.resume:
        raise VPRError(f'checkpoint {args.resume} not found')


def _pair_loader(run: _Run, val) -> tuple[DataLoader, int]:
    """DataLoader of pairs (cached frozen features when they fit) and the cache cut (0: none)."""
    args, dist, net = run.args, run.dist, run.net
    # a finished run (resumed at its last epoch) trains nothing: no cache to fill
    cut = (cache_cut(args, net, dist, run.q_images, run.m_images, val)
           if run.start_epoch < args.epochs else 0)
    if cut:
        from vpr_ros.training.feature_cache import FrozenFeatures, PairFeatures
        bars = dist.main and not args.no_progress
        q_feats = FrozenFeatures(net, cut, run.q_images, dist.device, workers=args.workers,
                                 desc='cache train query', progress=bars)
        m_feats = q_feats if run.within else FrozenFeatures(
            net, cut, run.m_images, dist.device, workers=args.workers, desc='cache train map',
            progress=bars)
        pair_data = PairFeatures(q_feats, m_feats)
        if val is not None:
            val.use_cache(net, cut, dist.device, args.workers, bars)
    else:
        pair_data = PairImages(run.q_images.paths, run.m_images.paths, run.spec.image_size,
                               run.spec.mean, run.spec.std)
    pair_data = wrap_lowtex(run, pair_data, cut)  # --lowtex-negatives: adds ψ = 0 blank pairs
    loader_kw = {}
    if args.workers > 0 and not cut:  # cached features need no worker processes
        loader_kw = {'persistent_workers': True, 'prefetch_factor': max(1, args.prefetch)}
    loader = DataLoader(pair_data, batch_size=run.micro, sampler=run.sampler,
                        num_workers=0 if cut else args.workers,
                        pin_memory=dist.device.type == 'cuda', **loader_kw)
    return loader, cut


def _train_epoch(run: _Run, model, loader: DataLoader, criterion, cut: int, epoch: int
                 ) -> tuple[float, int]:
    """One pass over the epoch's pairs; returns (summed loss, pairs) of this rank."""
    args, dist, device = run.args, run.dist, run.dist.device
    model.train()
    loss_sum, n_sum = 0.0, 0
    n_micro = len(loader)
    bar = None
    if dist.main and not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=n_micro, desc=f'epoch {epoch + 1}/{args.epochs}', unit='batch',
                   leave=False, file=sys.stderr)
    run.optimizer.zero_grad(set_to_none=True)
    for k, (xa, xb, y) in enumerate(loader):
        last_of_group = (k + 1) % args.accum_steps == 0 or k + 1 == n_micro
        x = torch.cat([xa, xb]).to(device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        sync = model.no_sync() if dist.ddp and not last_of_group else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=torch.float16, enabled=run.amp):
                desc = run.net.forward_from(x, cut) if cut else model(x)
            da, db = desc.split(len(xa))
            loss = criterion(da, db, y)
            run.scaler.scale(loss / args.accum_steps).backward()
        if last_of_group:
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
        loss_sum += float(loss.detach()) * len(y)
        n_sum += len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f'{loss_sum / max(n_sum, 1):.4f}')
    if bar is not None:
        bar.close()
    return loss_sum, n_sum


def _save_epoch(run: _Run, row: dict, epoch: int, validated: bool) -> bool:
    """Rank 0: best.pt when validation improved, the checkpoint and the log; True if best."""
    args, best = run.args, run.best
    run.best, improved = update_best(best, row if validated else {'epoch': epoch + 1},
                                     args.select_metric)
    if improved:
        atomic_save(_best_state(run.net, args, row, run.history, run.labels_path),
                    os.path.join(args.out, BEST))
    run.sampler.set_epoch(epoch + 1)
    ckpt = {'format': FORMAT_CHECKPOINT, 'version': CKPT_VERSION, 'epoch': epoch + 1,
            'model': run.net.state_dict(), 'spec': run.net.spec.to_dict(),
            'optimizer': run.optimizer.state_dict(), 'scheduler': run.scheduler.state_dict(),
            'scaler': run.scaler.state_dict(), 'sampler': run.sampler.state_dict(),
            'rng': rng_state(), 'history': run.history, 'best': run.best,
            'args': _json_args(args), 'labels': run.labels_path}
    atomic_save(ckpt, os.path.join(args.out, CHECKPOINT))
    write_csv(os.path.join(args.out, LOG_CSV), run.history, CSV_FIELDS)
    return improved


def _train(args, dist: Dist) -> dict:
    t_start = time.monotonic()
    if args.lr is None:
        args.lr = DEFAULT_LR[args.loss]
    os.makedirs(args.out, exist_ok=True)
    _seed_everything(args.seed + dist.rank)
    run = _prepare_data(args, dist)
    _build_model(run)
    _resume(run)
    net, device = run.net, dist.device
    model = net
    if dist.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None)
    val = None
    if args.val_map and args.val_query and dist.main:
        val = ValSet(load_traverses(args.data_root, args.val_map),
                     load_traverses(args.data_root, args.val_query), run.spec, args.fov_deg,
                     args.radius)
    loader, cut = _pair_loader(run, val)
    if dist.main:
        cached = f'frozen features cached after trunk block {cut}' if cut else 'no feature cache'
        print(f'vpr-train: {run.spec.tag()}, loss {args.loss}, '
              f'{len(run.sampler) * dist.world_size} pairs/epoch, {dist.world_size} rank(s) × '
              f'{args.accum_steps} × {run.micro} pairs per step, lr {args.lr}, device {device}, '
              f'{cached}, labels {run.labels_path}', flush=True)
    if val is not None and run.start_epoch == 0 and not args.no_initial_eval and not run.history:
        res = val.evaluate(net, device, args.eval_batch)
        run.history.append({'epoch': 0, 'loss': None, 'lr': None, 'time_s': 0.0, **res})
        print(f'epoch 0 (untrained): R@1 {_fmt(res["r1"])} R@5 {_fmt(res["r5"])}', flush=True)
    criterion = PairLoss(args.loss, args.margin)
    for epoch in range(run.start_epoch, args.epochs):
        t0 = time.monotonic()
        run.sampler.set_epoch(epoch)
        if args.dump_pairs:
            _dump_pairs(run, epoch)
        lr = run.optimizer.param_groups[0]['lr']
        loss_sum, n_sum = _train_epoch(run, model, loader, criterion, cut, epoch)
        run.scheduler.step()
        loss_sum, n_sum = all_sum(dist, loss_sum, n_sum)
        row = {'epoch': epoch + 1, 'loss': loss_sum / max(n_sum, 1), 'lr': lr,
               'r1': None, 'r5': None}
        if val is not None:
            row.update(val.evaluate(net, device, args.eval_batch))
        row['time_s'] = round(time.monotonic() - t0, 3)
        run.history.append(row)
        if dist.main:
            improved = _save_epoch(run, row, epoch, val is not None)
            print(f'epoch {epoch + 1}/{args.epochs} loss {row["loss"]:.5f} lr {lr:.3g} '
                  f'R@1 {_fmt(row["r1"])} R@5 {_fmt(row["r5"])} {row["time_s"]:.1f}s'
                  + (' *best' if improved else ''), flush=True)
        barrier(dist)
    return _finish(run, t_start) if dist.main else {}


def _dump_pairs(run: _Run, epoch: int) -> None:
    """Debug aid (--dump-pairs): the pairs this rank trains on in this epoch."""
    p = run.sampler.rank_pairs(epoch)
    os.makedirs(os.path.join(run.args.out, 'pairs'), exist_ok=True)
    np.save(os.path.join(run.args.out, 'pairs', f'epoch{epoch + 1}_rank{run.dist.rank}.npy'),
            np.stack([p.anchor, p.partner]))


def _finish(run: _Run, t_start: float) -> dict:
    """Rank 0: final log and summary.json; the summary is what train() returns."""
    args = run.args
    write_csv(os.path.join(args.out, LOG_CSV), run.history, CSV_FIELDS)
    summary = {'epochs': args.epochs, 'best': run.best, 'history': run.history,
               'seconds': round(time.monotonic() - t_start, 2),
               'pairs': dict(run.sampler.counters), 'out': os.path.abspath(args.out)}
    write_atomic(os.path.join(args.out, 'summary.json'),
                 json.dumps(summary, indent=1, default=str).encode())
    return summary


def _best_state(net: VPRNet, args, row: dict, history: list, labels_path: str) -> dict:
    """Collect what vpr-export needs: weights, spec, and where they came from."""
    return {'format': FORMAT_BEST, 'version': CKPT_VERSION, 'epoch': row['epoch'],
            'model': {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            'spec': net.spec.to_dict(), 'metrics': json.loads(json.dumps(row, default=str)),
            'args': _json_args(args), 'labels': labels_path,
            'history': json.loads(json.dumps(history, default=str))}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``vpr-train``."""
    args = build_parser().parse_args(argv)
    if args.accum_steps < 1 or args.batch_size < 1 or args.epochs < 1:
        print('vpr-train: error: --batch-size, --accum-steps and --epochs must be >= 1',
              file=sys.stderr)
        return 2
    try:
        summary = train(args)
    except VPRError as exc:
        print(f'vpr-train: error: {exc}', file=sys.stderr)
        return 2
    if summary:
        b = summary['best']
        how = (f'{args.select_metric} {_fmt(b["value"])}' if b.get('value') is not None
               else 'no validation: last epoch')
        print(f'vpr-train: done in {summary["seconds"]:.0f}s; best epoch {b["epoch"]} '
              f'({how}); {os.path.join(args.out, BEST)}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())


__all__ = ['BEST', 'build_parser', 'CHECKPOINT', 'load_traverses', 'main', 'setup_distributed',
           'train', 'ValSet']
