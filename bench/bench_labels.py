"""
Time label generation (vpr-labels' core) on a synthetic, TB-Places-like garden.

A robot drives serpentine rows 2 m apart through a 40 m × 40 m garden, each traverse with its
own lateral offset and heading noise, and a five-camera ring (like the TrimBot2020 rig) that
cycles its camera per frame. That packs about 16 poses per m², dense like TB-Places (many poses
within 7 m of each other). Prints a table and writes bench/results/bench_labels.json.

    python bench/bench_labels.py [--sizes 5000 25000] [--radius 3.5]
"""
import argparse
import json
import os
import platform
import time

import numpy as np

from vpr_ros.core.psi import add_fov_arguments
from vpr_ros.training.data.labels import compute_pairs, DEFAULT_CHUNK, summarize

HERE = os.path.dirname(os.path.abspath(__file__))


def garden_route(step_m: float = 0.2, size_m: float = 40.0, row_gap_m: float = 2.0):
    """Serpentine route (x, y, heading) through the garden, sampled every step_m."""
    pts = []
    ys = np.arange(1.0, size_m - 0.5, row_gap_m)
    for k, y in enumerate(ys):
        xs = np.arange(1.0, size_m - 1.0, step_m)
        if k % 2:
            xs = xs[::-1]
        pts.append(np.stack([xs, np.full_like(xs, y)], 1))
        if k + 1 < len(ys):  # turn to the next row
            turn_x = xs[-1]
            yy = np.arange(y, ys[k + 1], step_m)[1:]
            pts.append(np.stack([np.full_like(yy, turn_x), yy], 1))
    route = np.concatenate(pts)
    d = np.gradient(route, axis=0)
    return route, np.arctan2(d[:, 1], d[:, 0])


def synthetic_garden(n: int, traverses: int = 5, seed: int = 0):
    """N poses (xy (n,2), yaw (n,)) over several noisy traverses of the garden route."""
    rng = np.random.default_rng(seed)
    route, heading = garden_route()
    per = int(np.ceil(n / traverses))
    xy, yaw = [], []
    rig = np.radians([0.0, 72.0, 144.0, -144.0, -72.0])
    for t in range(traverses):
        idx = np.linspace(0, len(route) - 1, per).astype(int)
        off = rng.normal(0.0, 0.4) + 0.15 * np.sin(np.arange(per) / 40.0 + t)
        normal = np.stack([-np.sin(heading[idx]), np.cos(heading[idx])], 1)
        xy.append(route[idx] + off[..., None] * normal + rng.normal(0.0, 0.05, (per, 2)))
        yaw.append(heading[idx] + rig[np.arange(per) % 5] + rng.normal(0.0, np.radians(3), per))
    return np.concatenate(xy)[:n], np.angle(np.exp(1j * np.concatenate(yaw)[:n]))


def run(n: int, fov_deg: float, radius: float, chunk: int) -> dict:
    """Label n garden poses within one set; return timings and the summary."""
    xy, yaw = synthetic_garden(n)
    t0, c0 = time.perf_counter(), time.process_time()
    i, j, psi = compute_pairs(xy, yaw, fov_deg=fov_deg, radius=radius, chunk=chunk)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = summarize(i, psi, n, n, within=True)
    dist = np.hypot(*(xy[:, None, :2] - xy[None, :200, :2]).transpose(2, 0, 1))
    return {'n_poses': n, 'seconds': round(dt, 2), 'cpu_seconds': round(cpu, 2),
            'pairs_with_psi': int(psi.size),
            'positives': s['positives'], 'soft_negatives': s['soft_negatives'],
            'mean_poses_within_7m': round(float(np.mean(np.sum(dist < 7.0, axis=0))), 1),
            'pairs_per_s': round(psi.size / dt) if dt > 0 else None,
            'histogram': s['histogram']['counts']}


def main() -> None:
    """Run the sizes, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[5000, 25000])
    add_fov_arguments(ap)
    ap.add_argument('--chunk', type=int, default=DEFAULT_CHUNK)
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_labels.json'))
    args = ap.parse_args()
    rows = [run(n, args.fov_deg, args.radius, args.chunk) for n in args.sizes]
    # Wall time on a shared machine swings with the load; CPU time is the steadier figure.
    print(f'{"poses":>8} {"poses<7m":>9} {"ψ>0 pairs":>12} {"positives":>11} {"wall s":>8} '
          f'{"cpu s":>8} {"pairs/s":>10}')
    for r in rows:
        print(f'{r["n_poses"]:>8} {r["mean_poses_within_7m"]:>9} {r["pairs_with_psi"]:>12,} '
              f'{r["positives"]:>11,} {r["seconds"]:>8.2f} {r["cpu_seconds"]:>8.2f} '
              f'{r["pairs_per_s"]:>10,}')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result = {'bench': 'labels', 'fov_deg': args.fov_deg, 'radius': args.radius,
              'chunk': args.chunk, 'cpu_count': os.cpu_count(),
              'python': platform.python_version(),
              'garden': '40 m x 40 m serpentine, rows 2 m apart, 5 traverses, 5-camera ring',
              'results': rows}
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
