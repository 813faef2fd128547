#!/usr/bin/env python3
"""
Plain PCA vs PCA whitening, fitted at export on the training traverses, on unseen gardens.

Why: a projection fitted at export shrinks the map and speeds search (issue 13), but whitening
fitted on training traverses was seen to cost 0.15-0.38 R@1 on unseen conditions. Measured
separately here: for each model (ImageNet default + the given files), R@1/R@5 on every test set
of the large benchmark for no projection, plain PCA-D (training/ship/projection.py) and whitening-D
(vpr_ros/model/whitening.py), both fitted on the descriptors of all training traverses (map +
query, as `vpr-train-demo --whiten-dim` exports), D in --dims. A hit is ψ > 0.5 (vpr-eval's
default). Descriptors come from vpr-eval's cache (same file keys), new ones are added to it.

    python bench/bench_pca_whitening.py --data-root /tmp/gcl/large/data \
        --cache /tmp/gcl/large/eval/cache --models /tmp/gcl/large/model_gcl_s0.pt \
        --out doc/results/pca_vs_whitening

Writes OUT.md (table + command) and OUT.json.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M  # noqa: E402
from vpr_ros.core.metrics import evaluate_descriptors  # noqa: E402
from vpr_ros.core.psi import POSITIVE_PSI  # noqa: E402
from vpr_ros.core.psi import positives as psi_positives  # noqa: E402
from vpr_ros.model.whitening import apply_whitening  # noqa: E402
from vpr_ros.training.data.dataset import traverse_paths_poses  # noqa: E402
from vpr_ros.training.demo.train_demo_sets import LARGE  # noqa: E402
from vpr_ros.training.eval.embedding import DescriptorCache, embed_paths  # noqa: E402
from vpr_ros.training.ship.projection import fit_projection  # noqa: E402


def embed(enc, paths: list, cache_dir: str) -> np.ndarray:
    """Descriptors of image files through vpr-eval's per-model cache (unreadable: an error)."""
    cache = DescriptorCache.for_model(cache_dir, enc)
    descs, ok, errors = embed_paths(enc, paths, 32, 'embed', False, cache.entries)
    cache.save()
    if not ok.all():
        raise SystemExit(f'unreadable images: {errors[:3]}')
    return descs


def traverse(root: str, name: str) -> tuple[list, np.ndarray]:
    return traverse_paths_poses([os.path.join(root, name, 'index.json')])


def rows_for(name: str, enc, args: argparse.Namespace) -> list:
    """Every (test set, projection) row of one model."""
    split = LARGE.split
    fit_paths = []
    for t in split.train_map + split.train_query:
        fit_paths += traverse(args.data_root, t)[0]
    fit = embed(enc, fit_paths, args.cache)
    projections = [('none', None)]
    for d in args.dims:
        for kind in ('pca', 'whitening'):
            projections.append((f'{kind}-{d}', fit_projection(fit, d, kind)))
    rows = []
    for label, map_t, query_t in split.test:
        mp, mposes = traverse(args.data_root, map_t)
        qp, qposes = traverse(args.data_root, query_t)
        positives = psi_positives(mposes, qposes, POSITIVE_PSI, DEFAULT_FOV_DEG,
                                  DEFAULT_RADIUS_M)
        md, qd = embed(enc, mp, args.cache), embed(enc, qp, args.cache)
        for pname, p in projections:
            m2, q2 = (md, qd) if p is None else (apply_whitening(md, *p), apply_whitening(qd, *p))
            r = evaluate_descriptors(q2, m2, positives, (1, 5))
            rows.append({'model': name, 'set': label, 'projection': pname,
                         'unseen': 'unseen' in label, 'r1': r['recall'][1],
                         'r5': r['recall'][5], 'n_queries': r['n_evaluated']})
        print(f'{name}: {label} done', flush=True)
    return rows


def table(rows: list, projections: list) -> str:
    """Markdown: one line per (model, test set), R@1 / R@5 per projection; unseen means."""
    head = '| model | test set | ' + ' | '.join(projections) + ' |'
    lines = [head, '|' + '---|' * (2 + len(projections))]
    keyed = {(r['model'], r['set'], r['projection']): r for r in rows}
    for model in dict.fromkeys(r['model'] for r in rows):
        sets = list(dict.fromkeys(r['set'] for r in rows if r['model'] == model))
        for s in sets + ['mean of unseen-garden sets']:
            cells = []
            for p in projections:
                if s.startswith('mean'):
                    sel = [r for r in rows if r['model'] == model and r['projection'] == p
                           and r['unseen']]
                    r1, r5 = (np.mean([r['r1'] for r in sel]), np.mean([r['r5'] for r in sel]))
                else:
                    r1, r5 = keyed[(model, s, p)]['r1'], keyed[(model, s, p)]['r5']
                cells.append(f'{r1:.3f} / {r5:.3f}')
            name = f'**{s}**' if s.startswith('mean') else s
            lines.append(f'| {model} | {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--data-root', required=True, help='rendered large benchmark traverses')
    ap.add_argument('--cache', required=True, help="vpr-eval's descriptor cache folder")
    ap.add_argument('--models', nargs='*', default=[], help='model files besides ImageNet')
    ap.add_argument('--dims', type=int, nargs='+', default=[256, 512])
    ap.add_argument('--out', default='doc/results/pca_vs_whitening')
    args = ap.parse_args(argv)
    from vpr_ros.model.encoder import build_encoder
    t0 = time.time()
    rows = []
    for path in [''] + list(args.models):
        name = 'imagenet' if not path else os.path.splitext(os.path.basename(path))[0]
        rows += rows_for(name, build_encoder(path, device='cpu'), args)
    projections = ['none'] + [f'{k}-{d}' for d in args.dims for k in ('pca', 'whitening')]
    md = table(rows, projections)
    cmd = 'python bench/bench_pca_whitening.py ' + ' '.join(sys.argv[1:] if argv is None
                                                             else argv)
    text = (f'# Plain PCA vs whitening, fitted on the training traverses (issue 13)\n\n'
            f'R@1 / R@5 (hit: ψ > {POSITIVE_PSI}); projections fitted on all '
            f'{len(LARGE.split.train_map + LARGE.split.train_query)} training traverses of '
            f'gardens g0 and g1; g2 and g3 are gardens training never saw.\n\n{md}\n\n'
            f'Command ({time.strftime("%Y-%m-%d")}, {time.time() - t0:.0f} s):\n\n'
            f'    {cmd}\n')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.md', 'w', encoding='utf-8') as f:
        f.write(text)
    with open(args.out + '.json', 'w', encoding='utf-8') as f:
        json.dump({'command': cmd, 'rows': rows}, f, indent=1)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
