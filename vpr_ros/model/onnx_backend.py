"""
ONNX Runtime forward pass for a fixed (inference-only) ``VPRNet`` on the CPU.

On this project's 2-core machine ONNX Runtime's CPU provider ran the default MobileNetV2-GeM
1.5-2.5x faster than torch eager (channels_last), and degraded far less when the cores were
shared (``bench/bench_gpu.py --onnx``). The network is exported in memory when the encoder is
built: no ONNX file is cached or read back, so nothing but the hash-checked weights defines it.
The export is checked against torch on a probe batch before use; a mismatch is an error, never
silently different descriptors (the map fingerprint is the same for both backends).
"""
import io
import warnings

import numpy as np
import torch
from torch import nn

from vpr_ros.core.errors import VPRError

# Largest difference allowed between ONNX Runtime's and torch's descriptors (unit vectors).
TOLERANCE = 1e-4
OPSET = 17


def available() -> bool:
    """Tell whether ONNX export and ONNX Runtime are both importable."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _export(net: nn.Module, probe: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the TorchScript exporter's deprecation notices
        torch.onnx.export(net, (probe,), buf, dynamo=False, opset_version=OPSET,
                          input_names=['images'], output_names=['descriptors'],
                          dynamic_axes={'images': {0: 'n'}, 'descriptors': {0: 'n'}})
    return buf.getvalue()


class OnnxForward:
    """``net``'s forward pass as an ONNX Runtime CPU session: (N,3,H,W) float32 -> (N, dim)."""

    def __init__(self, net: nn.Module, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise VPRError(f'backend onnxruntime requested but it is not installed: {e}') from e
        if next(net.parameters()).device.type != 'cpu':
            raise VPRError('backend onnxruntime runs on the CPU; the network is not on it')
        h, w = net.spec.image_size
        probe = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 4 - 2
        was_training = net.training
        net.eval()
        try:
            model = _export(net, probe)
            with torch.inference_mode():
                reference = net(probe).float().numpy()
        finally:
            net.train(was_training)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(model, opts, providers=['CPUExecutionProvider'])
        self.dim = int(reference.shape[1])
        err = float(np.abs(self(probe.numpy()) - reference).max())
        if not err <= TOLERANCE:
            raise VPRError(f'ONNX export of {net.spec.tag()} differs from torch by {err:.2e} '
                           f'(> {TOLERANCE}); use backend torch')

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the exported network on a preprocessed batch."""
        return self._session.run(None, {'images': np.ascontiguousarray(x, dtype=np.float32)})[0]
