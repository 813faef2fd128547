"""
Encoder cost on CPU or CUDA: bare forward vs ``Encoder.embed`` of 640x480 frames, batch 1/4/8.

Runs unchanged on either device (``--device auto`` picks CUDA when there is one). For the
shipped default model (ImageNet MobileNetV2 + GeM, 224x224) it times, per batch size:

* ``forward``: the network alone on an already preprocessed batch that is already on the
  device (channels_last, the encoder's precision), synchronised;
* ``embed``: what the node pays, ``Encoder.embed(list of 640x480 rgb8 frames)``: resize and
  normalise on the CPU, copy to the device, forward, descriptors back as numpy.

On CUDA both precisions are measured (fp32, and fp16 autocast, the encoder's default there).
Batches of 4 and 8 show what embedding several queued frames in one call saves per frame.
With ``--onnx`` (CPU only) the encoder's ``onnxruntime`` backend (the same network exported
to ONNX, run by ONNX Runtime's CPU provider) is timed the same way next to torch eager, and
the descriptors compared. ``--threads`` sets torch's (and so ONNX Runtime's) CPU threads.
Prints a table and writes bench/results/bench_gpu.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import cv2
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'test'))

from image_sequences import make_sequence  # noqa: E402

from vpr_ros.core.preprocess import preprocess_batch  # noqa: E402
from vpr_ros.model.encoder import build_encoder, Encoder  # noqa: E402

FRAME_HW = (480, 640)


def _frames(n: int) -> list[np.ndarray]:
    """Camera-like 640x480 rgb8 frames (the test sequence's views, upscaled)."""
    seq = make_sequence()
    return [cv2.resize(seq.frames[i % len(seq)], FRAME_HW[::-1], interpolation=cv2.INTER_LINEAR)
            for i in range(n)]


def _sync(enc: Encoder) -> None:
    if enc.device.type == 'cuda':
        torch.cuda.synchronize(enc.device)


def _forward_fn(enc: Encoder, frames: list[np.ndarray]):
    """Time the bare network on a batch already preprocessed and on the device."""
    spec = enc.spec
    x = preprocess_batch(frames, spec.image_size, 'rgb8', spec.mean, spec.std).to(enc.device)
    if enc.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> float:
        _sync(enc)
        t = time.perf_counter()
        if enc.backend == 'onnxruntime':
            enc.embed_tensor(x)  # the exported network's session run
        else:
            with torch.inference_mode(), torch.autocast(device_type=enc.device.type,
                                                        dtype=torch.float16, enabled=enc.fp16):
                enc.net(x)
        _sync(enc)
        return time.perf_counter() - t
    return run


def _embed_fn(enc: Encoder, frames: list[np.ndarray]):
    def run() -> float:
        t = time.perf_counter()
        enc.embed(frames, 'rgb8')  # numpy out: already synchronised
        return time.perf_counter() - t
    return run


def _interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run the timers alternately (a busy machine slows each alike); seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for i in range(repeats):
        for k in (names if i % 2 == 0 else names[::-1]):
            times[k].append(fns[k]())
    return times


def _ms(xs: list[float]) -> float:
    return round(1e3 * statistics.median(xs), 3)


def _measure(enc: Encoder, frames: list[np.ndarray], batches: list[int], repeats: int,
             warmup: int) -> list[dict]:
    rows = []
    for n in batches:
        batch = frames[:n]
        t = _interleaved({'forward': _forward_fn(enc, batch), 'embed': _embed_fn(enc, batch)},
                         repeats, warmup)
        fwd, emb = _ms(t['forward']), _ms(t['embed'])
        rows.append({
            'batch': n, 'backend': enc.backend, 'precision': 'fp16' if enc.fp16 else 'fp32',
            'forward_ms': fwd, 'embed_ms': emb,
            'forward_ms_per_frame': round(fwd / n, 3), 'embed_ms_per_frame': round(emb / n, 3),
            'embed_p90_ms': round(1e3 * float(np.percentile(t['embed'], 90)), 3),
            'embed_over_forward': round(emb / fwd, 3),
            'frames_per_s': round(1e3 * n / emb, 1),
        })
    return rows


def _print(rows: list[dict]) -> None:
    cols = ('backend', 'precision', 'batch', 'forward_ms', 'embed_ms', 'forward_ms_per_frame',
            'embed_ms_per_frame', 'embed_over_forward', 'frames_per_s')
    short = {'forward_ms_per_frame': 'fwd/frame', 'embed_ms_per_frame': 'embed/frame',
             'embed_over_forward': 'embed/fwd', 'frames_per_s': 'frames/s'}
    print(''.join(f'{short.get(c, c):>13}' for c in cols))
    for r in rows:
        print(''.join(f'{r[c]:>13}' for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda[:N]')
    parser.add_argument('--batches', default='1,4,8')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed calls per case (default 20 on CPU, 200 on CUDA)')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--onnx', action='store_true', help='also time ONNX Runtime (CPU)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and ONNX Runtime (0: torch default)')
    parser.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_gpu.json'))
    args = parser.parse_args()

    batches = [int(b) for b in args.batches.split(',')]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    enc = build_encoder('', device=args.device, batch_size=max(batches))
    cuda = enc.device.type == 'cuda'
    repeats = args.repeats or (200 if cuda else 20)
    frames = _frames(max(batches))
    load_before = os.getloadavg()
    rows = []
    for fp16 in ((False, True) if cuda else (False,)):
        enc.fp16 = fp16
        enc.warmup(batches)
        rows += _measure(enc, frames, batches, repeats, args.warmup)
    onnx = None
    if args.onnx and not cuda:
        # The shipped ONNX Runtime backend on the same network; descriptors compared.
        ort_enc = Encoder(enc.net, enc.fingerprint, device='cpu', batch_size=max(batches),
                          backend='onnxruntime')
        ort_enc.warmup(batches)
        rows += _measure(ort_enc, frames, batches, repeats, args.warmup)
        diff = np.abs(ort_enc.embed(frames) - enc.embed(frames)).max()
        onnx = {'max_abs_descriptor_diff': float(diff)}
    res = {
        'benchmark': 'encoder bare forward vs Encoder.embed, 640x480 rgb8 input',
        'model': enc.spec.tag(), 'fingerprint': enc.fingerprint, 'device': str(enc.device),
        'device_name': torch.cuda.get_device_name(enc.device) if cuda else platform.processor()
        or platform.machine(),
        'frame_hw': list(FRAME_HW), 'channels_last': enc.channels_last, 'repeats': repeats,
        'torch_threads': torch.get_num_threads(), 'rows': rows, 'onnxruntime': onnx,
        'loadavg_before': [round(v, 2) for v in load_before],
        'loadavg_after': [round(v, 2) for v in os.getloadavg()],
        'cpu_count': os.cpu_count(), 'python': platform.python_version(),
        'torch': torch.__version__, 'cuda': torch.version.cuda if cuda else None,
        'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
    _print(rows)
    if onnx:
        print(f'onnxruntime vs torch: max |descriptor difference| '
              f'{onnx["max_abs_descriptor_diff"]:.2e}')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, indent=2)
        f.write('\n')


if __name__ == '__main__':
    main()
