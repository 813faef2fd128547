"""
What `vpr-train` reads besides images: traverses, ψ labels, the validation set, the cache cut.

The validation positives come from `vpr_ros.core.psi` (the evaluation's own rule), and the
frozen-feature cache is used only where it fits the memory budget.
"""
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from vpr_ros.core.errors import VPRError
from vpr_ros.core.psi import POSITIVE_PSI
from vpr_ros.model.encoder import ModelSpec, VPRNet
from vpr_ros.training.fit.distributed import barrier, Dist


def load_train_labels(args, queries, maps, dist: Dist):
    """ψ (query × map, or within the queries): a given file, vpr-labels' file, or computed."""
    from vpr_ros.training.data import labels as lab

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
    barrier(dist)
    return lab.load_labels(path), path


class ValSet:
    """Validation images and their ψ > POSITIVE_PSI positives, embedded by the net in training."""

    def __init__(self, maps, queries, spec: ModelSpec, fov_deg: float, radius: float) -> None:
        from vpr_ros.core.psi import positives
        from vpr_ros.training.data.dataset import concat_poses, TraverseImages

        self.map_images = TraverseImages(maps, spec.image_size, mean=spec.mean, std=spec.std)
        self.query_images = TraverseImages(queries, spec.image_size, mean=spec.mean,
                                           std=spec.std)
        mp = concat_poses(maps)[self.map_images.valid]
        qp = concat_poses(queries)[self.query_images.valid]
        self.positives = positives(mp, qp, POSITIVE_PSI, fov_deg, radius)
        self.cached: tuple | None = None   # (map, query) FrozenFeatures, see use_cache

    def n_images(self) -> int:
        return len(self.map_images.paths) + len(self.query_images.paths)

    def use_cache(self, net, cut: int, device, workers: int, progress: bool = True,
                  store: str = '') -> None:
        """Embed from cached frozen-prefix features from now on (the prefix never changes)."""
        from vpr_ros.training.fit.feature_cache import FrozenFeatures
        self.cached = tuple(FrozenFeatures(net, cut, images, device, workers=workers, desc=desc,
                                           progress=progress, store=store)
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
    from vpr_ros.training.fit.augment import parse_augment
    from vpr_ros.training.fit.feature_cache import cache_bytes

    cut = net.frozen_prefix()
    if args.feature_cache == 'off' or cut == 0:
        return 0
    if dist.ddp:
        if args.feature_cache == 'on':
            raise VPRError('--feature-cache on needs a single process; under torchrun use auto '
                           'or off')
        return 0
    n = len(q_images.paths) + (0 if m_images is q_images else len(m_images.paths))
    n *= 1 + (args.aug_views if parse_augment(args.augment) - {'featgeo'} else 0)
    n += val.n_images() if val is not None else 0
    need = cache_bytes(net, cut, net.spec.image_size, n)
    if args.feature_cache == 'auto' and need > args.cache_budget_gb * (1 << 30):
        print(f'vpr-train: feature cache off: {need / (1 << 30):.1f} GB for {n} image views is '
              f'over --cache-budget-gb {args.cache_budget_gb:g}', flush=True)
        return 0
    return cut


