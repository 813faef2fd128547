"""
Inference encoder: numpy images in, float32 L2-normalised descriptors out.

``Encoder`` wraps a ``VPRNet`` (device choice, fp16 autocast and channels_last on CUDA,
batching) and carries the model's fingerprint, which the map manifest records so a map is never
searched with another model. ``build_encoder`` makes one from a model file or the built-in
default. The network itself lives in ``network.py``, the backbone table in ``backbones.py``;
their public names are re-exported here, where callers have always imported them from.
"""
import time
from typing import Sequence

import numpy as np
import torch

from vpr_ros.core.errors import VPRError
from vpr_ros.core.preprocess import preprocess_batch
from vpr_ros.model import onnx_backend
from vpr_ros.model.backbones import BACKBONES
from vpr_ros.model.imagenet import checkpoint_path as hub_checkpoint_path
from vpr_ros.model.model_file import load_model_and_fingerprint
from vpr_ros.model.network import (
    AvgPool,
    GeM,
    ModelSpec,
    PCAWhitening,
    POOLINGS,
    torchvision_to_trunk_state,
    VPRNet,
)
from vpr_ros.model.onnx_backend import OnnxForward

__all__ = ['AvgPool', 'BACKBONES', 'build_encoder', 'default_net', 'Encoder', 'GeM',
           'hub_checkpoint_path', 'ModelSpec', 'PCAWhitening', 'POOLINGS',
           'torchvision_to_trunk_state', 'VPRNet']


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


BACKENDS = ('torch', 'onnxruntime', 'auto')


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise VPRError(f'unknown encoder backend {backend!r}; use ' + ', '.join(BACKENDS))
    if backend == 'auto':
        return 'onnxruntime' if device.type == 'cpu' and onnx_backend.available() else 'torch'
    if backend == 'onnxruntime' and device.type != 'cpu':
        raise VPRError(f'backend onnxruntime runs on the CPU, not on {device}')
    return backend


class Encoder:
    """
    Inference wrapper: numpy images in, float32 L2-normalised descriptors out.

    It takes over ``net``: moves it to the device, puts it in eval mode and (by default)
    channels_last memory format, which measured faster on CPU as well as on CUDA. On CUDA it
    runs the trunk under fp16 autocast (``fp16=None`` means: on CUDA only; pooling and the
    L2 stay fp32) and lets cuDNN pick its fastest kernels for the fixed input size.
    ``embed`` of a list is the batch path: one preprocessing buffer and one forward per
    ``batch_size`` images, so several queued frames cost far less than one call each.

    ``backend``: 'torch' (eager), 'onnxruntime' (CPU only: the net exported once, here, and
    run by ONNX Runtime; same descriptors, faster on CPU) or 'auto' (onnxruntime on the CPU
    when it is installed, torch otherwise). The ONNX export is a snapshot: use it only for a
    network that no longer changes (``build_encoder``), never while training.
    """

    def __init__(self, net: VPRNet, fingerprint: str, device: str = 'auto',
                 batch_size: int = 32, channels_last: bool = True,
                 fp16: bool | None = None, backend: str = 'torch') -> None:
        self.device = _resolve_device(device)
        cuda = self.device.type == 'cuda'
        # fp16 on CPU is slower than fp32 and not what the map was built with: CUDA only.
        self.fp16 = cuda if fp16 is None else bool(fp16) and cuda
        self.channels_last = channels_last
        self.batch_size = max(1, int(batch_size))
        self.net = net.eval().to(self.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True  # one input size: tune once, reuse
        self.fingerprint = fingerprint
        self.backend = _resolve_backend(backend, self.device)
        self._onnx = OnnxForward(self.net) if self.backend == 'onnxruntime' else None

    @property
    def spec(self) -> ModelSpec:
        # Read from the net each time: whitening may be attached after the encoder is made.
        return self.net.spec

    @property
    def dim(self) -> int:
        return self.net.dim

    def embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed (N, 3, H, W) batch."""
        if self._onnx is not None:
            if self._onnx.dim != self.dim:
                raise VPRError('the network changed after its ONNX export; build a new Encoder')
            return self._onnx(batch.numpy())
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

    def embed_frames(self, frames: Sequence[tuple[np.ndarray, str]]
                     ) -> list[tuple[np.ndarray | None, float]]:
        """
        Embed (image, encoding) frames of mixed encodings, one forward per encoding.

        For the node's queued frames: on a GPU a batch costs little more than one frame.
        Returns per frame (descriptor, its share of the forward's seconds); (None, 0.0) where
        its encoding's forward refused an image (each such frame then gets `embed_one`, and so
        its own error).
        """
        groups: dict[str, list[int]] = {}
        for i, (_, encoding) in enumerate(frames):
            groups.setdefault(encoding, []).append(i)
        out: list[tuple[np.ndarray | None, float]] = [(None, 0.0)] * len(frames)
        for encoding, idx in groups.items():
            t0 = time.perf_counter()
            try:
                descs = self.embed([frames[i][0] for i in idx], encoding)
            except ValueError:  # VPRError/ImageError are ValueErrors: each frame on its own
                continue
            share = (time.perf_counter() - t0) / len(idx)
            for i, d in zip(idx, descs):
                out[i] = (d, share)
        return out

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run dummy batches so the first real frame does not pay cuDNN tuning and allocation."""
        h, w = self.spec.image_size
        for n in batch_sizes:
            self.embed_tensor(torch.zeros(int(n), 3, h, w))
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)


def default_net() -> tuple[VPRNet, str]:
    """Build the built-in model (ImageNet MobileNetV2 + GeM p=3, 224x224); give its fingerprint."""
    spec = ModelSpec()
    net = VPRNet(spec, pretrained=True)  # weights hash-checked against the backbone table
    return net, f'builtin:{spec.tag()}:{net.weights_sha256[:8]}'


def build_encoder(model_path: str = '', device: str = 'auto', batch_size: int = 32,
                  image_size: Sequence[int] | None = None, backend: str = 'torch') -> Encoder:
    """
    Build an encoder from a model file, or the built-in default when ``model_path`` is ''.

    ``image_size`` (h, w) overrides the model's input size. Descriptors then differ from the
    model's own, so the fingerprint gets an ``@HxW`` mark: a map made at one size is refused
    at another rather than searched with incomparable descriptors. ``backend``: see
    ``Encoder`` ('auto' takes ONNX Runtime on the CPU when installed; same fingerprint).
    """
    if not model_path:
        net, fingerprint = default_net()
    else:
        net, _, fingerprint = load_model_and_fingerprint(model_path)
    if image_size is not None:
        size = tuple(int(v) for v in image_size)
        if size != tuple(net.spec.image_size):
            net.set_image_size(size)  # ModelSpec validates it
            fingerprint = f'{fingerprint}@{size[0]}x{size[1]}'
    return Encoder(net, fingerprint, device=device, batch_size=batch_size, backend=backend)
