"""
Training throughput: the real loop against the same steps on one batch already in memory.

The real loop is disk -> decode -> preprocess -> forward/backward/step; both run in one process.

Why: on a GPU the data pipeline, not the network, is what usually limits a training job; the
ratio of the two step times is the data-pipeline overhead (goal <= 1.2), tuned with DataLoader
workers, prefetching and pinned memory. Data: the synthetic garden written at --stored-px and
resized to --image-size by the one preprocessing, as vpr-train does. Also measured: the same
real loop on cached frozen-trunk features (vpr-train --feature-cache), as a speed-up over the
image loop, with the one-off cost of filling the cache. And what augmentation (vpr-train
--augment, issue 21) costs: the cache with --aug-views K filled (time, memory) and a step on it
(a view drawn per image; with featgeo the feature maps warped too), against the image loop with
every load augmented (no cache). Prints a table and writes bench/results/bench_train.json.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from vpr_ros.model.encoder import ModelSpec, VPRNet
from vpr_ros.training.data.dataset import load_traverse, TraverseImages
from vpr_ros.training.data.labels import generate_labels, load_labels
from vpr_ros.training.data.pairs import PairImages, PairSampler
from vpr_ros.training.fit.augment import OnlineAugment, ViewTransform, warp_features
from vpr_ros.training.fit.feature_cache import FrozenFeatures, PairFeatures
from vpr_ros.training.fit.losses import PairLoss

HERE = os.path.dirname(os.path.abspath(__file__))
# The synthetic garden is a test fixture (test/synthetic.py), not part of the package.
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'test'))
from synthetic import make_synthetic_garden  # noqa: E402


def _step(net, opt, crit, xa, xb, y, device, amp, scaler, cut=0, warp=False):
    x = torch.cat([xa, xb]).to(device, non_blocking=True, memory_format=torch.channels_last)
    if warp:
        x = warp_features(x)
    y = y.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        desc = net.forward_from(x, cut)
    loss = crit(*desc.split(len(xa)), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _time_loop(loader, step, steps: int, warmup: int, device) -> float:
    """Seconds per step of ``step(batch)`` over a loader, after warmup steps."""
    it = iter(loader)
    for _ in range(warmup):
        step(next(it))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _augment_rows(args, net, opt, crit, scaler, amp, device, sampler, q, m, spec, cut,
                  loader_kw) -> list[dict]:
    """Cache fill (time, memory) per --aug-views K and s/step per augmentation mode."""
    parts = frozenset({'photo', 'geo'})
    rows = []
    for k in args.aug_views:
        views = [None] + [ViewTransform(parts, 0, v) for v in range(1, k + 1)]
        t0 = time.perf_counter()
        q_feats = FrozenFeatures(net, cut, TraverseImages([q], spec.image_size), device,
                                 workers=args.workers, views=views)
        m_feats = FrozenFeatures(net, cut, TraverseImages([m], spec.image_size), device,
                                 workers=args.workers, views=views)
        fill = time.perf_counter() - t0
        n_img = len(q_feats.feats) + len(m_feats.feats)
        for warp in (False, True) if k == max(args.aug_views) else (False,):
            loader = DataLoader(PairFeatures(q_feats, m_feats), batch_size=args.batch_size,
                                sampler=sampler)
            s = _time_loop(loader, lambda b, w=warp: _step(net, opt, crit, *b, device, amp,
                                                            scaler, cut, w),
                           args.steps, args.warmup, device)
            mode = ('photo+geo' if k else 'none') + ('+featgeo' if warp else '')
            rows.append({'loop': f'cached, {mode}', 'aug_views': k, 's_per_step': round(s, 4),
                         'cache_fill_s': round(fill, 2), 'cache_images': n_img,
                         'cache_mb': round((q_feats.nbytes() + m_feats.nbytes()) / 2**20, 1)})
    for aug in (None, OnlineAugment(parts, 1.0 / (max(args.aug_views) + 1))):
        data = PairImages(q.image_paths, m.image_paths, spec.image_size, spec.mean, spec.std,
                          transform=aug)
        loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler,
                            num_workers=args.workers, **loader_kw)
        s = _time_loop(loader, lambda b: _step(net, opt, crit, *b, device, amp, scaler),
                       args.steps, args.warmup, device)
        rows.append({'loop': 'images, ' + ('photo+geo every load' if aug else 'none'),
                     'aug_views': None, 's_per_step': round(s, 4), 'cache_fill_s': 0.0,
                     'cache_images': 0, 'cache_mb': 0.0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--root', default=os.path.join(tempfile.gettempdir(), 'vpr_bench_garden'))
    ap.add_argument('--stored-px', type=int, default=256)
    ap.add_argument('--image-size', type=int, nargs=2, default=(128, 128))
    ap.add_argument('--batch-size', type=int, default=32, help='pairs per step')
    ap.add_argument('--steps', type=int, default=12)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--prefetch', type=int, default=4)
    ap.add_argument('--device', default='auto')
    ap.add_argument('--aug-views', type=int, nargs='+', default=(0, 2, 4, 8),
                    help='augmented views per image to fill the cache with (0: clean only)')
    ap.add_argument('--no-augment', action='store_true', help='skip the augmentation rows')
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_train.json'))
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available()
                          else ('cpu' if args.device == 'auto' else args.device))
    amp = device.type == 'cuda'
    out = make_synthetic_garden(args.root, size_px=args.stored_px)
    q = load_traverse(out['train_query'])
    m = load_traverse(out['train_map'])
    lab = os.path.join(args.root, 'bench_labels.npz')
    generate_labels([q], [m], lab)
    spec = ModelSpec(image_size=tuple(args.image_size))
    n_pairs = (args.steps + args.warmup) * args.batch_size
    sampler = PairSampler(load_labels(lab), pairs_per_epoch=n_pairs, seed=0,
                          anchors=TraverseImages([q], spec.image_size).valid)
    data = PairImages(q.image_paths, m.image_paths, spec.image_size, spec.mean, spec.std)
    kw = {'persistent_workers': True, 'prefetch_factor': args.prefetch} if args.workers else {}
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, pin_memory=device.type == 'cuda', **kw)
    net = VPRNet(spec, pretrained=True)
    net.set_trainable_blocks(2)
    net.to(device, memory_format=torch.channels_last).train()  # as vpr-train
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    crit = PairLoss('gcl')

    # real loop: disk -> decode -> preprocess -> step
    it = iter(loader)
    first = None
    for _ in range(args.warmup):
        first = next(it)
        _step(net, opt, crit, *first, device, amp, scaler)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _step(net, opt, crit, *next(it), device, amp, scaler)
    _sync(device)
    t_real = (time.perf_counter() - t0) / args.steps

    # the same steps on one batch already on the device
    xa, xb, y = (t.to(device) for t in first)
    for _ in range(args.warmup):
        _step(net, opt, crit, xa, xb, y, device, amp, scaler)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _step(net, opt, crit, xa, xb, y, device, amp, scaler)
    _sync(device)
    t_mem = (time.perf_counter() - t0) / args.steps

    # data pipeline alone (no model), for the table
    t0 = time.perf_counter()
    seen = 0
    for batch in DataLoader(data, batch_size=args.batch_size, sampler=sampler,
                            num_workers=args.workers, **kw):
        seen += 1
        if seen == args.steps:
            break
    t_data = (time.perf_counter() - t0) / max(seen, 1)

    # the real loop on cached frozen-prefix features, and what filling the cache costs
    cut = net.frozen_prefix()
    t0 = time.perf_counter()
    q_feats = FrozenFeatures(net, cut, TraverseImages([q], spec.image_size), device,
                             workers=args.workers)
    m_feats = FrozenFeatures(net, cut, TraverseImages([m], spec.image_size), device,
                             workers=args.workers)
    t_fill = time.perf_counter() - t0
    n_cached = len(q_feats.feats) + len(m_feats.feats)
    it = iter(DataLoader(PairFeatures(q_feats, m_feats), batch_size=args.batch_size,
                         sampler=sampler))
    for _ in range(args.warmup):
        _step(net, opt, crit, *next(it), device, amp, scaler, cut)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _step(net, opt, crit, *next(it), device, amp, scaler, cut)
    _sync(device)
    t_cached = (time.perf_counter() - t0) / args.steps

    res = {
        'device': str(device), 'gpu': torch.cuda.get_device_name(0) if amp else None,
        'cpu_count': os.cpu_count(), 'torch': torch.__version__,
        'python': platform.python_version(),
        'backbone': spec.backbone, 'image_size': list(spec.image_size),
        'stored_px': args.stored_px, 'batch_pairs': args.batch_size, 'steps': args.steps,
        'workers': args.workers, 'prefetch': args.prefetch, 'amp': amp,
        'real_loop_s_per_step': round(t_real, 4), 'in_memory_s_per_step': round(t_mem, 4),
        'data_only_s_per_batch': round(t_data, 4),
        'real_pairs_per_s': round(args.batch_size / t_real, 1),
        'in_memory_pairs_per_s': round(args.batch_size / t_mem, 1),
        'data_only_pairs_per_s': round(args.batch_size / t_data, 1),
        'overhead_ratio': round(t_real / t_mem, 3), 'goal_ratio': 1.2,
        'cached_loop_s_per_step': round(t_cached, 4),
        'cached_pairs_per_s': round(args.batch_size / t_cached, 1),
        'feature_cache_speedup': round(t_real / t_cached, 2),
        'cache_fill_s': round(t_fill, 2), 'cache_images': n_cached,
        'cache_fill_img_per_s': round(n_cached / t_fill, 1),
        'cache_mb': round((q_feats.nbytes() + m_feats.nbytes()) / 2**20, 1),
    }
    print(f"training throughput on {res['device']} ({res['gpu'] or f'{os.cpu_count()} CPUs'}), "
          f"{spec.backbone} {args.image_size[0]}x{args.image_size[1]}, "
          f'{args.batch_size} pairs/step, {args.workers} workers')
    print(f"{'loop':<28}{'s/step':>10}{'pairs/s':>10}")
    for name, s, p in (('real (disk+preproc+step)', t_real, res['real_pairs_per_s']),
                       ('in memory (step only)', t_mem, res['in_memory_pairs_per_s']),
                       ('data only (no model)', t_data, res['data_only_pairs_per_s']),
                       ('cached frozen features', t_cached, res['cached_pairs_per_s'])):
        print(f'{name:<28}{s:>10.4f}{p:>10.1f}')
    print(f"overhead ratio real/in-memory: {res['overhead_ratio']:.3f} (goal <= 1.2)")
    print(f"feature cache: real loop {res['feature_cache_speedup']:.2f}x faster per step; "
          f"filled once in {t_fill:.1f} s ({res['cache_fill_img_per_s']:.0f} img/s, "
          f"{n_cached} images, {res['cache_mb']:.1f} MB)")
    if not args.no_augment:
        res['augment'] = _augment_rows(args, net, opt, crit, scaler, amp, device, sampler, q, m,
                                       spec, cut, kw)
        base = next(r for r in res['augment'] if r['loop'] == 'cached, none')
        print(f"augmentation ({args.batch_size} pairs/step, {base['cache_images']} images):")
        print(f"{'loop':<34}{'K':>3}{'s/step':>9}{'x none':>8}{'fill s':>8}{'cache MB':>10}")
        for r in res['augment']:
            k = '-' if r['aug_views'] is None else r['aug_views']
            print(f"{r['loop']:<34}{k:>3}{r['s_per_step']:>9.4f}"
                  f"{r['s_per_step'] / base['s_per_step']:>8.2f}{r['cache_fill_s']:>8.1f}"
                  f"{r['cache_mb']:>10.1f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
