"""
Frozen-trunk feature cache: compute the frozen blocks once per image, train only the rest.

GCL training updates only the last backbone blocks; the frozen ones run in eval mode, so what
they output for an image never changes during training unless the image does. Yet that
forward pass is most of a training step (MobileNetV2 at 224x224 with two blocks trained: 2.6 s
of a 32-pair step on 2 CPU cores, against 0.26 s for the trained tail). So every image goes
through the frozen prefix once, its output is kept in memory, and each step runs
`VPRNet.forward_from` on it: the same computation, in a tenth of the time. Validation uses the
same cache. Only for a single process (under DDP each rank would cache every image) and only
when the cache fits the memory budget; otherwise training reads images as before.

Augmentation (`training.fit.augment`) keeps the cache: each image is cached as several views
(the clean image and K augmented versions, each through the frozen blocks once), and
`PairFeatures` serves a view drawn at random per image and step. The cache then costs K + 1 times
the memory and filling time of one view; a step costs the same. With ``--cache-dir`` every view
is also stored on disk, keyed by what determines it (the frozen weights, the images' paths, sizes
and times, the input size and normalisation, the view's transform), so other runs on the same
images (the other loss, another lr, fewer views) read it instead of filling it again.
"""
import hashlib
import json
import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vpr_ros.model.encoder import VPRNet
from vpr_ros.training.fit.checkpoint import atomic_save

STORE_FORMAT = 'vpr_ros.frozen_features'


def prefix_shape(net: VPRNet, cut: int, size_hw: Sequence[int]) -> tuple[int, ...]:
    """(C, H, W) the first `cut` trunk children output for one image of size_hw."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            device = next(net.parameters()).device
            out = net.trunk_prefix(torch.zeros(1, 3, *size_hw, device=device), cut)
    finally:
        net.train(was)
    return tuple(out.shape[1:])


def cache_bytes(net: VPRNet, cut: int, size_hw: Sequence[int], n_images: int) -> int:
    """Memory the cache of n_images would take (float32 on the CPU)."""
    return int(np.prod(prefix_shape(net, cut, size_hw))) * 4 * int(n_images)


class FrozenFeatures:
    """
    The frozen prefix's output for every image of a `TraverseImages`, by image index.

    Filled in batches of 16 in channels_last: on 2 CPU cores that measured 53 img/s for the
    MobileNetV2 prefix at 224x224, against 21 img/s in contiguous batches of 64.

    `ok[i]` is False for an image that could not be read when the cache was filled (it is
    never sampled: such files are left out of `TraverseImages.valid` up front; one that broke
    after that check has no features, and `PairFeatures` makes its pairs zero-loss).

    ``views``: the image transform of each cached view (``transform(image, index)``, None: the
    image as it is; a transform with a ``key()`` can be stored); `view_feats` is (views, images,
    C, H, W), `feats` the first view's. ``store``: a folder where each view is read from or
    written to (`view_key`); `loaded` counts the views read from it.
    """

    def __init__(self, net: VPRNet, cut: int, images, device: torch.device,
                 batch_size: int = 16, workers: int = 0, desc: str = 'cache',
                 progress: bool = True, views: Sequence = (None,), store: str = '') -> None:
        self.cut = int(cut)
        shape = prefix_shape(net, cut, images.size_hw)
        views = list(views) or [None]
        self.view_feats = torch.zeros((len(views), len(images.paths), *shape),
                                      dtype=torch.float32)
        self.feats = self.view_feats[0]
        self.ok = torch.zeros(len(images.paths), dtype=torch.bool)
        self.loaded = 0
        base = _base_key(net, cut, images) if store else ''
        was = net.training
        net.eval()
        try:
            for v, transform in enumerate(views):
                path = view_path(store, base, transform) if store else ''
                if path and self._load(path, v):
                    continue
                served = images if transform is None else images.with_transform(transform)
                loader = DataLoader(served, batch_size=batch_size, num_workers=workers)
                label = desc if len(views) == 1 else f'{desc} view {v + 1}/{len(views)}'
                self._fill(net, loader, self.view_feats[v], device, label, progress, v == 0)
                if path:
                    # clone: a slice would save the storage of every view with it
                    atomic_save({'format': STORE_FORMAT, 'feats': self.view_feats[v].clone(),
                                 'ok': self.ok.clone()}, path)
        finally:
            net.train(was)

    def _load(self, path: str, v: int) -> bool:
        """Read view v from the store; False (and it is filled again) when absent or unfit."""
        if not os.path.isfile(path):
            return False
        try:
            data = torch.load(path, map_location='cpu', weights_only=True)
            feats, ok = data['feats'], data['ok']
            if data.get('format') != STORE_FORMAT or feats.shape != self.view_feats[v].shape:
                return False
        except (OSError, RuntimeError, KeyError, TypeError, AttributeError):
            return False
        self.view_feats[v] = feats
        if v == 0:
            self.ok[:] = ok
        self.loaded += 1
        return True

    def _fill(self, net: VPRNet, loader, out: torch.Tensor, device: torch.device, desc: str,
              progress: bool, mark_ok: bool) -> None:
        with torch.no_grad():
            for x, idx in tqdm(loader, desc=desc, unit='batch', leave=False,
                               disable=not progress):
                with torch.autocast(device.type, dtype=torch.float16,
                                    enabled=device.type == 'cuda'):
                    x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
                    f = net.trunk_prefix(x, self.cut)
                out[idx] = f.float().cpu()
                if mark_ok:
                    self.ok[idx] = True

    @property
    def n_views(self) -> int:
        return int(self.view_feats.shape[0])

    def nbytes(self) -> int:
        return self.view_feats.element_size() * self.view_feats.nelement()

    def get(self, i: int) -> torch.Tensor:
        """Image i's features in one of its views, drawn with torch's generator (seeded)."""
        v = int(torch.randint(0, self.n_views, ())) if self.n_views > 1 else 0
        return self.view_feats[v, i]


def _base_key(net: VPRNet, cut: int, images) -> str:
    """Hash of what every view of these images shares: frozen weights, files, size, norm."""
    h = hashlib.sha256()
    for name, t in net.backbone[:cut].state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    files = []
    for p in images.paths:
        try:
            st = os.stat(p)
            files.append([p, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([p, None, None])
    h.update(json.dumps({'cut': int(cut), 'size_hw': list(images.size_hw), 'files': files,
                         'norm': getattr(images, '_norm', {})}, default=str).encode())
    return h.hexdigest()


def view_key(transform) -> dict | None:
    """Return what determines a view's images (None: the transform cannot say)."""
    if transform is None:
        return {'view': 'clean'}
    key = getattr(transform, 'key', None)
    return key() if callable(key) else None


def view_path(store: str, base: str, transform) -> str:
    """Return the file of one view in the store ('' when the transform has no key)."""
    key = view_key(transform)
    if key is None:
        return ''
    digest = hashlib.sha256((base + json.dumps(key, sort_keys=True, default=str)).encode())
    os.makedirs(store, exist_ok=True)
    return os.path.join(store, f'view_{digest.hexdigest()[:24]}.pt')


class PairFeatures(Dataset):
    """
    Pairs as cached features: (features a, features b, float32 label), like `PairImages`.

    With several cached views, each image of a pair comes in a view of its own, drawn per item.
    """

    def __init__(self, anchors: FrozenFeatures, partners: FrozenFeatures) -> None:
        self.anchors = anchors
        self.partners = partners

    def __len__(self) -> int:
        return len(self.anchors.feats)

    def __getitem__(self, item: tuple[int, int, float]):
        a, b, label = int(item[0]), int(item[1]), float(item[2])
        fa, fb = self.anchors.get(a), self.partners.get(b)
        if not self.anchors.ok[a]:      # image with itself, label 1: zero loss, as PairImages
            return fb, fb, torch.tensor(1.0)
        if not self.partners.ok[b]:
            return fa, fa, torch.tensor(1.0)
        return fa, fb, torch.tensor(label, dtype=torch.float32)
