"""
Graded similarity labels ψ (2D FoV overlap, vpr_ros.core.fov) for image pairs, and `vpr-labels`.

Strong labels come from 6DOF poses (TB-Places indices, θ = 90°, r = 3.5 m); weak labels from
GPS/UTM east, north and a compass heading (θ = 90°, r = 50 m), read from a CSV with the header
columns `easting,northing,heading_deg` (heading in degrees clockwise from north; other columns are
ignored) or from an MSLS-style index with "loc".

Only pairs whose sectors can overlap are computed (`vpr_ros.core.psi.overlap_pairs`: a KD-tree
pre-filter, exact ψ on chunks of candidates, never a loop over n² pairs).

The file (`.npz`) holds int32 `i`, `j` and float32 `psi` for the pairs with ψ > 0 only; every pair
not stored has ψ = 0 (the hard negatives). Since every camera uses the same θ and r, area(Si) =
area(Sj) and ψ is symmetric, so within one set of traverses only i < j is stored and `load_labels`
mirrors it; the diagonal (an image with itself) is not stored. Between a query set and a map set,
rows are query images and columns map images, both in traverse order. Metadata (θ, r, mode,
traverse names and sizes, index paths) is stored as JSON in the `meta` entry.
"""
import argparse
import csv
import io
import json
import os
import sys
import time
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.errors import VPRError
from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M, WEAK_RADIUS_M
from vpr_ros.core.psi import (
    add_fov_arguments,
    DEFAULT_CHUNK,
    MIN_PSI,
    overlap_pairs,
    planar,
    POSITIVE_PSI,
)
from vpr_ros.core.tbplaces import poses_from_compass
from vpr_ros.training.data.dataset import concat_poses, select_traverses, Traverse

LABELS_VERSION = 1
#: The one ψ neighbour search (vpr_ros.core.psi), under the name vpr-labels always used.
compute_pairs = overlap_pairs


def brute_force_pairs(xy_rows, yaw_rows, xy_cols=None, yaw_cols=None,
                      fov_deg: float = DEFAULT_FOV_DEG, radius: float = DEFAULT_RADIUS_M):
    """Compute (i, j, ψ) by a plain double loop over fov_overlap: the reference for tests."""
    from vpr_ros.core.fov import fov_overlap

    within = xy_cols is None
    xy_c = xy_rows if within else xy_cols
    yaw_c = yaw_rows if within else yaw_cols
    out = []
    for a in range(len(xy_rows)):
        for b in range(a + 1 if within else 0, len(xy_c)):
            p = fov_overlap(xy_rows[a], yaw_rows[a], xy_c[b], yaw_c[b], fov_deg, radius)
            if p > MIN_PSI:
                out.append((a, b, p))
    arr = np.asarray(out, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]


def load_weak_csv(path: str) -> Traverse:
    """Traverse from a CSV with easting,northing,heading_deg columns (weak, GPS + compass)."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        need = ('easting', 'northing', 'heading_deg')
        if not all(c in fields for c in need):
            raise VPRError(f'{path}: needs columns {",".join(need)}, has {",".join(fields)}')
        rows = [{k.strip().lower(): v for k, v in r.items() if k} for r in reader]
    try:
        e = [float(r['easting']) for r in rows]
        n = [float(r['northing']) for r in rows]
        h = [float(r['heading_deg']) for r in rows]
    except (TypeError, ValueError) as exc:
        raise VPRError(f'{path}: bad number: {exc}') from exc
    names = [r.get('im_path') or r.get('image') or '' for r in rows]
    stem = os.path.splitext(os.path.basename(path))[0]
    return Traverse(stem, os.path.abspath(path), names, poses_from_compass(e, n, h))


def _load_sources(sources: Sequence[str], names: Sequence[str] | None) -> list[Traverse]:
    csvs = [s for s in sources if s.lower().endswith('.csv')]
    others = [s for s in sources if not s.lower().endswith('.csv')]
    out = [load_weak_csv(c) for c in csvs]
    if others or names:
        out += select_traverses(others or ['.'], names)
    if not out:
        raise VPRError('no traverses selected')
    return out


def meta_side(traverses: Sequence[Traverse]) -> dict:
    """Names, sizes and index paths of one side (rows or columns) of a label file."""
    return {'names': [t.name for t in traverses], 'sizes': [len(t) for t in traverses],
            'index_paths': [t.index_path for t in traverses]}


def summarize(i: np.ndarray, psi: np.ndarray, n_rows: int, n_cols: int, within: bool) -> dict:
    """Count positives / soft / hard negatives and histogram the stored ψ (10 bins)."""
    total = n_rows * (n_rows - 1) // 2 if within else n_rows * n_cols
    psi = np.asarray(psi, dtype=np.float64)
    hist, edges = np.histogram(psi, bins=10, range=(0.0, 1.0))
    pos = int(np.sum(psi > POSITIVE_PSI))
    soft = int(np.sum(psi <= POSITIVE_PSI))
    rows_with_pos = None if within else int(np.unique(np.asarray(i)[psi > POSITIVE_PSI]).size)
    out = {'pairs_total': int(total), 'pairs_stored': int(psi.size), 'positives': pos,
           'soft_negatives': soft, 'hard_negatives': int(total - psi.size),
           'histogram': {'edges': [round(float(x), 2) for x in edges],
                         'counts': [int(x) for x in hist]}}
    if rows_with_pos is not None:
        out['queries_with_positive'] = rows_with_pos
    return out


def format_summary(s: dict) -> str:
    """Human-readable summary and ψ histogram for the console."""
    tot = max(s['pairs_total'], 1)
    lines = [f"pairs: {s['pairs_total']:,} in total, {s['pairs_stored']:,} with ψ > 0 stored",
             f"  positives      ψ > {POSITIVE_PSI:g} : {s['positives']:>12,} "
             f"({100 * s['positives'] / tot:.4f} %)",
             f"  soft negatives 0<ψ≤{POSITIVE_PSI:g} : {s['soft_negatives']:>12,} "
             f"({100 * s['soft_negatives'] / tot:.4f} %)",
             f"  hard negatives ψ = 0   : {s['hard_negatives']:>12,} "
             f"({100 * s['hard_negatives'] / tot:.4f} %)"]
    if 'queries_with_positive' in s:
        lines.append(f"  queries with a positive: {s['queries_with_positive']:,}")
    lines.append('histogram of stored ψ:')
    counts = s['histogram']['counts']
    edges = s['histogram']['edges']
    peak = max(max(counts), 1)
    for k, c in enumerate(counts):
        bar = '#' * int(round(40 * c / peak))
        lines.append(f'  ({edges[k]:.1f}, {edges[k + 1]:.1f}] {c:>12,} {bar}')
    return '\n'.join(lines)


def generate_labels(rows: Sequence[Traverse], cols: Sequence[Traverse] | None = None,
                    out_path: str | None = None, fov_deg: float = DEFAULT_FOV_DEG,
                    radius: float = DEFAULT_RADIUS_M, chunk: int = DEFAULT_CHUNK,
                    progress: bool = False, kind: str = 'strong') -> tuple[str | None, dict]:
    """
    Label one set of traverses (cols None) or queries (rows) against a map (cols).

    Writes the .npz when out_path is given; returns (path, summary).
    """
    within = cols is None
    xy_r, yaw_r = planar(concat_poses(rows))
    xy_c, yaw_c = (None, None) if within else planar(concat_poses(cols))
    t0 = time.perf_counter()
    i, j, psi = compute_pairs(xy_r, yaw_r, xy_c, yaw_c, fov_deg, radius, chunk, progress)
    elapsed = time.perf_counter() - t0
    n_rows = len(xy_r)
    n_cols = n_rows if within else len(xy_c)
    if max(n_rows, n_cols) >= 2 ** 31:
        raise VPRError('too many images for int32 indices')
    summary = summarize(i, psi, n_rows, n_cols, within)
    summary['seconds'] = round(elapsed, 3)
    meta = {'version': LABELS_VERSION, 'mode': 'within' if within else 'query_map',
            'symmetric': within, 'kind': kind, 'fov_deg': float(fov_deg), 'radius': float(radius),
            'min_psi': MIN_PSI, 'n_rows': n_rows, 'n_cols': n_cols, 'rows': meta_side(rows),
            'cols': meta_side(rows if within else cols), 'summary': summary}
    if out_path:
        save_labels(out_path, i, j, psi, meta)
    return out_path, summary


def save_labels(path: str, i, j, psi, meta: dict) -> str:
    """Write the sparse label file atomically (core atomic_io: temp file, fsync, rename)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, i=np.asarray(i, dtype=np.int32),
                        j=np.asarray(j, dtype=np.int32), psi=np.asarray(psi, dtype=np.float32),
                        meta=np.asarray(json.dumps(meta)))
    write_atomic(path, buffer.getvalue())
    return path


def read_label_meta(path: str) -> dict:
    """Metadata of a label file (θ, r, mode, traverses, summary)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z['meta']))


def load_labels(path: str) -> sp.csr_matrix:
    """
    ψ as a CSR matrix psi[i, j] (float32); absent entries are ψ = 0, the hard negatives.

    Within one set the matrix is square and symmetric (both directions filled, no diagonal);
    for query × map it has a row per query image and a column per map image.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            i, j, psi = z['i'].astype(np.int64), z['j'].astype(np.int64), z['psi']
            meta = json.loads(str(z['meta']))
    except (OSError, KeyError, ValueError) as exc:
        raise VPRError(f'cannot read labels {path}: {exc}') from exc
    shape = (int(meta['n_rows']), int(meta['n_cols']))
    if meta.get('symmetric'):
        i, j, psi = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([psi, psi])
    m = sp.coo_matrix((psi.astype(np.float32), (i, j)), shape=shape).tocsr()
    m.sort_indices()
    return m


def default_out_path(rows: Sequence[Traverse], cols: Sequence[Traverse] | None) -> str:
    """Label file next to the first index: <names>_labels.npz or <query>__vs__<map>_labels.npz."""
    folder = os.path.dirname(rows[0].index_path)
    name = '+'.join(t.name for t in rows)
    if cols is not None:
        name = f"{name}__vs__{'+'.join(t.name for t in cols)}"
    return os.path.join(folder, f'{name}_labels.npz')


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `vpr-labels`."""
    ap = argparse.ArgumentParser(
        prog='vpr-labels',
        description='Graded similarity ψ (2D FoV overlap) for image pairs of TB-Places-style '
                    'traverses (strong, from 6DOF poses) or GPS+compass CSVs (weak).')
    ap.add_argument('sources', nargs='*',
                    help='index .json files, folders holding them, or weak .csv files '
                         '(easting,northing,heading_deg); labelled within the whole set')
    ap.add_argument('--names', nargs='+', help='traverse names to pick from the sources/root')
    ap.add_argument('--root', help='folder to look up --names/--map/--query in')
    ap.add_argument('--map', nargs='+', dest='map_', metavar='MAP',
                    help='map traverses (names or paths): label queries × map')
    ap.add_argument('--query', nargs='+', help='query traverses (names or paths)')
    add_fov_arguments(ap, radius=None)
    ap.add_argument('--out', help='output .npz (default: next to the first index)')
    ap.add_argument('--chunk', type=int, default=DEFAULT_CHUNK)
    ap.add_argument('--no-progress', action='store_true')
    args = ap.parse_args(argv)
    try:
        base = [args.root] if args.root else list(args.sources)
        if args.map_ or args.query:
            if not (args.map_ and args.query):
                raise VPRError('--map and --query go together')
            cols = _load_sources(base, args.map_) if base else _load_sources(args.map_, None)
            rows = _load_sources(base, args.query) if base else _load_sources(args.query, None)
        else:
            if not base and not args.names:
                raise VPRError('give index files, a folder, or --root with --names')
            rows = _load_sources(base or ['.'], args.names)
            cols = None
        weak = any(t.index_path.lower().endswith('.csv') for t in rows + (cols or []))
        radius = args.radius if args.radius is not None else (
            WEAK_RADIUS_M if weak else DEFAULT_RADIUS_M)
        out = args.out or default_out_path(rows, cols)
        n_r = sum(len(t) for t in rows)
        what = f'{n_r} images' if cols is None else \
            f'{n_r} query × {sum(len(t) for t in cols)} map images'
        print(f'vpr-labels: {what}, θ = {args.fov_deg:g}°, r = {radius:g} m '
              f"({'weak' if weak else 'strong'})", flush=True)
        path, summary = generate_labels(rows, cols, out, args.fov_deg, radius, args.chunk,
                                        not args.no_progress, 'weak' if weak else 'strong')
    except VPRError as exc:
        print(f'vpr-labels: error: {exc}', file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f'{summary["seconds"]:.2f} s; wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())


__all__ = ['brute_force_pairs', 'compute_pairs', 'format_summary', 'generate_labels',
           'load_labels', 'load_weak_csv', 'main', 'planar', 'read_label_meta', 'save_labels',
           'summarize', 'MIN_PSI']
