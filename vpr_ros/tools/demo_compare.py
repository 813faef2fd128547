"""
`make demo` with two models side by side: the built-in ImageNet model and the shipped GCL one.

The demo (demo.py) runs the node once per model on the same bag, each at its own calibrated
operating point (the node picks the model's point when score_threshold is left at its default).
This module names the runs, prints them as one table, adds them to the first run's
``demo_summary.json`` under ``side_by_side`` and puts their PNGs into one figure,
``demo_side_by_side.png``.
"""
import json
import os
import re
from typing import Sequence

from vpr_ros.model import shipped

BUILTIN_LABEL = 'imagenet (built-in)'
# What the table shows per run (demo_summary.json keys), with its column head.
COLUMNS = (('queries_with_loop_closures', 'closures'), ('precision_best', 'precision'),
           ('recall', 'recall'), ('average_precision', 'AP'),
           ('latency_core_ms_p50_p95', 'core ms p50/p95'), ('operating_point', 'in use'))


def model_label(model: str) -> str:
    """Short name of a model value: the built-in, a shipped name, or a file's base name."""
    if not model:
        return BUILTIN_LABEL
    if shipped.is_shipped_name(model):
        return f'{model} (shipped)'
    return os.path.splitext(os.path.basename(model))[0] or model


def folder_name(label: str) -> str:
    """Return a file-system-safe folder for a run's files, from its label."""
    return 'demo_' + re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')


def second_model(model: str, compare: str) -> str | None:
    """Return the model run beside ``model`` (None: only one run), never the same one twice."""
    if compare.lower() in ('', 'none'):
        return None
    if compare == model:
        return '' if model else None  # `--model gcl_garden`: beside it, the built-in
    return compare


def format_table(runs: Sequence[tuple[str, dict]]) -> str:
    """One row per run, the columns of COLUMNS."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f'{value:.3f}'
        if isinstance(value, list):
            return '/'.join(f'{v:g}' for v in value)
        return str(value)

    rows = [['model'] + [head for _, head in COLUMNS]]
    rows += [[label] + [cell(s.get(key, '')) for key, _ in COLUMNS] for label, s in runs]
    for row in rows[1:]:  # the node's log line: calibrated ...; in use: score_threshold ...
        row[-1] = row[-1].rsplit('in use: ', 1)[-1]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[-1]
                     for r in rows)


def side_by_side_png(pngs: Sequence[str], labels: Sequence[str], path: str) -> None:
    """Stack the runs' report PNGs in one figure, each titled with its model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    images = [mpimg.imread(p) for p in pngs]
    fig, axes = plt.subplots(len(images), 1, figsize=(14, 6.5 * len(images)), squeeze=False)
    for ax, img, label in zip(axes[:, 0], images, labels):
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(label, fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_side_by_side(out: str, runs: Sequence[tuple[str, str, dict]]) -> str:
    """Record (label, model, summary) runs in OUT's demo_summary.json and PNG; return the table."""
    path = os.path.join(out, 'demo_summary.json')
    with open(path) as f:
        first = json.load(f)
    first['side_by_side'] = [
        {'label': label, 'model': model or 'built-in',
         **{k: s.get(k) for k, _ in COLUMNS}, 'recall': s.get('recall'),
         'frames_processed': s.get('frames_processed'), 'keyframes': s.get('keyframes'),
         'report_png': s.get('report_png')}
        for label, model, s in runs]
    png = os.path.join(out, 'demo_side_by_side.png')
    side_by_side_png([s['report_png'] for _, _, s in runs], [label for label, _, _ in runs], png)
    first['side_by_side_png'] = png
    with open(path, 'w') as f:
        json.dump(first, f, indent=2)
    return format_table([(label, s) for label, _, s in runs])
