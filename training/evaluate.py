"""
``vpr-eval``: compare place-recognition models on one dataset, side by side, in one report.

A trained model only means something next to the off-the-shelf baseline on the same images, so
the built-in ImageNet MobileNetV2-GeM encoder is always evaluated alongside the ``--model`` files.
Two dataset layouts are read:

* TB-Places-style traverses (``--map INDEX.json ... --query INDEX.json ...``): a retrieved map
  image is a hit when the 2D field-of-view overlap ψ with the query is > 0.5 (``vpr_ros.core.fov``,
  the GCL paper's graded similarity) or, with ``--hit distance``, when it lies within
  ``--max-dist`` metres.
* A reference/query folder pair with a CSV listing the correct references of each query
  (``--folder DIR``: ``DIR/ref``, ``DIR/query``, ``DIR/ground_truth.csv``), as VPR-Bench sets.

Reported per model (and per model + PCA whitening fitted on the map, ``--whiten-dim``): R@k,
mAP@k, AP over all query-map pairs; recall@k and precision-recall curves as PNG, every number
in a JSON file. Unreadable images are skipped and counted, never fatal.
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from vpr_ros.core.fov import enclosing_circle, fov_overlap_many, yaw_from_quaternion
from vpr_ros.core.metrics import DEFAULT_KS, evaluate_descriptors, positives_from_distance

DEFAULT_MODEL_NAME = 'imagenet-mobilenetv2-gem'
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


# ----------------------------------------------------------------------------- data sets

def _read_traverses(index_paths: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Image paths and (N, 7) poses of one or more traverses, concatenated in order."""
    from vpr_ros.training.dataset import load_traverse
    paths: list[str] = []
    poses = []
    for p in index_paths:
        t = load_traverse(p)
        paths += [str(x) for x in t.image_paths]
        poses.append(np.asarray(t.poses, dtype=np.float64).reshape(-1, 7))
    return paths, (np.concatenate(poses) if poses else np.zeros((0, 7)))


def read_folder_pair(folder: str, gt_csv: Optional[str] = None,
                     ref_sub: str = 'ref', query_sub: str = 'query'
                     ) -> tuple[list[str], list[str], list[list[str]]]:
    """
    Map images (every image in ``ref/``), queries and their correct references from a CSV.

    The CSV has a header and rows ``query_path,ref_path;ref_path;...`` relative to ``folder``
    (the layout of the corridor set). Returns absolute map paths, query paths, and per query
    the absolute paths of its correct references.
    """
    folder = os.path.abspath(folder)
    gt_csv = gt_csv or os.path.join(folder, 'ground_truth.csv')
    ref_dir = os.path.join(folder, ref_sub)
    if not os.path.isdir(ref_dir):
        raise FileNotFoundError(f'no {ref_sub}/ folder in {folder}')
    map_paths = sorted(os.path.join(ref_dir, f) for f in os.listdir(ref_dir)
                       if f.lower().endswith(IMAGE_EXTS))
    query_paths, refs = [], []
    with open(gt_csv, newline='') as f:
        rows = list(csv.reader(f))
    for row in rows[1:] if rows and not _is_image(rows[0][0]) else rows:
        if not row or not row[0].strip():
            continue
        query_paths.append(os.path.join(folder, row[0].strip()))
        cell = row[1] if len(row) > 1 else ''
        refs.append([os.path.join(folder, r.strip()) for r in cell.split(';') if r.strip()])
    if not query_paths:
        raise ValueError(f'{gt_csv} lists no query')
    return map_paths, query_paths, refs


def _is_image(name: str) -> bool:
    return name.strip().lower().endswith(IMAGE_EXTS)


def psi_positives(map_poses: np.ndarray, query_poses: np.ndarray, threshold: float = 0.5,
                  fov_deg: float = 90.0, radius: float = 3.5) -> list[np.ndarray]:
    """
    Map images with ψ(query, map) > threshold, per query; exact ψ on pre-filtered pairs only.

    Two sectors can only overlap when their enclosing circles do, so a k-d tree on the circle
    centres finds every candidate pair without the n² all-pairs computation.
    """
    q_xy, m_xy = query_poses[:, :2], map_poses[:, :2]
    q_yaw = np.atleast_1d(yaw_from_quaternion(query_poses[:, 3:7])) if len(query_poses) else []
    m_yaw = np.atleast_1d(yaw_from_quaternion(map_poses[:, 3:7])) if len(map_poses) else []
    out = [np.zeros(0, np.int64) for _ in range(len(q_xy))]
    if len(q_xy) == 0 or len(m_xy) == 0:
        return out
    off, rho = enclosing_circle(fov_deg, radius)
    qc = q_xy + off * np.stack([np.cos(q_yaw), np.sin(q_yaw)], axis=1)
    mc = m_xy + off * np.stack([np.cos(m_yaw), np.sin(m_yaw)], axis=1)
    cand = cKDTree(mc).query_ball_point(qc, r=2.0 * rho + 1e-9)
    qi = np.concatenate([np.full(len(c), i, np.int64) for i, c in enumerate(cand)])
    mj = np.concatenate([np.asarray(c, np.int64) for c in cand])
    if len(qi) == 0:
        return out
    psi = np.concatenate([
        fov_overlap_many(q_xy[qi[s:s + 100000]], q_yaw[qi[s:s + 100000]],
                         m_xy[mj[s:s + 100000]], m_yaw[mj[s:s + 100000]], fov_deg, radius)
        for s in range(0, len(qi), 100000)])
    keep = psi > threshold
    qi, mj = qi[keep], mj[keep]
    order = np.lexsort((mj, qi))
    qi, mj = qi[order], mj[order]
    bounds = np.searchsorted(qi, np.arange(len(q_xy) + 1))
    return [mj[bounds[i]:bounds[i + 1]] for i in range(len(q_xy))]


# ----------------------------------------------------------------------------- embedding

def _load(path: str) -> np.ndarray:
    from vpr_ros.training.dataset import load_image
    img = load_image(path)
    if img is None:
        raise ValueError(f'cannot read {path}')
    return img


def _file_key(path: str) -> str:
    """Cache key of an image file: a changed file (size or mtime) is embedded again."""
    st = os.stat(path)
    return f'{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}'


def _cache_file(cache_dir: str, fingerprint: str) -> str:
    safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in fingerprint)
    return os.path.join(cache_dir, f'desc_{safe[:120]}.npz')


def _load_cache(path: str) -> dict[str, np.ndarray]:
    """Descriptors cached by an earlier run of the same model; empty when absent or broken."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {str(k): d for k, d in zip(z['keys'], z['descs'])}
    except (OSError, KeyError, ValueError):
        return {}


def _save_cache(path: str, cache: dict[str, np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, keys=np.array(list(cache), dtype=str),
             descs=np.stack(list(cache.values())).astype(np.float32))
    os.replace(tmp, path)


def embed_paths(encoder, paths: Sequence[str], batch_size: int = 32, desc: str = 'embed',
                progress: bool = True, cache: Optional[dict] = None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """
    Descriptors of image files; unreadable files give a zero row, a False in the mask, a note.

    Skipping instead of raising keeps one corrupt file from voiding a long evaluation. With a
    ``cache`` dict (file key → descriptor, one per model) files seen before are not embedded
    again and new ones are added to it.
    """
    descs: list[Optional[np.ndarray]] = [None] * len(paths)
    errors: list[str] = []
    bar = tqdm(total=len(paths), desc=desc, unit='img', disable=not progress, leave=False)
    for s in range(0, len(paths), batch_size):
        imgs, idx = [], []
        for i in range(s, min(s + batch_size, len(paths))):
            if cache is not None:
                try:
                    hit = cache.get(_file_key(paths[i]))
                except OSError:
                    hit = None
                if hit is not None:
                    descs[i] = hit
                    continue
            try:
                imgs.append(_load(paths[i]))
                idx.append(i)
            except Exception as exc:  # noqa: BLE001 - corrupt or missing file: skip, count
                errors.append(f'{paths[i]}: {type(exc).__name__}: {exc}')
        if imgs:
            out = np.asarray(encoder.embed(imgs, 'rgb8'), dtype=np.float32)
            for i, d in zip(idx, out):
                descs[i] = d
                if cache is not None:
                    cache[_file_key(paths[i])] = d
        bar.update(min(s + batch_size, len(paths)) - s)
    bar.close()
    ok = np.array([d is not None for d in descs], dtype=bool)
    dim = next((len(d) for d in descs if d is not None), int(getattr(encoder, 'dim', 1)))
    arr = np.zeros((len(paths), dim), np.float32)
    if ok.any():
        arr[ok] = np.stack([d for d in descs if d is not None])
    return arr, ok, errors


def _resolve_models(models: Sequence[Any], include_default: bool, device: str
                    ) -> list[tuple[str, str, Any]]:
    """(row name, source, encoder) per model; str paths are loaded, encoders used as they are."""
    def build_encoder(path: str, device: str):
        from vpr_ros.model.encoder import (
            build_encoder as build,  # torch only when a file is asked for
        )
        return build(path, device=device)

    items: list[tuple[str, str, Any]] = []
    if include_default:
        items.append((DEFAULT_MODEL_NAME, '', build_encoder('', device=device)))
    for i, m in enumerate(models):
        if isinstance(m, (tuple, list)) and len(m) == 2:
            name, enc = m
            items.append((str(name), f'<{name}>', enc))
        elif isinstance(m, (str, os.PathLike)):
            path = os.fspath(m)
            name = os.path.splitext(os.path.basename(path))[0] or f'model{i}'
            items.append((name, path, build_encoder(path, device=device)))
        else:
            items.append((str(getattr(m, 'name', f'model{i}')), '<in-memory>', m))
    seen: dict[str, int] = {}
    out = []
    for name, src, enc in items:  # unique row names even for two files called model.pt
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f'{name}#{seen[name]}', src, enc))
    return out


# ----------------------------------------------------------------------------- evaluation

def evaluate(map_indexes: Sequence[str] = (), query_indexes: Sequence[str] = (),
             folder: Optional[str] = None, gt_csv: Optional[str] = None,
             models: Sequence[Any] = (), include_default: bool = True, hit: str = 'psi',
             psi_threshold: float = 0.5, fov_deg: float = 90.0, radius: float = 3.5,
             max_dist: float = 2.0, ks: Sequence[int] = DEFAULT_KS,
             whiten_dim: Optional[int] = None, out_dir: Optional[str] = None,
             device: str = 'auto', batch_size: int = 32, progress: bool = True,
             verbose: bool = True, cache_dir: Optional[str] = None) -> dict:
    """
    Evaluate every model on one dataset; returns (and with ``out_dir`` writes) the report.

    ``models`` holds model file paths, ``Encoder`` objects or ``(name, encoder)`` pairs, so
    training can validate the network it holds in memory. ``cache_dir`` keeps descriptors per
    model fingerprint, so a repeated evaluation (new model beside the baseline) skips the rest.
    The result's ``rows`` list has one entry per model (and per whitened model) with
    ``recall``/``map`` dicts keyed by k, ``ap``, curves and counts; ``dataset`` says what was
    evaluated and what was skipped.
    """
    t0 = time.monotonic()
    ks = tuple(sorted({int(k) for k in ks}))
    if hit not in ('psi', 'distance'):
        raise ValueError(f"hit must be 'psi' or 'distance', not {hit!r}")
    if folder:
        if map_indexes or query_indexes:
            raise ValueError('give either a folder pair or --map/--query traverses, not both')
        map_paths, query_paths, refs = read_folder_pair(folder, gt_csv)
        mode = 'folder'
    else:
        if not map_indexes or not query_indexes:
            raise ValueError('need --map and --query traverse indexes (or --folder)')
        map_paths, map_poses = _read_traverses(map_indexes)
        query_paths, query_poses = _read_traverses(query_indexes)
        mode = 'traverse'
    if not map_paths or not query_paths:
        raise ValueError(f'empty dataset: {len(map_paths)} map, {len(query_paths)} query images')

    encoders = _resolve_models(models, include_default, device)
    if not encoders:
        raise ValueError('no model to evaluate')

    # Embed everything first: the images skipped must be the same for every model.
    embedded, map_ok, query_ok, skipped_files = [], None, None, []
    cache_hits = {}
    for name, src, enc in encoders:
        fp = str(getattr(enc, 'fingerprint', '') or '')
        # Only models with a fingerprint (a file hash) are cached: in-memory nets change.
        cpath = _cache_file(cache_dir, fp) if cache_dir and fp and src != '<in-memory>' else None
        cache = _load_cache(cpath) if cpath else None
        n_cached = len(cache) if cache is not None else 0
        md, mok, merr = embed_paths(enc, map_paths, batch_size, f'{name} map', progress, cache)
        qd, qok, qerr = embed_paths(enc, query_paths, batch_size, f'{name} query', progress,
                                    cache)
        if cpath and cache and len(cache) > n_cached:
            _save_cache(cpath, cache)
        if cache is not None:  # files neither newly embedded nor unreadable came from the cache
            cache_hits[name] = (len(map_paths) + len(query_paths) - (len(cache) - n_cached)
                                - len(merr) - len(qerr))
        embedded.append((md, qd))
        map_ok = mok if map_ok is None else map_ok & mok
        query_ok = qok if query_ok is None else query_ok & qok
        if not skipped_files:
            skipped_files = merr + qerr
    m_keep, q_keep = np.flatnonzero(map_ok), np.flatnonzero(query_ok)
    if len(m_keep) == 0 or len(q_keep) == 0:
        raise ValueError('no readable map or query image')

    # Ground truth on the images that could be read.
    if mode == 'folder':
        where = {os.path.normpath(map_paths[j]): n for n, j in enumerate(m_keep)}
        positives = [np.array(sorted({where[os.path.normpath(r)] for r in refs[i]
                                      if os.path.normpath(r) in where}), dtype=np.int64)
                     for i in q_keep]
        unknown = sum(1 for i in q_keep for r in refs[i] if not os.path.exists(r))
        hit_desc = {'rule': 'csv', 'csv': gt_csv or os.path.join(folder, 'ground_truth.csv'),
                    'refs_not_found': unknown}
    elif hit == 'psi':
        positives = psi_positives(map_poses[m_keep], query_poses[q_keep], psi_threshold,
                                  fov_deg, radius)
        hit_desc = {'rule': 'psi', 'threshold': psi_threshold, 'fov_deg': fov_deg,
                    'radius_m': radius}
    else:
        positives = positives_from_distance(query_poses[q_keep, :2], map_poses[m_keep, :2],
                                            max_dist)
        hit_desc = {'rule': 'distance', 'max_dist_m': max_dist}

    rows = []
    for (name, src, enc), (md, qd) in zip(encoders, embedded):
        md, qd = md[m_keep], qd[q_keep]
        base = {'model': src, 'fingerprint': str(getattr(enc, 'fingerprint', '')),
                'dim': int(md.shape[1])}
        rows.append({'name': name, 'whitened': False, **base,
                     **evaluate_descriptors(qd, md, positives, ks)})
        if whiten_dim:
            from vpr_ros.model.whitening import apply_whitening, fit_pca_whitening
            dim = int(min(whiten_dim, md.shape[1], max(len(md) - 1, 1)))
            mean, proj = fit_pca_whitening(md, dim)
            mw, qw = apply_whitening(md, mean, proj), apply_whitening(qd, mean, proj)
            rows.append({'name': f'{name} +PCAw{dim}', 'whitened': True, **base, 'dim': dim,
                         'whiten_dim_requested': int(whiten_dim),
                         **evaluate_descriptors(qw, mw, positives, ks)})

    report = {
        'dataset': {
            'mode': mode, 'folder': folder, 'map': list(map_indexes), 'query': list(query_indexes),
            'n_map': int(len(m_keep)), 'n_query': int(len(q_keep)),
            'skipped': {'map': int((~map_ok).sum()), 'query': int((~query_ok).sum()),
                        'files': skipped_files},
            'hit': hit_desc,
        },
        'ks': list(ks),
        'cache': {'dir': cache_dir, 'hits': cache_hits},
        'rows': rows,
        'seconds': round(time.monotonic() - t0, 2),
    }
    if out_dir:
        report['files'] = write_report(report, out_dir)
    if verbose:
        print(format_table(report))
    return report


# ----------------------------------------------------------------------------- reporting

def _fmt(x: float) -> str:
    return '  n/a' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.3f}'


def format_table(report: dict) -> str:
    """Format the printed table: one line per model row, R@k, mAP@k and AP side by side."""
    ks = report['ks']
    ds = report['dataset']
    name_w = max([len('model')] + [len(r['name']) for r in report['rows']])
    head = (f'{"model":<{name_w}} {"dim":>5} ' + ' '.join(f'{"R@" + str(k):>6}' for k in ks)
            + ' ' + ' '.join(f'{"mAP@" + str(k):>7}' for k in ks) + f' {"AP":>6}')
    lines = [f'{ds["mode"]} set: {ds["n_map"]} map, {ds["n_query"]} query images '
             f'(skipped {ds["skipped"]["map"]} map, {ds["skipped"]["query"]} query); '
             f'hit rule {ds["hit"]["rule"]}', head, '-' * len(head)]
    for r in report['rows']:
        lines.append(f'{r["name"]:<{name_w}} {r["dim"]:>5} '
                     + ' '.join(f'{_fmt(r["recall"][k]):>6}' for k in ks) + ' '
                     + ' '.join(f'{_fmt(r["map"][k]):>7}' for k in ks)
                     + f' {_fmt(r["ap"]):>6}')
    r0 = report['rows'][0]
    lines.append(f'{r0["n_evaluated"]} queries evaluated, {r0["n_without_positive"]} without '
                 f'any positive left out; {report["seconds"]:.1f} s')
    return '\n'.join(lines)


def write_report(report: dict, out_dir: str) -> dict:
    """Write the JSON (every number), the recall@k and precision-recall PNGs; return paths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    files = {'json': os.path.join(out_dir, 'eval_results.json'),
             'recall_png': os.path.join(out_dir, 'recall_at_k.png'),
             'pr_png': os.path.join(out_dir, 'precision_recall.png')}
    ds = report['dataset']
    where = ds['folder'] or ', '.join(os.path.basename(p) for p in ds['query'])

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in report['rows']:
        c = r['recall_curve']
        ax.plot(c['k'], c['recall'], marker='.', label=r['name'],
                linestyle='--' if r['whitened'] else '-')
    ax.set_xlabel('k (retrieved map images)')
    ax.set_ylabel('recall@k')
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f'Recall@k, {ds["n_query"]} queries / {ds["n_map"]} map\n{where}', fontsize=9)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(files['recall_png'], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in report['rows']:
        c = r['pr_curve']
        ax.plot(c['recall'], c['precision'], label=f'{r["name"]} (AP {_fmt(r["ap"])})',
                linestyle='--' if r['whitened'] else '-')
    ax.set_xlabel('recall (all query-map pairs)')
    ax.set_ylabel('precision')
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f'Precision-recall over all pairs\n{where}', fontsize=9)
    ax.legend(fontsize=8, loc='upper right')
    fig.tight_layout()
    fig.savefig(files['pr_png'], dpi=110)
    plt.close(fig)

    with open(files['json'], 'w') as f:
        json.dump({**report, 'files': files}, f, indent=1, default=_json_default)
    return files


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f'not JSON serialisable: {type(o).__name__}')


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vpr-eval', description=__doc__.split('\n')[0])
    src = p.add_argument_group('dataset (traverses or a folder pair)')
    src.add_argument('--map', nargs='+', default=[], metavar='INDEX.json',
                     help='map traverse index(es), TB-Places style')
    src.add_argument('--query', nargs='+', default=[], metavar='INDEX.json',
                     help='query traverse index(es)')
    src.add_argument('--folder', help='folder with ref/, query/ and ground_truth.csv')
    src.add_argument('--gt', help='ground-truth CSV (default FOLDER/ground_truth.csv)')
    hit = p.add_argument_group('hit rule for traverses')
    hit.add_argument('--hit', choices=('psi', 'distance'), default='psi')
    hit.add_argument('--psi-threshold', type=float, default=0.5)
    hit.add_argument('--fov-deg', type=float, default=90.0, help='FoV sector angle θ')
    hit.add_argument('--radius', type=float, default=3.5, help='FoV sector radius r (m)')
    hit.add_argument('--max-dist', type=float, default=2.0, help='distance hit threshold (m)')
    p.add_argument('--model', action='append', default=[],
                   help='model file (repeatable); the ImageNet default is always included')
    p.add_argument('--no-default', action='store_true', help='leave out the ImageNet default')
    p.add_argument('--whiten-dim', type=int, help='also report PCA whitening to N dims')
    p.add_argument('--k', type=int, nargs='+', default=list(DEFAULT_KS), help='k values')
    p.add_argument('--out', help='output folder for JSON and PNGs')
    p.add_argument('--device', default='auto')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--cache', help='descriptor cache folder (per model fingerprint)')
    p.add_argument('--no-progress', action='store_true')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args.map, args.query, folder=args.folder, gt_csv=args.gt,
                          models=args.model, include_default=not args.no_default, hit=args.hit,
                          psi_threshold=args.psi_threshold, fov_deg=args.fov_deg,
                          radius=args.radius, max_dist=args.max_dist, ks=args.k,
                          whiten_dim=args.whiten_dim, out_dir=args.out, device=args.device,
                          batch_size=args.batch_size, progress=not args.no_progress,
                          cache_dir=args.cache)
    except (ValueError, OSError) as exc:
        print(f'vpr-eval: {exc}', file=sys.stderr)
        return 1
    if 'files' in report:
        print('wrote ' + ', '.join(report['files'].values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
