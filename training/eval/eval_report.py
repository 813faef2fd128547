"""
The report of `vpr-eval`: the console table, the JSON with every number and the two PNGs.

Kept apart from the evaluation so the numbers (training.eval.evaluate) and how they are shown can
change independently; training's own summary (train_demo_report) reads the same JSON.
"""
import json
import math
import os

import numpy as np

from vpr_ros.core.atomic_io import write_atomic


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

    write_atomic(files['json'], json.dumps({**report, 'files': files}, indent=1,
                                           default=_json_default).encode())
    return files


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f'not JSON serialisable: {type(o).__name__}')
