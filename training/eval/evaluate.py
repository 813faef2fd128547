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
import csv
import io
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M
from vpr_ros.core.metrics import DEFAULT_KS, evaluate_descriptors, positives_from_distance
from vpr_ros.core.psi import add_fov_arguments, POSITIVE_PSI
from vpr_ros.core.psi import positives as psi_positives
from vpr_ros.training.eval_report import format_table, write_report

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
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(list(cache), dtype=str),
             descs=np.stack(list(cache.values())).astype(np.float32))
    write_atomic(path, buffer.getvalue())


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


def _resolve_models(models: Sequence[Any], include_default: bool, device: str,
                    image_size: Optional[Sequence[int]] = None) -> list[tuple[str, str, Any]]:
    """(row name, source, encoder) per model; str paths are loaded, encoders used as they are."""
    def build_encoder(path: str, device: str):
        from vpr_ros.model.encoder import (
            build_encoder as build,  # torch only when a file is asked for
        )
        return build(path, device=device, image_size=image_size)

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

def _load_dataset(map_indexes: Sequence[str], query_indexes: Sequence[str],
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
        map_paths, map_poses = _read_traverses(map_indexes)
        query_paths, query_poses = _read_traverses(query_indexes)
        data = {'mode': 'traverse', 'map_poses': map_poses, 'query_poses': query_poses}
    if not map_paths or not query_paths:
        raise ValueError(f'empty dataset: {len(map_paths)} map, {len(query_paths)} query images')
    return {**data, 'map_paths': map_paths, 'query_paths': query_paths}


def _embed_all(encoders, data: dict, batch_size: int, progress: bool,
               cache_dir: Optional[str]) -> dict:
    """
    Descriptors of every image for every model, and the images all models could read.

    Everything is embedded first: the images skipped must be the same for every model.
    """
    map_paths, query_paths = data['map_paths'], data['query_paths']
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
    return {'embedded': embedded, 'map_ok': map_ok, 'query_ok': query_ok, 'm_keep': m_keep,
            'q_keep': q_keep, 'skipped_files': skipped_files, 'cache_hits': cache_hits}


def _ground_truth(data: dict, m_keep: np.ndarray, q_keep: np.ndarray, hit: str,
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


def _score(encoders, emb: dict, positives: list, ks: tuple, whiten_dim: Optional[int]
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
    data = _load_dataset(map_indexes, query_indexes, folder, gt_csv)
    encoders = _resolve_models(models, include_default, device, image_size)
    if not encoders:
        raise ValueError('no model to evaluate')
    emb = _embed_all(encoders, data, batch_size, progress, cache_dir)
    m_keep, q_keep = emb['m_keep'], emb['q_keep']
    positives, hit_desc = _ground_truth(data, m_keep, q_keep, hit, gt_csv, folder,
                                        psi_threshold, fov_deg, radius, max_dist)
    report = {
        'dataset': dataset_summary(data, folder, map_indexes, query_indexes, emb, hit_desc),
        'ks': list(ks),
        'cache': {'dir': cache_dir, 'hits': emb['cache_hits']},
        'rows': _score(encoders, emb, positives, ks, whiten_dim),
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
    from vpr_ros.training.loop_mode import add_loop_arguments
    add_loop_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.loop or args.loop_folder:
            from vpr_ros.training.loop_mode import run_from_args
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
