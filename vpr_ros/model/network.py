"""
The trainable network: a backbone trunk (from the backbone table), GeM/avg pooling, L2.

``VPRNet`` is shared by training and the node; ``ModelSpec`` is everything besides the weights
needed to rebuild one and feed it images (what the model file stores).
"""
import dataclasses
from dataclasses import dataclass
import io
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F  # noqa: N812

from vpr_ros.core.atomic_io import read_regular
from vpr_ros.core.errors import ModelFileError, VPRError
from vpr_ros.core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.model import backbones, imagenet
from vpr_ros.model.backbones import BACKBONES  # noqa: F401 (re-exported)

POOLINGS = ('gem', 'avg')


@dataclass
class ModelSpec:
    """Everything besides the weights needed to rebuild a network and feed it images."""

    backbone: str = 'mobilenet_v2'
    pooling: str = 'gem'
    gem_p: float = 3.0
    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    whitening_dim: int | None = None

    def __post_init__(self) -> None:
        backbones.get(self.backbone)  # a clear error listing the supported ones
        if self.pooling not in POOLINGS:
            raise VPRError(f'unknown pooling {self.pooling!r}; supported: gem, avg')
        self.gem_p = float(self.gem_p)
        if not self.gem_p > 0:
            raise VPRError(f'gem_p must be > 0, got {self.gem_p}')
        try:
            h, w = (int(v) for v in self.image_size)
        except (TypeError, ValueError):
            raise VPRError(f'image_size must be (h, w), got {self.image_size!r}') from None
        if h < 32 or w < 32:
            raise VPRError(f'image_size must be at least 32x32, got {self.image_size!r}')
        self.image_size = (h, w)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise VPRError(f'mean/std must be 3 values with std > 0, got {self.mean}, {self.std}')
        if self.whitening_dim is not None:
            self.whitening_dim = int(self.whitening_dim)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (lists, floats), as stored in the model file."""
        d = dataclasses.asdict(self)
        d['image_size'] = list(self.image_size)
        d['mean'] = list(self.mean)
        d['std'] = list(self.std)
        return d

    def tag(self) -> str:
        """Short human-readable summary, e.g. ``mobilenet_v2-gem3-224x224``."""
        pool = f'gem{self.gem_p:g}' if self.pooling == 'gem' else 'avg'
        t = f'{self.backbone}-{pool}-{self.image_size[0]}x{self.image_size[1]}'
        return t + (f'-w{self.whitening_dim}' if self.whitening_dim else '')


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.) with a learnable exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The clamps keep pow() defined for non-positive activations and p away from zero.
        # Dividing by the per-channel max first (GeM is positively homogeneous, so it is
        # multiplied back after) keeps x**p finite for large p: 6**60 overflows float32.
        p = self.p.clamp(min=1e-3)
        x = x.clamp(min=self.eps)
        m = x.detach().amax(dim=(2, 3), keepdim=True)
        return (F.adaptive_avg_pool2d((x / m).pow(p), 1).pow(1.0 / p) * m).flatten(1)

    def extra_repr(self) -> str:
        return f'p={float(self.p.detach()):.4f}, eps={self.eps}'


class AvgPool(nn.Module):
    """Global average pooling, (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class PCAWhitening(nn.Module):
    """Fixed (not trained) PCA-whitening: ``(x - mean) @ proj.T``, stored as buffers."""

    def __init__(self, mean: torch.Tensor, proj: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer('mean', mean.detach().float().clone())
        self.register_buffer('proj', proj.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x - self.mean, self.proj)


def _load_local_checkpoint(model: nn.Module, path: str, entry: backbones.Backbone) -> None:
    """Load a user's torchvision classifier state_dict (``weights_only``: data, never code)."""
    try:
        data = read_regular(path, backbones.MAX_WEIGHTS_BYTES)   # never a FIFO or a device
        state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as e:
        raise ModelFileError(f'cannot read backbone checkpoint {path}: {e}') from e
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    try:
        model.load_state_dict(entry.fix_state(state))
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelFileError(f'checkpoint {path} does not fit {entry.name}: {e}') from e


def torchvision_to_trunk_state(backbone: str, state: dict) -> dict:
    """Map a torchvision classifier's state_dict onto our trunk's parameter names."""
    return backbones.get(backbone).to_trunk_state(state)


class VPRNet(nn.Module):
    """Backbone trunk -> pooling -> L2 [-> PCA-whitening -> L2]; one global descriptor."""

    def __init__(self, spec: ModelSpec | None = None, pretrained: bool = False,
                 checkpoint: str = '') -> None:
        """
        Build the network for ``spec``.

        ``pretrained`` loads the backbone's ImageNet weights (hub cache, sha256 checked
        against the backbone table, ``weights_only``); ``checkpoint`` instead loads a local
        torchvision classifier state_dict file. Neither means random init. Whitening is
        attached later with ``set_whitening``, because it is fitted on descriptors this
        network produces. ``weights_sha256`` is the ImageNet file's hash (None otherwise).
        """
        super().__init__()
        spec = dataclasses.replace(spec or ModelSpec(), whitening_dim=None)
        self._spec = spec
        entry = backbones.get(spec.backbone)
        model = entry.build()
        self.weights_sha256: str | None = None
        if checkpoint:
            _load_local_checkpoint(model, checkpoint, entry)
        elif pretrained:
            self.weights_sha256 = imagenet.load_into(model, spec.backbone)
        self.backbone, self._blocks = entry.cut(model)
        self.feature_dim = entry.channels
        self.pool = GeM(spec.gem_p) if spec.pooling == 'gem' else AvgPool()
        self.whitening: PCAWhitening | None = None
        self._frozen: set[str] = set()

    @property
    def spec(self) -> ModelSpec:
        """The spec as it stands now (current GeM p, whitening dimension)."""
        p = float(self.pool.p.detach()) if isinstance(self.pool, GeM) else self._spec.gem_p
        wdim = None if self.whitening is None else int(self.whitening.proj.shape[0])
        return dataclasses.replace(self._spec, gem_p=p, whitening_dim=wdim)

    def set_image_size(self, image_size: Sequence[int]) -> None:
        """Feed images at another (h, w): a fully convolutional trunk takes any size."""
        self._spec = dataclasses.replace(self._spec, image_size=tuple(image_size))

    @property
    def dim(self) -> int:
        """Descriptor dimension: the trunk's channels, or the whitening's output size."""
        return self.feature_dim if self.whitening is None else int(self.whitening.proj.shape[0])

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def frozen_prefix(self) -> int:
        """Count the leading trunk children that are frozen: their output can be cached."""
        k = 0
        for name, _ in self.backbone.named_children():
            if name not in self._frozen:
                break
            k += 1
        return k

    def trunk_prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Output of the first ``stop`` trunk children (what ``forward_from`` continues)."""
        return self.backbone[:stop](x)

    def forward_from(self, feats: torch.Tensor, start: int) -> torch.Tensor:
        """Finish ``forward`` from the output of the first ``start`` trunk children."""
        # forward() itself (start 0) runs the trunk as it is, not a slice rebuilt every frame
        feats = (self.backbone[start:] if start else self.backbone)(feats)
        # Pooling and normalisation in fp32 even under autocast: x**p overflows fp16.
        with torch.autocast(device_type=feats.device.type, enabled=False):
            desc = F.normalize(self.pool(feats.float()), dim=1)
            if self.whitening is not None:
                desc = F.normalize(self.whitening(desc), dim=1)
        return desc

    def set_whitening(self, mean, proj) -> None:
        """Attach PCA-whitening (mean (D,), proj (out_dim, D)); ``None`` removes it."""
        if mean is None or proj is None:
            self.whitening = None
            return
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        proj = torch.as_tensor(np.asarray(proj, dtype=np.float32))
        if mean.shape != (self.feature_dim,) or proj.ndim != 2 \
                or proj.shape[1] != self.feature_dim or proj.shape[0] < 1:
            raise VPRError(f'whitening must be mean ({self.feature_dim},) and proj '
                           f'(out_dim, {self.feature_dim}); got {tuple(mean.shape)}, '
                           f'{tuple(proj.shape)}')
        device = next(self.parameters()).device
        self.whitening = PCAWhitening(mean, proj).to(device)

    def set_trainable_blocks(self, n: int) -> None:
        """
        Train only the last ``n`` backbone blocks (and GeM's p); freeze the rest.

        Frozen blocks also stay in eval mode under ``train()``, so their BatchNorm statistics
        do not drift on small fine-tuning batches. ``n < 0`` or ``n >= num_blocks`` trains all.
        """
        n = len(self._blocks) if n < 0 else min(int(n), len(self._blocks))
        trainable = {name for block in self._blocks[len(self._blocks) - n:] for name in block}
        self._frozen = set()
        for name, module in self.backbone.named_children():
            on = name in trainable
            for p in module.parameters():
                p.requires_grad_(on)
            if not on:
                self._frozen.add(name)
        for p in self.pool.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> 'VPRNet':
        super().train(mode)
        for name, module in self.backbone.named_children():
            if name in self._frozen:
                module.eval()
        return self
