"""
Per-frame cost of the loop detector in the node's DEFAULT config against the bare forward (CPU).

What users run: `DetectorConfig()` as the node ships it (geometric verification on, its gv_*
and keyframe defaults; the node's parameter table takes its defaults from there), at the built-in
model's calibrated operating point as the node applies it (`core.calibration.calibrated_config`),
on 640x480
frames. The frames are the simulated garden loop (`day_loop`, 640x480, 5 Hz, noon), driven once
with its ground-truth poses, so keyframes are taken by the default policy, their features are
stored, and the end of the loop revisits the start (candidates verified against stored
features). The map is prefilled with `--map-size` older keyframes without features (random
non-negative descriptors, below the score threshold of real frames).

The bare forward is the network alone on a preprocessed 224x224 batch of one frame (no
preprocessing, no copy). Forward and detector frames alternate in one process, so a busy
machine slows both alike. Goal (issue 13): detector per-frame cost <= 1.3x the bare forward;
mean and median are reported (the median hides the frames that extract and verify features).
`--threads 1` runs everything on one thread (torch, OpenCV, BLAS, FAISS) and the CPU time of
that thread is reported next to the wall time: on a machine shared with other jobs the wall
times of both sides swell unevenly, the single-thread CPU-time ratio does not.
Writes bench/results/bench_core.json.

    python bench/bench_core.py                      # renders the 640x480 loop once (~6 min)
    python bench/bench_core.py --size 320x240       # the cached default demo set
    python bench/bench_core.py --threads 1          # load-independent CPU-time ratio
    python bench/bench_core.py --passes 2           # drive the loop twice: the second pass
                                                    # revisits every place (issue 22)
    python bench/bench_core.py --passes 2 --detector gv_first_only=false
                                                    # every candidate verified (the old default)

With `--passes 2` the second pass starts after the exclusion window, so every frame of it
revisits a stored place: candidates are verified on most frames and the sequence evidence has
a history to align. Medians and p90 are reported for exploring frames (first pass) and
revisiting frames (later passes) separately.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time


def _early_threads() -> None:
    """
    BLAS/OpenMP read their thread counts at import: set them before numpy comes in.

    OpenMP workers sleep when idle, as in the node (vpr_ros/core/cpu_threads.py).
    """
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from vpr_ros.core.cpu_threads import prefer_passive_omp  # numpy-free: safe this early
    prefer_passive_omp()
    if '--threads' in sys.argv[:-1]:
        n = sys.argv[sys.argv.index('--threads') + 1]
        for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
            os.environ[var] = n


_early_threads()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_verify import load_loop  # noqa: E402

from vpr_ros.core.calibration import calibrated_config  # noqa: E402
from vpr_ros.core.cpu_threads import blas_threads, limit_blas_threads  # noqa: E402
from vpr_ros.core.detector import DetectorConfig, LoopDetector  # noqa: E402
from vpr_ros.core.pose_buffer import Pose  # noqa: E402
from vpr_ros.core.preprocess import preprocess_batch  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.model.encoder import build_encoder  # noqa: E402
from vpr_ros.model.operating_point import model_operating_point  # noqa: E402
from vpr_ros.training.eval.loop_cli import detector_overrides  # noqa: E402

GOAL = 1.3
S = 1_000_000_000


def _prefill(place_map: PlaceMap, n: int, dim: int, seed: int = 0) -> None:
    """N keyframes with non-negative unit descriptors (like ReLU features), long ago."""
    rng = np.random.default_rng(seed)
    descs = np.abs(rng.standard_normal((n, dim))).astype(np.float32)
    descs /= np.linalg.norm(descs, axis=1, keepdims=True)
    poses = np.tile(np.r_[100.0, 0, 0, 0, 0, 0, 1], (n, 1))
    poses[:, 0] += np.arange(n)
    place_map.add_batch(descs, np.arange(n) * S // 10, poses=poses, frame_ids=['old'] * n)


def _ms(xs) -> float | None:
    return round(1e3 * statistics.median(xs), 3) if len(xs) else None


def _mean_ms(xs) -> float | None:
    return round(1e3 * float(np.mean(xs)), 3) if len(xs) else None


def run(args: argparse.Namespace) -> dict:
    """Drive the loop through a default detector, interleaved with bare forward passes."""
    w, h = (int(v) for v in args.size.lower().split('x'))
    frames, stamps_s, poses = load_loop((h, w), args.cache_dir)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    enc = build_encoder('', device='cpu')
    spec = enc.spec
    # the node's default: DetectorConfig() at the built-in model's calibrated operating point
    cfg = calibrated_config(DetectorConfig(**detector_overrides(args.detector)),
                            model_operating_point('')[0])
    place_map = PlaceMap(enc.dim, enc.fingerprint)
    _prefill(place_map, args.map_size, enc.dim)
    if args.blas_threads > 0:  # the node's blas_threads parameter (default 1)
        limit_blas_threads(args.blas_threads)
    det = LoopDetector(enc, place_map, cfg)
    x = preprocess_batch([frames[0]], spec.image_size, 'rgb8', spec.mean, spec.std)
    x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> tuple[float, float]:
        c, t = time.thread_time(), time.perf_counter()
        with torch.inference_mode():
            enc.net(x)
        return time.perf_counter() - t, time.thread_time() - c

    for _ in range(args.warmup):
        forward()
        enc.embed_one(frames[0], 'rgb8')
    t0_ns = 10_000 * S
    fwd, results, cpu_fwd, cpu_frame, revisit = [], [], [], [], []
    n = len(frames) if args.frames <= 0 else min(args.frames, len(frames))
    lap_s = float(stamps_s[n - 1]) + cfg.exclusion_s + 1.0  # later passes: past the window
    for j in range(n * max(1, args.passes)):
        i, lap = j % n, j // n
        stamp = t0_ns + int(round((stamps_s[i] + lap * lap_s) * S))
        pose = Pose.from_vector(stamp, poses[i])
        revisit.append(lap > 0)
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):  # neither always runs first
            if which == 0:
                wall, cpu = forward()
                fwd.append(wall)
                cpu_fwd.append(cpu)
            else:
                c = time.thread_time()
                results.append(det.process(frames[i], stamp, 'rgb8', pose, frame_id='cam'))
                cpu_frame.append(time.thread_time() - c)
    return {'frames': frames, 'fwd': fwd, 'results': results, 'det': det, 'cfg': cfg,
            'enc': enc, 'map': place_map, 'size': (w, h), 'cpu_fwd': cpu_fwd,
            'cpu_frame': cpu_frame, 'revisit': revisit}


def by_pass(r: dict) -> dict:
    """Median and p90 of exploring and revisiting frames, each over the forward median."""
    f = statistics.median(r['fwd'])
    cf = statistics.median(r['cpu_fwd'])
    out = {}
    for name, want in (('exploring', False), ('revisiting', True)):
        idx = [k for k, v in enumerate(r['revisit']) if v == want]
        if not idx:
            continue
        t = [r['results'][k].t_total_s for k in idx]
        c = [r['cpu_frame'][k] for k in idx]
        out[name] = {'frames': len(idx), 'median_ms': _ms(t),
                     'p90_ms': round(1e3 * float(np.percentile(t, 90)), 3),
                     'ratio_median': round(statistics.median(t) / f, 4),
                     'ratio_p90': round(float(np.percentile(t, 90)) / f, 4),
                     'cpu_ratio_median': round(statistics.median(c) / cf, 4),
                     'cpu_ratio_p90': round(float(np.percentile(c, 90)) / cf, 4),
                     'accepted': sum(1 for k in idx if r['results'][k].candidates)}
    return out


def summarise(r: dict, args: argparse.Namespace, load_before) -> dict:
    """Medians, means and shares of the frames that extracted / verified features."""
    res = r['results']
    fwd = r['fwd']
    total = [x.t_total_s for x in res]
    kf = [x for x in res if x.is_keyframe]
    verified = [x for x in res if x.t_verify_s > 1e-3]
    cfg = r['cfg']
    ratio_med = statistics.median(total) / statistics.median(fwd)
    ratio_mean = float(np.mean(total)) / float(np.mean(fwd))
    return {
        'benchmark': 'detector per-frame total (node default config) vs bare encoder forward',
        'model': r['enc'].spec.tag(), 'device': 'cpu', 'batch': 1,
        'torch_threads': torch.get_num_threads(), 'frame_wh': list(r['size']),
        'blas_threads': sorted(set(blas_threads().values())),
        'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
        'frames': f'sim day_loop {r["size"][0]}x{r["size"][1]}, one pass with poses',
        'config': {'geometric_verification': cfg.geometric_verification,
                   'gv_feature': cfg.gv_feature, 'gv_n_features': cfg.gv_n_features,
                   'gv_max_side': cfg.gv_max_side, 'gv_first_only': cfg.gv_first_only,
                   'top_k': cfg.top_k, 'score_threshold': cfg.score_threshold,
                   'sequence_evidence': cfg.sequence_evidence,
                   'confidence_threshold': cfg.confidence_threshold,
                   'confidence_threshold_time': cfg.confidence_threshold_time},
        'passes': args.passes, 'by_pass': by_pass(r), 'detector_overrides': args.detector,
        'map_size_start': args.map_size, 'map_size_end': len(r['map']),
        'frames_processed': len(res), 'keyframes_added': len(kf),
        'frames_with_candidates': sum(1 for x in res if x.candidates),
        'frames_with_feature_work_over_1ms': len(verified),
        'counters': dict(r['det'].counters),
        'median_ms': {
            'forward_pure': _ms(fwd), 'detector_total': _ms(total),
            'embed_one (preprocess+forward+copy)': _ms([x.t_embed_s for x in res]),
            'search (PlaceMap.search + threshold)': _ms([x.t_search_s for x in res]),
            'features+verify (all frames)': _ms([x.t_verify_s for x in res]),
            'features+verify (keyframes)': _ms([x.t_verify_s for x in kf]),
            'features+verify (frames with candidates)':
                _ms([x.t_verify_s for x in res if x.candidates]),
            'add (keyframes)': _ms([x.t_add_s for x in kf]),
        },
        'mean_ms': {'forward_pure': _mean_ms(fwd), 'detector_total': _mean_ms(total),
                    'features+verify': _mean_ms([x.t_verify_s for x in res])},
        'p90_ms': {'forward_pure': round(1e3 * float(np.percentile(fwd, 90)), 3),
                   'detector_total': round(1e3 * float(np.percentile(total, 90)), 3)},
        'main_thread_cpu_ms': {
            'forward_pure_median': _ms(r['cpu_fwd']), 'detector_total_median': _ms(r['cpu_frame']),
            'forward_pure_mean': _mean_ms(r['cpu_fwd']),
            'detector_total_mean': _mean_ms(r['cpu_frame']),
            'note': 'the whole cost only with --threads 1 (other threads are not counted)'},
        'ratio_cpu_median': round(statistics.median(r['cpu_frame'])
                                  / statistics.median(r['cpu_fwd']), 4),
        'ratio_cpu_mean': round(float(np.mean(r['cpu_frame']) / np.mean(r['cpu_fwd'])), 4),
        'threads': args.threads or 'library defaults',
        'ratio_total_over_forward_median': round(ratio_med, 4),
        'ratio_total_over_forward_mean': round(ratio_mean, 4),
        'goal': GOAL, 'meets_goal_median': ratio_med <= GOAL,
        'meets_goal_mean': ratio_mean <= GOAL,
        'loadavg_before': [round(v, 2) for v in load_before],
        'loadavg_after': [round(v, 2) for v in os.getloadavg()],
        'cpu_count': os.cpu_count(), 'machine': platform.machine(),
        'python': platform.python_version(), 'torch': torch.__version__,
        'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--size', default='640x480', help='WxH of the rendered loop')
    parser.add_argument('--cache-dir', default=None, help='sim cache (default ~/.cache)')
    parser.add_argument('--frames', type=int, default=0, help='0: the whole loop')
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--map-size', type=int, default=1000)
    parser.add_argument('--threads', type=int, default=0,
                        help='1: one thread everywhere, CPU-time ratio meaningful')
    parser.add_argument('--passes', type=int, default=1,
                        help='drive the loop this many times (2: revisiting frames)')
    parser.add_argument('--blas-threads', type=int, default=1,
                        help="numpy BLAS threads, as the node's blas_threads parameter (default "
                             "1, the node's; 0: the library default)")
    parser.add_argument('--detector', action='append', default=[], metavar='FIELD=VALUE',
                        help='a DetectorConfig field away from the default (repeatable), e.g. '
                             'gv_first_only=false: the previous default, every candidate '
                             'verified')
    parser.add_argument('--out', default=None,
                        help='default bench/results/bench_core.json (bench_core_revisit.json '
                             'with --passes > 1)')
    args = parser.parse_args()
    if args.out is None:
        args.out = os.path.join(HERE, 'results', 'bench_core.json' if args.passes <= 1
                                else 'bench_core_revisit.json')
    load_before = os.getloadavg()
    res = summarise(run(args), args, load_before)
    print(f'{"stage":<44}{"median ms":>12}')
    for k, v in res['median_ms'].items():
        print(f'{k:<44}{"-" if v is None else f"{v:.3f}":>12}')
    print(f'frames {res["frames_processed"]}, keyframes {res["keyframes_added"]}, with '
          f'candidates {res["frames_with_candidates"]}; mean ms {res["mean_ms"]}')
    print(f'ratio detector_total / forward_pure: median '
          f'{res["ratio_total_over_forward_median"]:.3f}, mean '
          f'{res["ratio_total_over_forward_mean"]:.3f} (goal <= {GOAL}); loadavg '
          f'{res["loadavg_before"]} -> {res["loadavg_after"]}')
    print(f'main-thread CPU-time ratio (threads {res["threads"]}): median '
          f'{res["ratio_cpu_median"]:.3f}, mean {res["ratio_cpu_mean"]:.3f}')
    for name, v in res['by_pass'].items():
        print(f'{name} frames ({v["frames"]}, {v["accepted"]} accepted): median '
              f'{v["median_ms"]} ms = {v["ratio_median"]}x forward, p90 {v["p90_ms"]} ms = '
              f'{v["ratio_p90"]}x; CPU-time ratio median {v["cpu_ratio_median"]}, p90 '
              f'{v["cpu_ratio_p90"]}')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, indent=2)
        f.write('\n')


if __name__ == '__main__':
    main()
