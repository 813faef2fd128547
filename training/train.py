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
output directory continues from it, so a killed job is simply started again. The model with the
best validation R@5 (ψ > 0.5 hits; ties broken by R@1) is kept as ``best.pt``, the input of
``vpr-export``.
"""
import argparse
import contextlib
import csv
import dataclasses
import datetime
import io
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
from vpr_ros.training.losses import DEFAULT_MARGIN, PairLoss
from vpr_ros.training.pairs import PairImages, PairSampler

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import VPRError
from vpr_ros.model.encoder import ModelSpec, VPRNet

CHECKPOINT = 'checkpoint.pt'
BEST = 'best.pt'
LOG_CSV = 'train_log.csv'
CKPT_VERSION = 1
DEFAULT_LR = {'gcl': 0.1, 'cl': 0.01}
CSV_FIELDS = ('epoch', 'loss', 'lr', 'r1', 'r5', 'time_s')


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
    d.add_argument('--fov-deg', type=float, default=90.0, help='FoV angle θ for ψ')
    d.add_argument('--radius', type=float, default=3.5, help='FoV radius r (m) for ψ')
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
    m.add_argument('--image-size', type=int, nargs=2, default=(480, 640), metavar=('H', 'W'))
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
    r = ap.add_argument_group('run')
    r.add_argument('--out', required=True, help='output directory (checkpoints, logs)')
    r.add_argument('--resume', default='', help='checkpoint to resume from (default: the one '
                   'in --out, when there is one)')
    r.add_argument('--no-resume', action='store_true', help='ignore a checkpoint in --out')
    r.add_argument('--device', default='auto', help='auto, cpu or cuda')
    r.add_argument('--eval-batch', type=int, default=64)
    r.add_argument('--no-initial-eval', action='store_true',
                   help='skip validating the untrained network (epoch 0 row)')
    r.add_argument('--no-progress', action='store_true')
    r.add_argument('--dump-pairs', action='store_true',
                   help='debug: every rank saves the pairs it trained on (pairs/*.npy)')
    return ap


# ----------------------------------------------------------------------------- distributed
@dataclasses.dataclass
class Dist:
    """Where this process stands: rank, world size, its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = 'auto') -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    cuda = device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available())
    if cuda:
        index = local if world > 1 else (torch.device(device).index or 0
                                         if device.startswith('cuda') else 0)
        dev = torch.device('cuda', index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device('cpu')
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    if world > 1:
        torch.distributed.init_process_group('nccl' if cuda else 'gloo',
                                             timeout=datetime.timedelta(minutes=30))
    return Dist(rank, local, world, dev)


def _barrier(dist: Dist) -> None:
    if dist.ddp:
        torch.distributed.barrier()


def _all_sum(dist: Dist, *values: float) -> list[float]:
    if not dist.ddp:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- data
def load_traverses(data_root: str, names: Sequence[str]):
    """Traverses by name under data_root, or index paths when there is no root."""
    from vpr_ros.training.dataset import select_traverses
    if not names:
        return []
    return select_traverses(data_root, names) if data_root else select_traverses(list(names))


def load_train_labels(args, queries, maps, dist: Dist):
    """ψ (query × map, or within the queries): a given file, vpr-labels' file, or computed."""
    from vpr_ros.training import labels as lab

    within = not maps
    n_rows = sum(len(t) for t in queries)
    n_cols = n_rows if within else sum(len(t) for t in maps)
    candidates = [args.labels] if args.labels else [
        lab.default_out_path(queries, None if within else maps)]
    for path in candidates:
        if path and os.path.exists(path):
            meta = lab.read_label_meta(path)
            if (meta['n_rows'], meta['n_cols']) != (n_rows, n_cols):
                if args.labels:
                    raise VPRError(f'labels {path} are {meta["n_rows"]}×{meta["n_cols"]}, the '
                                   f'training traverses {n_rows}×{n_cols}')
                continue
            return lab.load_labels(path), path
        if args.labels:
            raise VPRError(f'labels file {path} not found')
    path = os.path.join(args.out, 'train_labels.npz')
    if dist.main:
        print(f'vpr-train: computing ψ labels ({n_rows}×{n_cols}) into {path}', flush=True)
        lab.generate_labels(queries, None if within else maps, path, args.fov_deg, args.radius)
    _barrier(dist)
    return lab.load_labels(path), path


class ValSet:
    """Validation images and their ψ > 0.5 positives, embedded by the network being trained."""

    def __init__(self, maps, queries, spec: ModelSpec, fov_deg: float, radius: float) -> None:
        from vpr_ros.training.dataset import concat_poses, TraverseImages
        from vpr_ros.training.evaluate import psi_positives

        self.map_images = TraverseImages(maps, spec.image_size, mean=spec.mean, std=spec.std)
        self.query_images = TraverseImages(queries, spec.image_size, mean=spec.mean,
                                           std=spec.std)
        mp = concat_poses(maps)[self.map_images.valid]
        qp = concat_poses(queries)[self.query_images.valid]
        self.positives = psi_positives(mp, qp, 0.5, fov_deg, radius)
        self.cached: tuple | None = None   # (map, query) FrozenFeatures, see use_cache

    def n_images(self) -> int:
        return len(self.map_images.paths) + len(self.query_images.paths)

    def use_cache(self, net, cut: int, device, workers: int, progress: bool = True) -> None:
        """Embed from cached frozen-prefix features from now on (the prefix never changes)."""
        from vpr_ros.training.feature_cache import FrozenFeatures
        self.cached = tuple(FrozenFeatures(net, cut, images, device, workers=workers, desc=desc,
                                           progress=progress)
                            for images, desc in ((self.map_images, 'cache val map'),
                                                 (self.query_images, 'cache val query')))

    @torch.no_grad()
    def _embed(self, net, images, device, batch: int, workers: int, cached=None) -> np.ndarray:
        if cached is None:
            loader = DataLoader(images, batch_size=batch, num_workers=workers,
                                pin_memory=device.type == 'cuda')
            batches = ((x, 0) for x, _ in loader)
        else:  # in the order of images.valid, as the loader serves them
            idx = torch.as_tensor(images.valid)
            batches = ((cached.feats[idx[i:i + batch]], cached.cut)
                       for i in range(0, len(idx), batch))
        out = []
        for x, start in batches:
            with torch.autocast(device.type, dtype=torch.float16,
                                enabled=device.type == 'cuda'):
                x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
                out.append(net.forward_from(x, start).float().cpu())
        return torch.cat(out).numpy()

    def evaluate(self, net, device, batch: int = 64, workers: int = 0) -> dict:
        """R@1/5/10 (and the rest of metrics.evaluate_descriptors) of net on this set."""
        from vpr_ros.core.metrics import evaluate_descriptors

        was = net.training
        net.eval()
        try:
            m_cache, q_cache = self.cached or (None, None)
            m = self._embed(net, self.map_images, device, batch, workers, m_cache)
            q = self._embed(net, self.query_images, device, batch, workers, q_cache)
        finally:
            net.train(was)
        res = evaluate_descriptors(q, m, self.positives, ks=(1, 5, 10))
        return {'r1': res['recall'][1], 'r5': res['recall'][5], 'r10': res['recall'][10],
                'map5': res['map'][5], 'ap': res['ap'], 'n_queries': res['n_evaluated']}


def cache_cut(args, net: VPRNet, dist: Dist, q_images, m_images, val) -> int:
    """Trunk block after which features are cached (0: none), per --feature-cache."""
    from vpr_ros.training.feature_cache import cache_bytes

    cut = net.frozen_prefix()
    if args.feature_cache == 'off' or cut == 0:
        return 0
    if dist.ddp:
        if args.feature_cache == 'on':
            raise VPRError('--feature-cache on needs a single process; under torchrun use auto '
                           'or off')
        return 0
    n = len(q_images.paths) + (0 if m_images is q_images else len(m_images.paths))
    n += val.n_images() if val is not None else 0
    need = cache_bytes(net, cut, net.spec.image_size, n)
    if args.feature_cache == 'auto' and need > args.cache_budget_gb * (1 << 30):
        print(f'vpr-train: feature cache off: {need / (1 << 30):.1f} GB for {n} images is over '
              f'--cache-budget-gb {args.cache_budget_gb:g}', flush=True)
        return 0
    return cut


# ----------------------------------------------------------------------------- checkpoints
def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file, fsync, rename: a kill never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def _rng_state() -> dict:
    np_state = np.random.get_state()
    st = {'torch': torch.get_rng_state(), 'python': random.getstate(),
          'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': np_state[2],
                    'has_gauss': np_state[3], 'cached': np_state[4]}}
    if torch.cuda.is_available():
        st['cuda'] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st['torch'])
    random.setstate(st['python'])
    n = st['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['cached']))
    if 'cuda' in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(st['cuda'])


def load_checkpoint(path: str) -> dict:
    """Read a training checkpoint safely (plain data and tensors only)."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise VPRError(f'cannot read checkpoint {path}: {exc}') from exc
    if not isinstance(ckpt, dict) or ckpt.get('format') != 'vpr_ros.train':
        raise VPRError(f'{path} is not a vpr-train checkpoint')
    return ckpt


def _json_args(args) -> dict:
    return json.loads(json.dumps(vars(args), default=str))


def write_csv(path: str, history: list[dict]) -> None:
    """Rewrite the whole log from the history: always consistent with the checkpoint."""
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction='ignore')
        w.writeheader()
        for row in history:
            w.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- training
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _or(x, default: float) -> float:
    return default if x is None else x


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


def _train(args, dist: Dist) -> dict:
    t_start = time.monotonic()
    if args.lr is None:
        args.lr = DEFAULT_LR[args.loss]
    os.makedirs(args.out, exist_ok=True)
    _seed_everything(args.seed + dist.rank)
    device = dist.device
    amp = device.type == 'cuda' and not args.no_amp

    queries = load_traverses(args.data_root, args.train_query)
    maps = load_traverses(args.data_root, args.train_map)
    within = not maps or [t.index_path for t in maps] == [t.index_path for t in queries]
    if within:
        maps = []
    psi, labels_path = load_train_labels(args, queries, maps, dist)
    spec = ModelSpec(backbone=args.backbone, pooling=args.pooling, gem_p=args.gem_p,
                     image_size=tuple(args.image_size))
    from vpr_ros.training.dataset import TraverseImages
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
    net = VPRNet(spec, pretrained=not args.no_pretrained,
                 checkpoint=args.backbone_checkpoint)
    net.set_trainable_blocks(args.train_blocks)
    # channels_last: training steps measured 1.5x faster on CPU (MobileNetV2, 224x224).
    net.to(device, memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.lr_step),
                                                gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    criterion = PairLoss(args.loss, args.margin)

    start_epoch, history, best = 0, [], {'r5': -1.0, 'epoch': None}
    resume = args.resume or ('' if args.no_resume else os.path.join(args.out, CHECKPOINT))
    if resume and os.path.exists(resume):
        ckpt = load_checkpoint(resume)
        net.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        scaler.load_state_dict(ckpt['scaler'])
        sampler.load_state_dict(ckpt['sampler'])
        _set_rng_state(ckpt['rng'])
        start_epoch, history, best = int(ckpt['epoch']), list(ckpt['history']), ckpt['best']
        if dist.main:
            print(f'vpr-train: resumed from {resume} at epoch {start_epoch}', flush=True)
    elif args.resume:
        raise VPRError(f'checkpoint {args.resume} not found')

    model = net
    if dist.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None)

    val = None
    if args.val_map and args.val_query and dist.main:
        val = ValSet(load_traverses(args.data_root, args.val_map),
                     load_traverses(args.data_root, args.val_query), spec, args.fov_deg,
                     args.radius)
    # a finished run (resumed at its last epoch) trains nothing: no cache to fill
    cut = cache_cut(args, net, dist, q_images, m_images, val) if start_epoch < args.epochs else 0
    if cut:
        from vpr_ros.training.feature_cache import FrozenFeatures, PairFeatures
        bars = dist.main and not args.no_progress
        q_feats = FrozenFeatures(net, cut, q_images, device, workers=args.workers,
                                 desc='cache train query', progress=bars)
        m_feats = q_feats if within else FrozenFeatures(net, cut, m_images, device,
                                                        workers=args.workers,
                                                        desc='cache train map', progress=bars)
        pair_data = PairFeatures(q_feats, m_feats)
        if val is not None:
            val.use_cache(net, cut, device, args.workers, bars)
    else:
        pair_data = PairImages(q_images.paths, m_images.paths, spec.image_size, spec.mean,
                               spec.std)
    loader_kw = {}
    if args.workers > 0 and not cut:  # cached features need no worker processes
        loader_kw = {'persistent_workers': True, 'prefetch_factor': max(1, args.prefetch)}
    loader = DataLoader(pair_data, batch_size=micro, sampler=sampler,
                        num_workers=0 if cut else args.workers,
                        pin_memory=device.type == 'cuda', **loader_kw)
    if dist.main:
        cached = f'frozen features cached after trunk block {cut}' if cut else 'no feature cache'
        print(f'vpr-train: {spec.tag()}, loss {args.loss}, {len(sampler) * dist.world_size} '
              f'pairs/epoch, {dist.world_size} rank(s) × {args.accum_steps} × {micro} pairs '
              f'per step, lr {args.lr}, device {device}, {cached}, labels {labels_path}',
              flush=True)
    if val is not None and start_epoch == 0 and not args.no_initial_eval and not history:
        res = val.evaluate(net, device, args.eval_batch)
        history.append({'epoch': 0, 'loss': None, 'lr': None, 'time_s': 0.0, **res})
        print(f'epoch 0 (untrained): R@1 {_fmt(res["r1"])} R@5 {_fmt(res["r5"])}', flush=True)

    summary: dict = {}
    for epoch in range(start_epoch, args.epochs):
        t0 = time.monotonic()
        sampler.set_epoch(epoch)
        if args.dump_pairs:
            p = sampler.rank_pairs(epoch)
            os.makedirs(os.path.join(args.out, 'pairs'), exist_ok=True)
            np.save(os.path.join(args.out, 'pairs', f'epoch{epoch + 1}_rank{dist.rank}.npy'),
                    np.stack([p.anchor, p.partner]))
        model.train()
        lr = optimizer.param_groups[0]['lr']
        loss_sum, n_sum = 0.0, 0
        n_micro = len(loader)
        bar = None
        if dist.main and not args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=n_micro, desc=f'epoch {epoch + 1}/{args.epochs}', unit='batch',
                       leave=False, file=sys.stderr)
        optimizer.zero_grad(set_to_none=True)
        for k, (xa, xb, y) in enumerate(loader):
            last_of_group = (k + 1) % args.accum_steps == 0 or k + 1 == n_micro
            x = torch.cat([xa, xb]).to(device, non_blocking=True,
                                       memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            sync = model.no_sync() if dist.ddp and not last_of_group else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    desc = net.forward_from(x, cut) if cut else model(x)
                da, db = desc.split(len(xa))
                loss = criterion(da, db, y)
                scaler.scale(loss / args.accum_steps).backward()
            if last_of_group:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach()) * len(y)
            n_sum += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{loss_sum / max(n_sum, 1):.4f}')
        if bar is not None:
            bar.close()
        scheduler.step()
        loss_sum, n_sum = _all_sum(dist, loss_sum, n_sum)
        row = {'epoch': epoch + 1, 'loss': loss_sum / max(n_sum, 1), 'lr': lr,
               'r1': None, 'r5': None}
        if val is not None:
            row.update(val.evaluate(net, device, args.eval_batch))
        row['time_s'] = round(time.monotonic() - t0, 3)
        history.append(row)
        if dist.main:
            # R@5 saturates early on small sets: ties go to the higher R@1
            improved = val is None or (row['r5'] is not None and (
                (row['r5'], row['r1']) > (best['r5'], _or(best.get('r1'), -1.0))))
            if improved:
                best = {'r5': -1.0 if row['r5'] is None else float(row['r5']),
                        'r1': row['r1'], 'epoch': epoch + 1}
                atomic_save(_best_state(net, args, row, history, labels_path), os.path.join(
                    args.out, BEST))
            sampler.set_epoch(epoch + 1)
            ckpt = {'format': 'vpr_ros.train', 'version': CKPT_VERSION, 'epoch': epoch + 1,
                    'model': net.state_dict(), 'spec': net.spec.to_dict(),
                    'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                    'scaler': scaler.state_dict(), 'sampler': sampler.state_dict(),
                    'rng': _rng_state(), 'history': history, 'best': best,
                    'args': _json_args(args), 'labels': labels_path}
            atomic_save(ckpt, os.path.join(args.out, CHECKPOINT))
            write_csv(os.path.join(args.out, LOG_CSV), history)
            print(f'epoch {epoch + 1}/{args.epochs} loss {row["loss"]:.5f} lr {lr:.3g} '
                  f'R@1 {_fmt(row["r1"])} R@5 {_fmt(row["r5"])} {row["time_s"]:.1f}s'
                  + (' *best' if improved else ''), flush=True)
        _barrier(dist)
    if dist.main:
        write_csv(os.path.join(args.out, LOG_CSV), history)
        summary = {'epochs': args.epochs, 'best': best, 'history': history,
                   'seconds': round(time.monotonic() - t_start, 2),
                   'pairs': dict(sampler.counters), 'out': os.path.abspath(args.out)}
        with open(os.path.join(args.out, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1, default=str)
    return summary


def _best_state(net: VPRNet, args, row: dict, history: list, labels_path: str) -> dict:
    """Collect what vpr-export needs: weights, spec, and where they came from."""
    return {'format': 'vpr_ros.train.best', 'version': CKPT_VERSION, 'epoch': row['epoch'],
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
        r5 = b.get('r5')
        r5 = f'R@5 {_fmt(r5)}' if r5 is not None and r5 >= 0 else 'no validation: last epoch'
        print(f'vpr-train: done in {summary["seconds"]:.0f}s; best epoch {b["epoch"]} '
              f'({r5}); {os.path.join(args.out, BEST)}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())


__all__ = ['atomic_save', 'build_parser', 'load_checkpoint', 'main', 'setup_distributed',
           'train', 'ValSet']
