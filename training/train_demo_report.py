"""
What `vpr-train-demo` reports: one row per model (default, trained), a table and a PNG.

The inputs are `vpr-eval` reports (one per evaluation set; row 0 is the built-in model, row 1
the trained one) and the demo summaries per model.
"""
from typing import Sequence


def summarize(evals: dict[str, dict], demos: dict[str, dict]) -> list[dict]:
    """One row per model: R@1/R@5 per evaluation set, demo precision/recall/AP."""
    rows: dict[str, dict] = {}
    for set_name, report in evals.items():
        for i, r in enumerate(report['rows']):
            key = 'default' if i == 0 else 'trained'
            row = rows.setdefault(key, {'model': key, 'name': r['name'],
                                        'fingerprint': r['fingerprint'], 'dim': r['dim']})
            row[set_name] = {'r1': r['recall'][1], 'r5': r['recall'][5], 'ap': r['ap'],
                             'n_queries': r['n_evaluated']}
    for key, d in demos.items():
        rows.setdefault(key, {'model': key})['demo'] = {
            k: d.get(k) for k in ('precision_best', 'recall', 'average_precision',
                                  'queries_with_loop_closures', 'keyframes',
                                  'frames_processed', 'node_exit_code', 'map_saved')}
    return list(rows.values())


def _num(x: float | None) -> str:
    return 'n/a' if x is None or x != x else f'{x:.2f}'  # x != x: NaN (no loop to close)


def format_table(rows: list[dict], set_names: Sequence[str]) -> str:
    cols = [f'{s} R@1/R@5' for s in set_names] + ['demo P/R/AP']
    width = [max(len(c), 17) for c in cols]
    lines = ['model    ' + '  '.join(f'{c:>{w}}' for c, w in zip(cols, width))]
    for row in rows:
        cells = []
        for s in set_names:
            v = row.get(s)
            cells.append(f'{v["r1"]:.3f} / {v["r5"]:.3f}' if v else '-')
        d = row.get('demo')
        cells.append(' / '.join(_num(d[k]) for k in ('precision_best', 'recall',
                                                      'average_precision')) if d else '-')
        lines.append(f'{row["model"]:<8} ' + '  '.join(f'{c:>{w}}' for c, w in zip(cells, width)))
    return '\n'.join(lines)


def plot_report(path: str, evals: dict[str, dict], demos: dict[str, dict]) -> str:
    """Recall@k per evaluation set and the demo's precision-recall, default vs trained."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = len(evals) + (1 if demos else 0)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    colours = {'default': 'tab:blue', 'trained': 'tab:red'}
    for ax, (set_name, report) in zip(axes[0], evals.items()):
        for i, r in enumerate(report['rows']):
            key = 'default' if i == 0 else 'trained'
            c = r['recall_curve']
            ax.plot(c['k'], c['recall'], marker='.', color=colours[key],
                    label=f'{key} (R@1 {r["recall"][1]:.2f})')
        ax.set_title(f'{set_name}: {report["dataset"]["n_query"]} queries', fontsize=9)
        ax.set_xlabel('k')
        ax.set_ylabel('recall@k')
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='lower right')
    if demos:
        ax = axes[0][-1]
        for key, d in demos.items():
            ax.plot(d.get('pr_recall', []), d.get('pr_precision', []), color=colours[key],
                    label=f'{key} (P {d["precision_best"]:.2f}, AP {d["average_precision"]:.2f})')
        ax.set_title('demo loop closures (best candidate)', fontsize=9)
        ax.set_xlabel('recall')
        ax.set_ylabel('precision')
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
