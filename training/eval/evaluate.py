"""
``vpr-eval``: compare place-recognition models on one dataset, side by side, in one report.

A trained model only means something next to the off-the-shelf baseline on the same images, so
the built-in ImageNet MobileNetV2-GeM encoder is always evaluated alongside the ``--model`` files.
Two dataset layouts are read:

* TB-Places-style traverses (``--map INDEX.json ... --query INDEX.json ...``): a retrieved map
  image is a hit when the 2D field-of-view overlap ψ with the query is > 0.5 (``vpr_ros.core.psi``,
  the GCL paper's graded similarity) or, with ``--hit distance``, when it lies within
  ``--max-dist`` metres.
* A reference/query folder pair with a CSV listing the correct references of each query
  (``--folder DIR``: ``DIR/ref``, ``DIR/query``, ``DIR/ground_truth.csv``), as VPR-Bench sets.

Reported per model (and per model + PCA whitening fitted on the map, ``--whiten-dim``): R@k,
mAP@k, AP over all query-map pairs; recall@k and precision-recall curves as PNG, every number
in a JSON file. Unreadable images are skipped and counted, never fatal.
"""
import argparse
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M
from vpr_ros.core.metrics import DEFAULT_KS, evaluate_descriptors, positives_from_distance
from vpr_ros.core.psi import add_fov_arguments, POSITIVE_PSI
from vpr_ros.core.psi import positives as psi_positives
from vpr_ros.training.data.dataset import traverse_paths_poses
from vpr_ros.training.data.folder_pair import read_folder_pair
from vpr_ros.training.eval.embedding import DescriptorCache, embed_paths, resolve_models
from vpr_ros.training.eval.eval_report import format_table, write_report
from vpr_ros.training.eval.loop_cli import add_loop_arguments, run_from_args

# ----------------------------------------------------------------------------- evaluation

def load_dataset(map_indexes: Sequence[str], query_indexes: Sequence[str],
                 folder: Optional[str], gt_csv: Optional[str]) -> dict:
    """Image paths and what the ground truth needs: poses (traverses) or refs (folder pair)."""
    if folder:
        if map_indexes or query_indexes:
            raise ValueError('give either a folder pair or --map/--query traverses, not both')
        map_paths, query_paths, refs = read_folder_pair(folder, gt_csv)
        data = {'mode': 'folder', 'refs': refs}
    else:
        if not map_indexes or not query_indexes:
            raise ValueError('need --map and --query traverse indexes (or --folder)')
        map_paths, map_poses = traverse_paths_poses(map_indexes)
        query_paths, query_poses = traverse_paths_poses(query_indexes)
        data = {'mode': 'traverse', 'map_poses': map_poses, 'query_poses': query_poses}
    if not map_paths or not query_paths:
        raise ValueError(f'empty dataset: {len(map_paths)} map, {len(query_paths)} query images')
    return {**data, 'map_paths': map_paths, 'query_paths': query_paths}


def embed_all(encoders, data: dict, batch_size: int, progress: bool,
              cache_dir: Optional[str]) -> dict:
    """
    Descriptors of every image for every model, and the images all models could read.

    Everything is embedded first: the images skipped must be the same for every model.
    """
    map_paths, query_paths = data['map_paths'], data['query_paths']
    embedded, map_ok, query_ok, skipped_files = [], None, None, []
    cache_hits = {}
    for name, src, enc in encoders:
        cache = DescriptorCache.for_model(cache_dir, enc, src)
        md, mok, merr = embed_paths(enc, map_paths, batch_size, f'{name} map', progress,
                                    cache.entries)
        qd, qok, qerr = embed_paths(enc, query_paths, batch_size, f'{name} query', progress,
                                    cache.entries)
        if cache.entries is not None:  # neither newly embedded nor unreadable: from the cache
            cache_hits[name] = (len(map_paths) + len(query_paths) - cache.n_added
                                - len(merr) - len(qerr))
        cache.save()
        embedded.append((md, qd))
        map_ok = mok if map_ok is None else map_ok & mok
        query_ok = qok if query_ok is None else query_ok & qok
        if not skipped_files:
            skipped_files = merr + qerr
    m_keep, q_keep = np.flatnonzero(map_ok), np.flatnonzero(query_ok)
    if len(m_keep) == 0 or len(q_keep) == 0:
        raise ValueError('no readable map or query image')
    return {'embedded': embedded, 'map_ok': map_ok, 'query_ok': query_ok, 'm_keep': m_keep,
            'q_keep': q_keep, 'skipped_files': skipped_files, 'cache_hits': cache_hits}


def ground_truth(data: dict, m_keep: np.ndarray, q_keep: np.ndarray, hit: str,
                 gt_csv: Optional[str], folder: Optional[str], psi_threshold: float,
                 fov_deg: float, radius: float, max_dist: float) -> tuple[list, dict]:
    """Positives per query on the images that could be read, and the hit rule's description."""
    if data['mode'] == 'folder':
        map_paths, refs = data['map_paths'], data['refs']
        where = {os.path.normpath(map_paths[j]): n for n, j in enumerate(m_keep)}
        positives = [np.array(sorted({where[os.path.normpath(r)] for r in refs[i]
                                      if os.path.normpath(r) in where}), dtype=np.int64)
                     for i in q_keep]
        unknown = sum(1 for i in q_keep for r in refs[i] if not os.path.exists(r))
        return positives, {'rule': 'csv', 'refs_not_found': unknown,
                           'csv': gt_csv or os.path.join(folder, 'ground_truth.csv')}
    map_poses, query_poses = data['map_poses'][m_keep], data['query_poses'][q_keep]
    if hit == 'psi':
        return (psi_positives(map_poses, query_poses, psi_threshold, fov_deg, radius),
                {'rule': 'psi', 'threshold': psi_threshold, 'fov_deg': fov_deg,
                 'radius_m': radius})
    return (positives_from_distance(query_poses[:, :2], map_poses[:, :2], max_dist),
            {'rule': 'distance', 'max_dist_m': max_dist})


def score_rows(encoders, emb: dict, positives: list, ks: tuple, whiten_dim: Optional[int]
               ) -> list[dict]:
    """One report row per model, and one more per model with PCA whitening fitted on the map."""
    rows = []
    for (name, src, enc), (md, qd) in zip(encoders, emb['embedded']):
        md, qd = md[emb['m_keep']], qd[emb['q_keep']]
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
    return rows


def dataset_summary(data: dict, folder, map_indexes, query_indexes, emb: dict,
                    hit_desc: str) -> dict:
    """Describe the evaluated data for the report: sizes, what was skipped, what a hit is."""
    return {
        'mode': data['mode'], 'folder': folder, 'map': list(map_indexes),
        'query': list(query_indexes), 'n_map': int(len(emb['m_keep'])),
        'n_query': int(len(emb['q_keep'])),
        'skipped': {'map': int((~emb['map_ok']).sum()),
                    'query': int((~emb['query_ok']).sum()), 'files': emb['skipped_files']},
        'hit': hit_desc,
    }


def evaluate(map_indexes: Sequence[str] = (), query_indexes: Sequence[str] = (),
             folder: Optional[str] = None, gt_csv: Optional[str] = None,
             models: Sequence[Any] = (), include_default: bool = True, hit: str = 'psi',
             psi_threshold: float = POSITIVE_PSI, fov_deg: float = DEFAULT_FOV_DEG,
             radius: float = DEFAULT_RADIUS_M,
             max_dist: float = 2.0, ks: Sequence[int] = DEFAULT_KS,
             whiten_dim: Optional[int] = None, out_dir: Optional[str] = None,
             device: str = 'auto', batch_size: int = 32, progress: bool = True,
             verbose: bool = True, cache_dir: Optional[str] = None,
             image_size: Optional[Sequence[int]] = None) -> dict:
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
    data = load_dataset(map_indexes, query_indexes, folder, gt_csv)
    encoders = resolve_models(models, include_default, device, image_size)
    if not encoders:
        raise ValueError('no model to evaluate')
    emb = embed_all(encoders, data, batch_size, progress, cache_dir)
    m_keep, q_keep = emb['m_keep'], emb['q_keep']
    positives, hit_desc = ground_truth(data, m_keep, q_keep, hit, gt_csv, folder,
                                        psi_threshold, fov_deg, radius, max_dist)
    report = {
        'dataset': dataset_summary(data, folder, map_indexes, query_indexes, emb, hit_desc),
        'ks': list(ks),
        'cache': {'dir': cache_dir, 'hits': emb['cache_hits']},
        'rows': score_rows(encoders, emb, positives, ks, whiten_dim),
        'seconds': round(time.monotonic() - t0, 2),
    }
    if out_dir:
        report['files'] = write_report(report, out_dir)
    if verbose:
        print(format_table(report))
    return report


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
    hit.add_argument('--max-dist', type=float, default=2.0, help='distance hit threshold (m)')
    add_fov_arguments(p, psi_threshold=True)
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
    p.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'),
                   help="network input size (default: the model's own), e.g. 32 64 for small "
                        'images instead of squashing them into 224x224')
    add_loop_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.loop or args.loop_folder:
            report = run_from_args(args)
        else:
            report = evaluate(args.map, args.query, folder=args.folder, gt_csv=args.gt,
                              models=args.model, include_default=not args.no_default,
                              hit=args.hit, psi_threshold=args.psi_threshold,
                              fov_deg=args.fov_deg, radius=args.radius,
                              max_dist=args.max_dist, ks=args.k, whiten_dim=args.whiten_dim,
                              out_dir=args.out, device=args.device,
                              batch_size=args.batch_size, progress=not args.no_progress,
                              cache_dir=args.cache, image_size=args.image_size)
    except (ValueError, OSError) as exc:
        print(f'vpr-eval: {exc}', file=sys.stderr)
        return 1
    if 'files' in report:
        print('wrote ' + ', '.join(report['files'].values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
