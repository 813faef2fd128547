#!/usr/bin/env python3
"""
Geometric verification on the demo loop: time and decision quality per local-feature setting.

Why: with verification on (the node's default) ORB 500 on 640x480 frames cost as much as the
CNN (issue 13). This measures, on the simulated garden loop (`day_loop`, rendered at 640x480,
noon, one loop so the robot revisits its start), every candidate pair the detector would verify
(previous frames more than `--exclusion-s` older, top-5 by descriptor, cosine >= the detector's
score threshold) with each feature setting OpenCV 5 ships without contrib (ORB, SIFT; AKAZE and
BRISK moved to opencv-contrib): extraction ms per frame, verification ms per pair, bytes stored
per keyframe, precision and recall of the accept decision against the ground-truth field-of-view
overlap (a pair is a true revisit when psi > 0.5), and the precision of the best accepted
candidate per query (what /vpr/loop_closure publishes).

    python bench/bench_verify.py                      # renders the 640x480 loop once (~6 min)
    python bench/bench_verify.py --size 320x240       # the cached default demo set

Writes bench/results/bench_verify.json.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vpr_ros.core.detector import DetectorConfig  # noqa: E402
from vpr_ros.core.fov import fov_overlap_many  # noqa: E402
from vpr_ros.core.psi import planar, POSITIVE_PSI  # noqa: E402
from vpr_ros.core.tbplaces import image_root, read_index  # noqa: E402
from vpr_ros.core.verification import GeometricVerifier  # noqa: E402
from vpr_ros.model.encoder import build_encoder  # noqa: E402
from vpr_ros.sim.dataset import default_dataset, DEFAULT_TRAVERSES  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# (name, feature, n_features, max_side): 0 = the full frame.
SETTINGS = (
    ('orb500-full', 'orb', 500, 0),
    ('orb500-480', 'orb', 500, 480),
    ('orb500-320', 'orb', 500, 320),
    ('orb1000-320', 'orb', 1000, 320),
    ('sift500-320', 'sift', 500, 320),
    ('sift500-full', 'sift', 500, 0),
)


def load_loop(size_hw: tuple[int, int], cache_dir: str | None):
    """Frames (RGB), stamps (s) and poses of the demo loop at `size_hw` (rendered if missing)."""
    paths = default_dataset(cache_dir=cache_dir, width=size_hw[1], height=size_hw[0],
                            traverses=(DEFAULT_TRAVERSES[0],), bag=False)
    idx = read_index(paths.indices[0])
    root = image_root(paths.indices[0], idx.im_prefix)
    frames = [cv2.cvtColor(cv2.imread(os.path.join(root, p)), cv2.COLOR_BGR2RGB)
              for p in idx.im_paths]
    rate = float(paths.meta.get('params', {}).get('rate_hz', 5.0))
    return frames, np.arange(len(frames)) / rate, np.asarray(idx.poses, np.float64)


def candidate_pairs(descs: np.ndarray, stamps: np.ndarray, poses: np.ndarray, k: int,
                    threshold: float, exclusion_s: float) -> list[tuple[int, int, float, bool]]:
    """(query, match, score, true revisit) of what the detector would verify, best first."""
    xy, yaw = planar(poses)
    pairs = []
    for i in range(len(descs)):
        old = np.flatnonzero(stamps < stamps[i] - exclusion_s)
        if not len(old):
            continue
        s = descs[old] @ descs[i]
        top = old[np.argsort(-s)[:k]]
        psi = fov_overlap_many(np.repeat(xy[i][None], len(top), 0), np.full(len(top), yaw[i]),
                               xy[top], yaw[top])
        for j, p in zip(top, psi):
            score = float(descs[j] @ descs[i])
            if score >= threshold:
                pairs.append((i, int(j), score, bool(p > POSITIVE_PSI)))
    return pairs


def measure(setting: tuple, frames: list, pairs: list, cfg: DetectorConfig) -> dict:
    """Time the extraction and verification of one feature setting and score its decisions."""
    name, feature, n_features, max_side = setting
    ver = GeometricVerifier(feature, n_features, cfg.gv_ratio, cfg.gv_min_inliers,
                            cfg.gv_ransac_threshold_px, max_side=max_side)
    used = sorted({i for p in pairs for i in p[:2]})
    feats, t_ext = {}, []
    for i in used:
        t = time.perf_counter()
        feats[i] = ver.extract(frames[i], 'rgb8')
        t_ext.append(time.perf_counter() - t)
    t_ver, ok = [], []
    for i, j, _, _ in pairs:
        t = time.perf_counter()
        ok.append(ver.verify(feats[i], feats[j]).ok)
        t_ver.append(time.perf_counter() - t)
    truth = np.array([p[3] for p in pairs])
    ok = np.array(ok)
    tp, fp = int(np.sum(ok & truth)), int(np.sum(ok & ~truth))
    best = {}
    for (i, j, score, true), accepted in zip(pairs, ok):
        if accepted and (i not in best or score > best[i][0]):
            best[i] = (score, true)
    best_true = sum(1 for v in best.values() if v[1])
    return {
        'setting': name, 'feature': feature, 'n_features': n_features, 'max_side': max_side,
        'extract_ms_median': round(1e3 * statistics.median(t_ext), 3),
        'verify_ms_per_pair_median': round(1e3 * statistics.median(t_ver), 3),
        'keypoints_mean': round(float(np.mean([len(f) for f in feats.values()])), 1),
        'blob_bytes_mean': round(float(np.mean([len(f.to_bytes()) for f in feats.values()]))),
        'accepted': int(ok.sum()), 'true_accepted': tp, 'false_accepted': fp,
        'precision': round(tp / max(1, tp + fp), 4),
        'recall_of_true_pairs': round(tp / max(1, int(truth.sum())), 4),
        'queries_with_a_loop': len(best), 'best_candidate_precision':
            round(best_true / max(1, len(best)), 4),
    }


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--size', default='640x480', help='WxH of the rendered loop')
    ap.add_argument('--cache-dir', default=None, help='sim cache (default ~/.cache/vpr_ros)')
    ap.add_argument('--exclusion-s', type=float, default=DetectorConfig().exclusion_s)
    ap.add_argument('--settings', nargs='+', default=[s[0] for s in SETTINGS])
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_verify.json'))
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split('x'))
    cfg = DetectorConfig()
    load0 = os.getloadavg()
    frames, stamps, poses = load_loop((h, w), args.cache_dir)
    enc = build_encoder('', device='cpu')
    descs = np.concatenate([enc.embed(frames[s:s + 16], 'rgb8')
                            for s in range(0, len(frames), 16)])
    pairs = candidate_pairs(descs, stamps, poses, cfg.top_k, cfg.score_threshold,
                            args.exclusion_s)
    n_true = sum(p[3] for p in pairs)
    print(f'demo loop {w}x{h}: {len(frames)} frames, {len(pairs)} candidate pairs '
          f'({n_true} true revisits, psi > {POSITIVE_PSI}); loadavg {os.getloadavg()}')
    rows = []
    for s in SETTINGS:
        if s[0] not in args.settings:
            continue
        r = measure(s, frames, pairs, cfg)
        rows.append(r)
        print(f'{r["setting"]:<14} extract {r["extract_ms_median"]:7.2f} ms  verify '
              f'{r["verify_ms_per_pair_median"]:6.2f} ms/pair  kp {r["keypoints_mean"]:6.1f}  '
              f'blob {r["blob_bytes_mean"]:6d} B  precision {r["precision"]:.3f}  recall '
              f'{r["recall_of_true_pairs"]:.3f}  best-candidate precision '
              f'{r["best_candidate_precision"]:.3f} ({r["queries_with_a_loop"]} queries)',
              flush=True)
    res = {'benchmark': 'geometric verification settings on the demo loop',
           'data': f'sim day_loop {w}x{h}, {len(frames)} frames', 'pairs': len(pairs),
           'true_pairs': n_true, 'detector_defaults': {
               'score_threshold': cfg.score_threshold, 'top_k': cfg.top_k,
               'gv_min_inliers': cfg.gv_min_inliers, 'gv_ratio': cfg.gv_ratio,
               'gv_ransac_threshold_px': cfg.gv_ransac_threshold_px,
               'gv_max_side': cfg.gv_max_side},
           'rows': rows, 'loadavg_before': [round(v, 2) for v in load0],
           'loadavg_after': [round(v, 2) for v in os.getloadavg()],
           'cpu_count': os.cpu_count(), 'opencv': cv2.__version__,
           'machine': platform.machine(), 'date': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, indent=1)
        f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
