"""
Image encoder: a CNN trunk cut at its last conv block, GeM/avg pooling, L2, optional whitening.

``VPRNet`` is the trainable network shared by training and the node; ``Encoder`` wraps one for
inference (device choice, fp16 on CUDA, batching, numpy in and out) and carries the model's
fingerprint, which the map manifest records so a map is never searched with another model.
"""
from collections import OrderedDict
import dataclasses
from dataclasses import dataclass
import hashlib
import os
import socket
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F  # noqa: N812
import torchvision

from vpr_ros.core.errors import ModelFileError, VPRError
from vpr_ros.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_batch

BACKBONES = ('mobilenet_v2', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
             'densenet121', 'densenet161')
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
        if self.backbone not in BACKBONES:
            raise VPRError(f'unknown backbone {self.backbone!r}; supported: '
                           + ', '.join(BACKBONES))
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


def _weights_enum(backbone: str):
    """Torchvision's ImageNet weights entry for ``backbone`` (the ``weights=`` API)."""
    return torchvision.models.get_model_weights(backbone).IMAGENET1K_V1


def hub_checkpoint_path(backbone: str) -> str:
    """Where torchvision's weights API keeps (or would download) ``backbone``'s weights."""
    url = _weights_enum(backbone).url
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urlparse(url).path))


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    """Quick TCP probe, so a missing download fails in seconds instead of hanging."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _torchvision_model(backbone: str, pretrained: bool) -> nn.Module:
    ctor = getattr(torchvision.models, backbone)
    if not pretrained:
        return ctor(weights=None)
    weights = _weights_enum(backbone)
    path = hub_checkpoint_path(backbone)
    if not os.path.exists(path) and not _can_reach(weights.url):
        raise ModelFileError(
            f'ImageNet weights for {backbone} are not available offline ({path} is missing) '
            f'and {weights.url} cannot be reached. Put the file there, pass a local '
            f'checkpoint, or use pretrained=False (random init).')
    try:
        return ctor(weights=weights, progress=False)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f'could not load ImageNet weights for {backbone} '
                             f'({path}): {e}') from e


def _trunk(backbone: str, model: nn.Module) -> tuple[nn.Sequential, list[list[str]], int]:
    """
    Cut a torchvision classifier at its last conv block.

    Returns the trunk (its parameter names match torchvision's, less the ``features.`` prefix,
    so checkpoints map over directly), its blocks as lists of child names (the unit
    ``set_trainable_blocks`` counts in) and the number of output channels.
    """
    if backbone == 'mobilenet_v2':
        trunk = model.features
        blocks = [[name] for name, _ in trunk.named_children()]
        return trunk, blocks, model.last_channel
    if backbone.startswith('resnet'):
        names = ['conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
        trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
        blocks = [names[:4], ['layer1'], ['layer2'], ['layer3'], ['layer4']]
        return trunk, blocks, model.fc.in_features
    # densenet: features end with norm5 and torchvision applies a ReLU in forward(); keep it.
    children = OrderedDict(model.features.named_children())
    children['relu5'] = nn.ReLU(inplace=False)
    trunk = nn.Sequential(children)
    blocks = [['conv0', 'norm0', 'relu0', 'pool0']]
    for i in (1, 2, 3):
        blocks.append([f'denseblock{i}', f'transition{i}'])
    blocks.append(['denseblock4', 'norm5', 'relu5'])
    return trunk, blocks, model.classifier.in_features


def torchvision_to_trunk_state(backbone: str, state: dict) -> dict:
    """Map a torchvision classifier's state_dict onto our trunk's parameter names."""
    out = {}
    for k, v in state.items():
        if backbone.startswith('resnet'):
            if not k.startswith('fc.'):
                out[k] = v
        elif k.startswith('features.'):
            out[k[len('features.'):]] = v
    return out


class VPRNet(nn.Module):
    """Backbone trunk -> pooling -> L2 [-> PCA-whitening -> L2]; one global descriptor."""

    def __init__(self, spec: ModelSpec | None = None, pretrained: bool = False,
                 checkpoint: str = '') -> None:
        """
        Build the network for ``spec``.

        ``pretrained`` loads torchvision's ImageNet weights (hub cache or download);
        ``checkpoint`` instead loads a local torchvision classifier state_dict file. Neither
        means random init. Whitening is attached later with ``set_whitening``, because it is
        fitted on descriptors this network produces.
        """
        super().__init__()
        spec = dataclasses.replace(spec or ModelSpec(), whitening_dim=None)
        self._spec = spec
        model = _torchvision_model(spec.backbone, pretrained and not checkpoint)
        if checkpoint:
            try:
                state = torch.load(checkpoint, map_location='cpu', weights_only=True)
            except Exception as e:
                raise ModelFileError(f'cannot read backbone checkpoint {checkpoint}: {e}') from e
            if isinstance(state, dict) and 'state_dict' in state:
                state = state['state_dict']
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError) as e:
                raise ModelFileError(f'checkpoint {checkpoint} does not fit {spec.backbone}: '
                                     f'{e}') from e
        self.backbone, self._blocks, self.feature_dim = _trunk(spec.backbone, model)
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


def _resolve_device(device: str) -> torch.device:
    if device in ('', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise VPRError(f'invalid device {device!r}: use auto, cpu or cuda[:N]') from e
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise VPRError(f'device {device!r} requested but CUDA is not available')
    if dev.type not in ('cpu', 'cuda'):
        raise VPRError(f'unsupported device {device!r}: use auto, cpu or cuda[:N]')
    return dev


class Encoder:
    """
    Inference wrapper: numpy images in, float32 L2-normalised descriptors out.

    It takes over ``net``: moves it to the device, puts it in eval mode and (by default)
    channels_last memory format, which measured faster on CPU as well as on CUDA.
    """

    def __init__(self, net: VPRNet, fingerprint: str, device: str = 'auto',
                 batch_size: int = 32, channels_last: bool = True) -> None:
        self.device = _resolve_device(device)
        self.fp16 = self.device.type == 'cuda'
        self.channels_last = channels_last
        self.batch_size = max(1, int(batch_size))
        self.net = net.eval().to(self.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.fingerprint = fingerprint

    @property
    def spec(self) -> ModelSpec:
        # Read from the net each time: whitening may be attached after the encoder is made.
        return self.net.spec

    @property
    def dim(self) -> int:
        return self.net.dim

    def embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed (N, 3, H, W) batch."""
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16,
                                enabled=self.fp16):
                out = self.net(x)
            return out.float().cpu().numpy()

    def embed(self, images: Sequence[np.ndarray] | np.ndarray,
              encoding: str = 'rgb8') -> np.ndarray:
        """Embed images into an (N, dim) float32 array of unit-norm rows."""
        n = len(images)
        out = np.empty((n, self.dim), dtype=np.float32)
        spec = self.spec
        for i in range(0, n, self.batch_size):
            chunk = images[i:i + self.batch_size]
            batch = preprocess_batch(chunk, spec.image_size, encoding, spec.mean, spec.std)
            if self.device.type == 'cuda':
                batch = batch.pin_memory()
            out[i:i + len(chunk)] = self.embed_tensor(batch)
        return out

    def embed_one(self, image: np.ndarray, encoding: str = 'rgb8') -> np.ndarray:
        """Embed one image into a (dim,) float32 unit vector."""
        return self.embed([image], encoding)[0]


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def default_net() -> tuple[VPRNet, str]:
    """Build the built-in model (ImageNet MobileNetV2 + GeM p=3, 224x224); give its fingerprint."""
    spec = ModelSpec()
    net = VPRNet(spec, pretrained=True)
    fingerprint = f'builtin:{spec.tag()}:{_file_sha256(hub_checkpoint_path(spec.backbone))[:8]}'
    return net, fingerprint


def build_encoder(model_path: str = '', device: str = 'auto', batch_size: int = 32,
                  image_size: Sequence[int] | None = None) -> Encoder:
    """
    Build an encoder from a model file, or the built-in default when ``model_path`` is ''.

    ``image_size`` (h, w) overrides the model's input size. Descriptors then differ from the
    model's own, so the fingerprint gets an ``@HxW`` mark: a map made at one size is refused
    at another rather than searched with incomparable descriptors.
    """
    if not model_path:
        net, fingerprint = default_net()
    else:
        # Imported here: model_file imports this module.
        from vpr_ros.model.model_file import load_model_and_fingerprint
        net, _, fingerprint = load_model_and_fingerprint(model_path)
    if image_size is not None:
        size = tuple(int(v) for v in image_size)
        if size != tuple(net.spec.image_size):
            net.set_image_size(size)  # ModelSpec validates it
            fingerprint = f'{fingerprint}@{size[0]}x{size[1]}'
    return Encoder(net, fingerprint, device=device, batch_size=batch_size)
