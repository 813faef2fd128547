#!/usr/bin/env python3
"""
Map-level benchmark of map_index 'compact' vs 'flat' for the shipped 1280-d descriptor.

Why: bench_search.py measures the compact searcher on its own; users run it through
`PlaceMap` (the node's path: the kind's own PCA fit at MIN_COUNT keyframes, temporal exclusion,
Python overhead, save/load of compact.bin). This builds one flat and one compact map of the same
keyframes, added as the node adds them (the first MIN_COUNT, then the rest), and prints side by
side with compact/flat ratios: single-query p50/p95 through `PlaceMap.search` at the node's
default exclusion (30 s window, query stamped after the last keyframe), recall@5 of compact
against flat (exact), memory per keyframe (RSS delta of building the map / n), save time and
restart (`PlaceMap.load`, sha256 checked) time, and the first search after the load.

`--ceiling` adds what no graph can beat: for PCA dims D and candidate counts c, recall@5 of the
exact re-rank of the exact top-c in the D-dim space of the same projection fit. When that is
below 0.99 the projection, not the graph, limits the kind; building HNSW graphs at 1M takes
minutes each on this machine, so this is how the 1M grid is narrowed first.

Data: bench_search.py's generator (mean/covariance of real default-model descriptors of the
simulated garden + corridor, walked as an AR(1) trajectory; revisits at cosine ~0.94).

    python bench/bench_map_compact.py                          # 100k: ~5 min here
    python bench/bench_map_compact.py --n 1000000 --ceiling-only --queries 100   # ~12 GB

Writes bench/results/bench_map_compact.json (one entry per size, merged with earlier runs).
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import faiss
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_search import cos_spread, Generator, real_descriptors  # noqa: E402

from vpr_ros.map import compact_kind  # noqa: E402
from vpr_ros.map.compact import fit_projection  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.map.search import top_scores  # noqa: E402

S = 1_000_000_000
FP = 'bench'
GOAL_MS, GOAL_RECALL = 2.0, 0.99


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc), bytes."""
    with open('/proc/self/status', encoding='ascii') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def make_data(gen: Generator, n: int, nq: int, noise: float, seed: int):
    """(n, d) generated keyframes (a trajectory), nq revisit queries near random keyframes."""
    rng = np.random.default_rng(seed)
    z = gen.latent(rng, n)
    x = np.empty((n, gen.dim), np.float32)
    for s in range(0, n, 65536):
        x[s:s + 65536] = gen.decode(rng, z[s:s + 65536])
    src = rng.choice(n - 100, nq, replace=False)  # not the excluded last keyframes
    q = gen.decode(rng, z[src] + noise * rng.standard_normal((nq, z.shape[1]),
                                                             dtype=np.float32))
    return x, q, src


def build(kind: str, x: np.ndarray, **kw) -> tuple[PlaceMap, dict]:
    """Build a `kind` map of x as the node adds: MIN_COUNT first (the fit), then chunks."""
    r0 = rss_bytes()
    t = time.perf_counter()
    m = PlaceMap(x.shape[1], FP, index=kind, **kw)
    first = min(len(x), compact_kind.MIN_COUNT)
    m.add_batch(x[:first], np.arange(first) * S)
    for s in range(first, len(x), 65536):
        e = min(len(x), s + 65536)
        m.add_batch(x[s:e], np.arange(s, e) * S)
    info = {'add_s': round(time.perf_counter() - t, 2),
            'rss_bytes_per_keyframe': round((rss_bytes() - r0) / len(x), 1)}
    return m, info


def latencies(m: PlaceMap, q: np.ndarray, k: int, stamp: int, excl_s: float):
    """p50/p95 ms of single `PlaceMap.search` calls (3 warm-up), and the returned ids."""
    for v in q[:3]:
        m.search(v, k, stamp, excl_s)
    times, ids = [], []
    for v in q:
        t = time.perf_counter()
        res = m.search(v, k, stamp, excl_s)
        times.append(time.perf_counter() - t)
        ids.append([r.id for r in res])
    ms = 1e3 * np.asarray(times)
    return float(np.median(ms)), float(np.percentile(ms, 95)), ids


def recall(got: list, truth: list, k: int) -> float:
    return float(np.mean([len(set(g[:k]) & set(t[:k])) / k for g, t in zip(got, truth)]))


def save(m: PlaceMap, q: np.ndarray, k: int, stamp: int, excl_s: float) -> dict:
    """Save to a fresh directory (timed); the caller drops the map, then calls `reload`."""
    tmp = tempfile.mkdtemp(prefix='bench_map_compact_')
    t = time.perf_counter()
    m.save(tmp)
    return {'dir': tmp, 'save_s': round(time.perf_counter() - t, 2),
            'saved_mb': round(sum(os.path.getsize(os.path.join(dp, f))
                                  for dp, _, fs in os.walk(tmp) for f in fs) / 2**20, 1),
            'ids': [r.id for r in m.search(q[0], k, stamp, excl_s)]}


def reload(saved: dict, dim: int, q: np.ndarray, k: int, stamp: int, excl_s: float) -> dict:
    """Time the restart (sha256 checked) and its first search; remove the directory."""
    tmp, ids = saved.pop('dir'), saved.pop('ids')
    try:
        t = time.perf_counter()
        loaded = PlaceMap.load(tmp, FP, dim, verify=True)
        out = dict(saved, load_s=round(time.perf_counter() - t, 2))
        t = time.perf_counter()
        first = [r.id for r in loaded.search(q[0], k, stamp, excl_s)]
        out['first_search_after_load_ms'] = round(1e3 * (time.perf_counter() - t), 2)
        out['same_results_after_load'] = first == ids
        out['projections_fitted_at_load'] = loaded._compact.fits
        loaded.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ceiling(x: np.ndarray, q: np.ndarray, truth: np.ndarray, dims: list, cands: list,
            fit_rows: int, k: int) -> list:
    """Recall@k of the exact top-c of the D-dim PCA space, re-ranked exactly (graph-free)."""
    rows = []
    for label, fit_x in (('first', x[:fit_rows]), ('sample', x)):
        basis = fit_projection(fit_x, max(dims), max_rows=50_000, seed=2)
        px = np.empty((len(x), max(dims)), np.float32)
        for s in range(0, len(x), 65536):
            px[s:s + 65536] = x[s:s + 65536] @ basis.T
        pq = q @ basis.T
        for d in dims:
            # The graph ranks by L2 in the projected space (compact.py), not by inner product.
            sc = 2 * pq[:, :d] @ px[:, :d].T - np.einsum('ij,ij->i', px[:, :d], px[:, :d])
            for c in cands:
                hits = []
                for i in range(len(q)):
                    cand = np.argpartition(-sc[i], c)[:c]
                    best = cand[top_scores(x[cand] @ q[i], k)]
                    hits.append(len(set(best.tolist()) & set(truth[i].tolist())) / k)
                rows.append({'fit': label, 'pca': d, 'candidates': c,
                             'recall_at_5': round(float(np.mean(hits)), 4)})
                print(f'ceiling fit={label:<6} PCA{d:<4d} exact top-{c:<5d} re-ranked: '
                      f'recall@{k} {rows[-1]["recall_at_5"]:.4f}', flush=True)
            del sc
        del px
    return rows


def exact_truth(x: np.ndarray, q: np.ndarray, k: int, upto: int) -> np.ndarray:
    """Exact top-k positions among x[:upto] per query (no exclusion: ceiling mode)."""
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), 16):
        sc = q[s:s + 16] @ x[:upto].T
        for r in range(sc.shape[0]):
            out[s + r] = top_scores(sc[r], k)
    return out


def bench(args: argparse.Namespace, gen: Generator) -> dict:
    n, k = args.n, args.k
    x, q, src = make_data(gen, n, args.queries, args.query_noise, seed=n)
    entry = {'n': n, 'dim': x.shape[1], 'queries': len(q),
             'query_cos_to_source': round(float(np.median(np.einsum('ij,ij->i', q, x[src]))),
                                          3),
             'generated_cos_p5_p50_p95': cos_spread(x, np.random.default_rng(1)),
             'loadavg_before': [round(v, 2) for v in os.getloadavg()],
             'faiss_omp_threads': faiss.omp_get_max_threads()}
    compact_kind.MAX_OUT_DIM = args.pca  # the kind's projected dimension, for this run
    print(f'== n={n} d={x.shape[1]}: revisit cos {entry["query_cos_to_source"]}, '
          f'loadavg {entry["loadavg_before"]}, faiss threads {entry["faiss_omp_threads"]}',
          flush=True)
    if args.ceiling or args.ceiling_only:
        entry['ceiling'] = ceiling(x, q, exact_truth(x, q, k, n), args.ceiling_dims,
                                   args.ceiling_candidates, compact_kind.MIN_COUNT, k)
    if args.ceiling_only:
        return entry
    stamp, excl, dim = (n + 1) * S, args.exclusion_s, x.shape[1]
    # Keyframe ids are add positions; the exclusion drops those within excl s of the query.
    exact = exact_truth(x, q, k, n + 1 - int(np.ceil(excl))).tolist()
    if args.skip_flat:  # graph settings only: the flat side is the same as the last run's
        truth = exact
    else:
        flat, finfo = build('flat', x)
        f50, f95, truth = latencies(flat, q, k, stamp, excl)
        entry['truth_matches_numpy'] = recall(truth, exact, k)
        saved = save(flat, q, k, stamp, excl)
        del flat  # one map at a time in RAM (1M x 1280: 5 GB each)
        finfo.update(reload(saved, dim, q, k, stamp, excl))
        entry['flat'] = dict(finfo, p50_ms=round(f50, 3), p95_ms=round(f95, 3),
                             recall_at_5=1.0)
    comp, cinfo = build('compact', x, hnsw_m=args.m, hnsw_ef_construction=args.ef_construction)
    del x  # the map holds its own copy; at 1M this keeps the reload below within RAM
    cs = comp._compact.cs
    cinfo.update(pca=int(cs.basis.shape[0]), m=args.m, ef_construction=args.ef_construction)
    grid = []
    for ef in args.ef_search:
        comp.hnsw_ef_search = ef
        for kf in args.k_factor:
            cs.k_factor = kf
            c50, c95, got = latencies(comp, q, k, stamp, excl)
            grid.append({'ef_search': ef, 'k_factor': kf, 'p50_ms': round(c50, 3),
                         'p95_ms': round(c95, 3), 'recall_at_5': round(recall(got, truth, k), 4)})
    comp.hnsw_ef_search = args.ef_search[0]
    cs.k_factor = args.k_factor[0]
    if not args.skip_flat:
        saved = save(comp, q, k, stamp, excl)
        del comp, cs
        cinfo.update(reload(saved, dim, q, k, stamp, excl))
    entry['compact'] = dict(cinfo, grid=grid)
    entry['loadavg_after'] = [round(v, 2) for v in os.getloadavg()]
    if args.skip_flat:
        print(json.dumps(entry['compact']), flush=True)
    else:
        report(entry)
    return entry


def report(e: dict) -> None:
    """Print flat and compact side by side with compact/flat ratios."""
    f, c = e['flat'], e['compact']
    print(f'\nn={e["n"]} x {e["dim"]}, {e["queries"]} queries, exclusion 30 s '
          f'(compact PCA{c["pca"]} M={c["m"]} efC={c["ef_construction"]})')
    print(f'{"":<30}{"flat":>12}{"compact":>12}{"ratio":>9}')
    for key in ('rss_bytes_per_keyframe', 'add_s', 'save_s', 'saved_mb', 'load_s',
                'first_search_after_load_ms'):
        print(f'{key:<30}{f[key]:>12}{c[key]:>12}{c[key] / max(f[key], 1e-9):>9.3f}')
    print(f'{"projections_fitted_at_load":<30}{"":>12}{c["projections_fitted_at_load"]:>12}')
    for g in c['grid']:
        meets = g['p50_ms'] < GOAL_MS and g['recall_at_5'] >= GOAL_RECALL
        print(f'search efS={g["ef_search"]:<4} k_factor={g["k_factor"]:<4} p50 '
              f'{f["p50_ms"]:8.3f} -> {g["p50_ms"]:7.3f} ms (x{g["p50_ms"] / f["p50_ms"]:.4f}) '
              f'p95 {f["p95_ms"]:8.3f} -> {g["p95_ms"]:7.3f} ms  recall@5 '
              f'{g["recall_at_5"]:.4f}{"  <- goal" if meets else ""}', flush=True)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--n', type=int, default=100_000)
    ap.add_argument('--queries', type=int, default=200)
    ap.add_argument('--k', type=int, default=5)
    ap.add_argument('--query-noise', type=float, default=0.45)
    ap.add_argument('--exclusion-s', type=float, default=30.0, help="the node's default")
    ap.add_argument('--m', type=int, default=32, help='hnsw_m of the compact map')
    ap.add_argument('--pca', type=int, default=compact_kind.MAX_OUT_DIM,
                    help="the compact kind's projected dimension (its MAX_OUT_DIM)")
    ap.add_argument('--ef-construction', type=int, default=64)
    ap.add_argument('--ef-search', type=int, nargs='+', default=[256, 128, 512])
    ap.add_argument('--k-factor', type=int, nargs='+', default=[compact_kind.K_FACTOR, 80])
    ap.add_argument('--skip-flat', action='store_true',
                    help='compact graph only (truth by numpy; no flat map, no save/load)')
    ap.add_argument('--ceiling', action='store_true', help='also the graph-free PCA ceiling')
    ap.add_argument('--ceiling-only', action='store_true', help='only the PCA ceiling')
    ap.add_argument('--ceiling-dims', type=int, nargs='+', default=[64, 128, 192, 256])
    ap.add_argument('--ceiling-candidates', type=int, nargs='+', default=[200, 400, 1000])
    ap.add_argument('--real-cache', default=os.path.expanduser(
        '~/.cache/vpr_ros/bench_search_real_descriptors.npy'))
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_map_compact.json'))
    args = ap.parse_args(argv)
    gen = Generator(real_descriptors(args.real_cache))
    entry = bench(args, gen)
    entry.update(date=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                 args=vars(args) | {'out': None, 'real_cache': None})
    try:
        with open(args.out, encoding='utf-8') as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {'sizes': {}}
    tag = f' pca{args.pca} efC{args.ef_construction}' + (' graph' if args.skip_flat else '')
    key = f'{args.n}{" ceiling" if args.ceiling_only else tag}'
    result['sizes'][key] = entry
    result['machine'] = {'cpus': os.cpu_count(), 'platform': platform.platform(),
                         'faiss': faiss.__version__, 'numpy': np.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
