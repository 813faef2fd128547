"""
Per-frame cost of the loop detector against the encoder's bare forward pass (CPU).

The detector must add little to the network itself: goal total / forward <= 1.15 for the
default 224x224 MobileNetV2, batch 1, CPU. Both are timed in one process, interleaved (so a
busy machine slows both alike), and medians are reported with a per-stage breakdown
(preprocess, forward, search, verification, add). Writes bench/results/bench_core.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'test'))

from image_sequences import make_sequence  # noqa: E402

from vpr_ros.core.detector import DetectorConfig, LoopDetector  # noqa: E402
from vpr_ros.core.preprocess import preprocess_batch  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.model.encoder import build_encoder  # noqa: E402

GOAL = 1.15
S = 1_000_000_000


def _prefill(place_map: PlaceMap, n: int, dim: int, seed: int = 0) -> None:
    """N keyframes with non-negative unit descriptors (like ReLU features), long ago."""
    rng = np.random.default_rng(seed)
    descs = np.abs(rng.standard_normal((n, dim))).astype(np.float32)
    descs /= np.linalg.norm(descs, axis=1, keepdims=True)
    for i, d in enumerate(descs):
        place_map.add(d, i * S // 10, pose=np.r_[100.0 + i, 0, 0, 0, 0, 0, 1], frame_id='old')


def _ms(xs) -> float:
    return round(1e3 * statistics.median(xs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--repeats', type=int, default=300)
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--map-size', type=int, default=1000)
    parser.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_core.json'))
    args = parser.parse_args()

    load_before = os.getloadavg()
    enc = build_encoder('', device='cpu')
    spec = enc.spec
    seq = make_sequence()
    place_map = PlaceMap(enc.dim, enc.fingerprint)
    _prefill(place_map, args.map_size, enc.dim)
    # Without verification, as always measured here: the prefilled keyframes have no features.
    det = LoopDetector(enc, place_map, DetectorConfig(geometric_verification=False))
    x = preprocess_batch([seq.frames[0]], spec.image_size, 'rgb8', spec.mean, spec.std)
    x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            enc.net(x)
        return time.perf_counter() - t

    stamp = [10_000 * S]

    def frame(i: int):
        k = i % len(seq)
        stamp[0] += S // 2
        return det.process(seq.frames[k], stamp[0], 'rgb8', seq.pose(k), frame_id='cam')

    def prep(i: int) -> float:
        t = time.perf_counter()
        preprocess_batch([seq.frames[i % len(seq)]], spec.image_size, 'rgb8', spec.mean,
                         spec.std)
        return time.perf_counter() - t

    for i in range(args.warmup):
        forward()
        frame(i)
    fwd, total, embed, search, verify, add, pre = [], [], [], [], [], [], []
    n_kf = 0
    kf_add = []
    for i in range(args.repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate so neither always runs first
        for which in order:
            if which == 0:
                fwd.append(forward())
            else:
                r = frame(i)
                total.append(r.t_total_s)
                embed.append(r.t_embed_s)
                search.append(r.t_search_s)
                verify.append(r.t_verify_s)
                add.append(r.t_add_s)
                if r.is_keyframe:
                    n_kf += 1
                    kf_add.append(r.t_add_s)
        pre.append(prep(i))
    load_after = os.getloadavg()

    ratio = statistics.median(total) / statistics.median(fwd)
    res = {
        'benchmark': 'detector per-frame total vs pure encoder forward',
        'model': spec.tag(), 'device': 'cpu', 'batch': 1,
        'torch_threads': torch.get_num_threads(), 'frame_hw': list(seq.frames[0].shape[:2]),
        'map_size_start': args.map_size, 'map_size_end': len(place_map),
        'repeats': args.repeats, 'keyframes_added': n_kf,
        'median_ms': {
            'forward_pure': _ms(fwd), 'detector_total': _ms(total),
            'preprocess': _ms(pre), 'embed_one (preprocess+forward+copy)': _ms(embed),
            'search (PlaceMap.search + threshold)': _ms(search),
            'consistency+keyframe decision+verify': _ms(verify),
            'results+add (all frames)': _ms(add),
            'add (keyframes only)': _ms(kf_add) if kf_add else None,
            'detector_overhead (total-embed)': _ms([t - e for t, e in zip(total, embed)]),
        },
        'p90_ms': {'forward_pure': round(1e3 * float(np.percentile(fwd, 90)), 3),
                   'detector_total': round(1e3 * float(np.percentile(total, 90)), 3)},
        'ratio_total_over_forward': round(ratio, 4), 'goal': GOAL, 'meets_goal': ratio <= GOAL,
        'loadavg_before': [round(v, 2) for v in load_before],
        'loadavg_after': [round(v, 2) for v in load_after],
        'cpu_count': os.cpu_count(), 'machine': platform.machine(),
        'python': platform.python_version(), 'torch': torch.__version__,
        'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
    print(f'{"stage":<40}{"median ms":>12}')
    for k, v in res['median_ms'].items():
        print(f'{k:<40}{"-" if v is None else f"{v:.3f}":>12}')
    print(f'ratio detector_total / forward_pure = {ratio:.3f} (goal <= {GOAL}): '
          f'{"OK" if ratio <= GOAL else "MISSED"}; loadavg {load_before} -> {load_after}')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, indent=2)
        f.write('\n')


if __name__ == '__main__':
    main()
