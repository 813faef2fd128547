"""
``vpr-train``: siamese training with the Generalized Contrastive Loss (or the binary CL baseline).

One shared-weight `VPRNet` embeds both images of every pair in a single forward pass; pairs come
from the graded labels ψ (`training.data.pairs`), the loss is `training.fit.losses`; options
that add pairs of their own are pair hooks (`training.fit.pair_hooks`). Defaults follow the
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
from vpr_ros.model.encoder import ModelSpec, VPRNet
from vpr_ros.training.data.dataset import load_traverses, TraverseImages
from vpr_ros.training.data.pairs import PairImages, PairSampler
from vpr_ros.training.fit.augment import (
    check_augment_args,
    OnlineAugment,
    ViewTransform,
    warp_features,
)
from vpr_ros.training.fit.best_epoch import best_from_history, update_best
from vpr_ros.training.fit.checkpoint import (
    atomic_save,
    BEST,
    best_state,
    CHECKPOINT,
    CKPT_VERSION,
    FORMAT_CHECKPOINT,
    load_checkpoint,
    rng_state,
    set_rng_state,
    write_csv,
)
from vpr_ros.training.fit.distributed import all_sum, barrier, Dist, setup_distributed
from vpr_ros.training.fit.losses import PairLoss
from vpr_ros.training.fit.lowtex import lowtex_hook
from vpr_ros.training.fit.pair_hooks import apply_pair_hooks, PairHook, PairSetup
from vpr_ros.training.fit.train_args import build_parser, DEFAULT_LR
from vpr_ros.training.fit.train_data import cache_cut, load_train_labels, ValSet

LOG_CSV = 'train_log.csv'
CSV_FIELDS = ('epoch', 'loss', 'lr', 'r1', 'r5', 'r10', 'map5', 'time_s')


def _json_args(args) -> dict:
    return json.loads(json.dumps(vars(args), default=str))


# ----------------------------------------------------------------------------- training
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _fmt(x) -> str:
    return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.4f}'


def pair_hooks_from_args(args) -> list[PairHook]:
    """Return the pair hooks the command-line options ask for (``--lowtex-negatives``)."""
    return [h for h in (lowtex_hook(getattr(args, 'lowtex_negatives', 0.0)),) if h is not None]


def train(args, pair_hooks: Sequence[PairHook] | None = None) -> dict:
    """
    Run (or resume) training as configured; returns a summary (rank 0's view).

    ``pair_hooks`` change the pairs trained on (`training.fit.pair_hooks`); None: the ones the
    options ask for.
    """
    dist = setup_distributed(args.device)
    hooks = pair_hooks_from_args(args) if pair_hooks is None else list(pair_hooks)
    try:
        return _train(args, dist, hooks)
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
    pair_hooks: list = dataclasses.field(default_factory=list)
    net: VPRNet = None
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    scaler: object = None
    start_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {'value': None, 'epoch': None})
    warp: bool = False        # --augment featgeo: warp the cached feature maps every step

    @property
    def amp(self) -> bool:
        return self.dist.device.type == 'cuda' and not self.args.no_amp


def _prepare_data(args, dist: Dist) -> _Run:
    """Traverses, ψ labels, image sets and the pair sampler; the micro-batch size per rank."""
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
    parts = check_augment_args(args)
    # a finished run (resumed at its last epoch) trains nothing: no cache to fill
    cut = (cache_cut(args, net, dist, run.q_images, run.m_images, val)
           if run.start_epoch < args.epochs else 0)
    if 'featgeo' in parts and not cut and run.start_epoch < args.epochs:
        raise VPRError('--augment featgeo warps the cached feature maps: it needs the feature '
                       'cache (one process, within --cache-budget-gb)')
    run.warp = 'featgeo' in parts
    image_parts = parts - {'featgeo'}
    if cut:
        from vpr_ros.training.fit.feature_cache import FrozenFeatures, PairFeatures
        bars = dist.main and not args.no_progress
        views = [None] + ([ViewTransform(image_parts, args.seed, v)
                           for v in range(1, args.aug_views + 1)] if image_parts else [])
        kw = {'workers': args.workers, 'progress': bars, 'views': views,
              'store': args.cache_dir}
        q_feats = FrozenFeatures(net, cut, run.q_images, dist.device, desc='cache train query',
                                 **kw)
        m_feats = q_feats if run.within else FrozenFeatures(
            net, cut, run.m_images, dist.device, desc='cache train map', **kw)
        pair_data = PairFeatures(q_feats, m_feats)
        if val is not None:
            val.use_cache(net, cut, dist.device, args.workers, bars, args.cache_dir)
    else:
        online = (OnlineAugment(image_parts, 1.0 / (args.aug_views + 1)) if image_parts
                  else None)
        pair_data = PairImages(run.q_images.paths, run.m_images.paths, run.spec.image_size,
                               run.spec.mean, run.spec.std, transform=online)
    paths = run.q_images.paths + ([] if run.within else run.m_images.paths)
    setup = apply_pair_hooks(PairSetup(run.sampler, pair_data, paths, run.spec, net, cut,
                                       dist.device, dist.rank, dist.main, args.seed),
                             run.pair_hooks)
    run.sampler, pair_data = setup.sampler, setup.dataset
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
        if run.warp:
            x = warp_features(x)
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
        atomic_save(best_state(run.net, _json_args(args), row, run.history, run.labels_path),
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


def _train(args, dist: Dist, hooks: list[PairHook]) -> dict:
    t_start = time.monotonic()
    if args.lr is None:
        args.lr = DEFAULT_LR[args.loss]
    os.makedirs(args.out, exist_ok=True)
    _seed_everything(args.seed + dist.rank)
    run = _prepare_data(args, dist)
    run.pair_hooks = hooks
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
        if args.augment != 'none':
            cached += (f', augment {args.augment} ({args.aug_views} cached views + the clean one)'
                       if cut else f', augment {args.augment} (every load)')
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


__all__ = ['main', 'pair_hooks_from_args', 'train']
