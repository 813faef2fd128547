"""
Time the fleet map tools and the fresh start's move aside on maps of the shipped descriptor size.

    python bench/bench_map_tools.py                 # two maps of 10k x 1280-d, 2 KB blobs each
    python bench/bench_map_tools.py --n 50000

Builds two maps (generated unit descriptors, a blob per keyframe like ORB features, two sessions
each, colliding ids), then times `vpr-map`'s operations through the map layer (vpr_ros.map.fleet:
the same code the command runs), `PlaceMap.read_only` (a prior map's snapshot) and
`PlaceMap.open(..., load_existing=False, aside=True)` (hard links, so it should not grow with the
map). Each figure is compared with a plain `PlaceMap.load` of the same map in the same run.
Writes bench/results/bench_map_tools.json (one entry per size, merged with earlier runs).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vpr_ros.map import fleet  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FP = 'b' * 64
S = 10**9


def build(d: str, n: int, dim: int, seed: int, blob_bytes: int) -> None:
    """Save a map of n keyframes in two sessions, one blob each."""
    rng = np.random.default_rng(seed)
    for part in (n // 2, n - n // 2):
        m = PlaceMap.open(d, FP, dim, create=True)
        for s in range(0, part, 5000):
            k = min(5000, part - s)
            x = rng.normal(size=(k, dim)).astype(np.float32)
            m.add_batch(x, (s + np.arange(k)) * S, blobs=[rng.bytes(blob_bytes)] * k)
        m.save(d)
        m.close()


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('--n', type=int, default=10000, help='keyframes per map')
    ap.add_argument('--dim', type=int, default=1280)
    ap.add_argument('--blob-bytes', type=int, default=2048)
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_map_tools.json'))
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix='bench_map_tools_')
    try:
        a, b, c = (os.path.join(tmp, x) for x in ('robot1', 'robot2', 'merged'))
        build(a, args.n, args.dim, 1, args.blob_bytes)
        build(b, args.n, args.dim, 2, args.blob_bytes)
        row = {'n_per_map': args.n, 'dim': args.dim, 'blob_bytes': args.blob_bytes,
               'loadavg_before': [round(v, 2) for v in os.getloadavg()]}
        t_load, m = timed(lambda: PlaceMap.load(a, FP, args.dim))
        m.close()
        row['load_s (baseline)'] = t_load
        row['read_only_s'] = timed(lambda: PlaceMap.read_only(a, FP, args.dim))[0]
        row['info_s'] = timed(lambda: fleet.info(a))[0]
        row['merge_s'], rec = timed(lambda: fleet.merge(a, b, c))
        row['merged_keyframes'] = rec['keyframes']
        row['remapped_ids'] = len(rec['remapped_ids']['robot2'])
        row['export_s'] = timed(lambda: fleet.export_npz(c, os.path.join(tmp, 'm.npz')))[0]
        row['prune_one_session_s'], pr = timed(lambda: fleet.prune(c, sessions=[0]))
        row['pruned'] = pr['removed']
        t_aside, fresh = timed(lambda: PlaceMap.open(c, FP, args.dim, load_existing=False,
                                                     aside=True))
        fresh.close()
        row['move_aside_s'] = t_aside
        row['loadavg_after'] = [round(v, 2) for v in os.getloadavg()]
        for k in ('read_only_s', 'info_s', 'merge_s', 'export_s', 'prune_one_session_s',
                  'move_aside_s'):
            print(f'{k:22s} {row[k]:8.3f} s  ({row[k] / t_load:5.2f} x load)')
        print(f'load (baseline)        {t_load:8.3f} s; {rec["keyframes"]} keyframes merged, '
              f'{row["remapped_ids"]} ids remapped; loadavg {row["loadavg_after"]}')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    old = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    old[str(args.n)] = row
    with open(args.out, 'w') as f:
        json.dump(old, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
