"""
What `vpr-train-demo` reports: one row per model (ImageNet, each loss × seed), a table, a PNG.

The inputs are `training.eval.compare_eval` reports (one per evaluation set, rows in model order,
each with bootstrap 95 % intervals) and the demo summaries per model. Who wins is decided by the
intervals only: a recipe wins a metric on a set when every seed's interval lies above every
interval of the other; anything overlapping is reported as no winner.
"""
import math
from typing import Sequence

from vpr_ros.training.eval.bootstrap_ci import LABELS, METRICS, verdict

BASELINE = 'imagenet'

DEMO_KEYS = ('precision_best', 'recall', 'average_precision', 'queries_with_loop_closures',
             'keyframes', 'frames_processed', 'node_exit_code', 'map_saved')


def recipe(model: str) -> str:
    """'gcl s1' -> 'gcl'; 'imagenet' -> 'imagenet': the group a model's seeds belong to."""
    return model.split(' ')[0]


def recipe_pairs(recipes: Sequence[str]) -> list[tuple[str, str]]:
    """
    Return the comparisons a table makes, as (a, b) recipe pairs.

    GCL vs CL with the same augmentation, each trained recipe vs ImageNet, each augmented
    recipe vs its loss without augmentation ('gcl+photo' vs 'gcl').
    """
    have = list(dict.fromkeys(recipes))
    trained = [r for r in have if r != BASELINE]
    pairs = []
    for r in trained:
        loss, _, aug = r.partition('+')
        other = 'cl' + ('+' + aug if aug else '')
        if loss == 'gcl' and other in have:
            pairs.append((r, other))
    pairs += [(r, BASELINE) for r in trained if BASELINE in have]
    pairs += [(r, r.partition('+')[0]) for r in trained
              if '+' in r and r.partition('+')[0] in have]
    return pairs


def summarize(evals: dict[str, dict], demos: dict[str, dict]) -> list[dict]:
    """One row per model: every metric with its interval per evaluation set, the demo's P/R/AP."""
    rows: dict[str, dict] = {}
    for set_name, report in evals.items():
        for r in report['rows']:
            row = rows.setdefault(r['name'], {'model': r['name'], 'fingerprint': r['fingerprint'],
                                              'dim': r['dim']})
            ci = r.get('ci', {})
            row[set_name] = {'r1': r['recall'][1], 'r5': r['recall'][5],
                             'r10': r['recall'][10], 'map5': r['map'][5], 'ap': r['ap'],
                             'n_queries': r['n_evaluated'],
                             'ci': {k: [ci[k]['lo'], ci[k]['hi']] for k in METRICS if k in ci}}
    for key, d in demos.items():
        rows.setdefault(key, {'model': key})['demo'] = {k: d.get(k) for k in DEMO_KEYS}
    return list(rows.values())


def verdicts(rows: list[dict], set_names: Sequence[str]) -> list[dict]:
    """Per set and metric, each pair of `recipe_pairs`, decided by the intervals."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(recipe(row['model']), []).append(row)
    pairs = recipe_pairs(list(groups))
    out = []
    for s in set_names:
        for metric in METRICS:
            for a, b in pairs:
                ra = [_ci_row(r[s], metric) for r in groups[a] if s in r]
                rb = [_ci_row(r[s], metric) for r in groups[b] if s in r]
                v = verdict(ra, rb, metric)
                out.append({'set': s, 'metric': metric, 'a': a, 'b': b,
                            'winner': {'a': a, 'b': b}.get(v, 'none (intervals overlap)')})
    return out


def _ci_row(cell: dict, metric: str) -> dict:
    lo, hi = cell['ci'].get(metric, [math.nan, math.nan])
    return {metric: {'value': cell[metric], 'lo': lo, 'hi': hi}}


def _num(x: float | None) -> str:
    return 'n/a' if x is None or x != x else f'{x:.2f}'  # x != x: NaN (no loop to close)


def _cell(cell: dict | None, metric: str) -> str:
    if not cell:
        return '-'
    lo, hi = cell['ci'].get(metric, [math.nan, math.nan])
    return f'{cell[metric]:.3f} [{lo:.3f}, {hi:.3f}]'


def format_table(rows: list[dict], set_names: Sequence[str]) -> str:
    """Every model × set × metric with its 95 % interval, the demo, and the plain verdicts."""
    name_w = max([len('model')] + [len(r['model']) for r in rows])
    lines = []
    for s in set_names:
        n = next((r[s]['n_queries'] for r in rows if s in r), 0)
        lines.append(f'{s} ({n} queries; value [95 % bootstrap interval over queries])')
        lines.append(f'  {"model":<{name_w}} ' + ' '.join(f'{LABELS[m]:>21}' for m in METRICS))
        for r in rows:
            if s in r:
                lines.append(f'  {r["model"]:<{name_w}} '
                             + ' '.join(f'{_cell(r[s], m):>21}' for m in METRICS))
    demo_rows = [r for r in rows if 'demo' in r]
    if demo_rows:
        lines.append('demo loop closures (precision of best candidate / recall / AP)')
        for r in demo_rows:
            d = r['demo']
            lines.append(f'  {r["model"]:<{name_w}} ' + ' / '.join(
                _num(d[k]) for k in ('precision_best', 'recall', 'average_precision')))
    walls = [f'{r["model"]} {r["blank_wall_cosine"]:.3f}' for r in rows
             if 'blank_wall_cosine' in r]
    if walls:
        lines.append('two different blank walls, cosine (1 = textureless collapse): '
                     + ', '.join(walls))
    lines.append('who wins (only where every interval of one lies above every one of the other; '
                 'overlapping intervals: no winner):')
    for s in set_names:
        for a, b in recipe_pairs([recipe(r['model']) for r in rows]):
            vs = [v for v in verdicts(rows, [s]) if (v['a'], v['b']) == (a, b)]
            if vs:
                lines.append(f'  {s}, {a.upper()} vs {b.upper()}: ' + _verdict_text(vs))
    return '\n'.join(lines)


def _verdict_text(vs: list[dict]) -> str:
    """'GCL wins AP; CL wins R@1; no winner on R@5, R@10, mAP@5' for one set and pair."""
    parts = []
    for who in (vs[0]['a'], vs[0]['b']):
        won = [LABELS[v['metric']] for v in vs if v['winner'] == who]
        if won:
            parts.append(f'{who.upper()} wins {", ".join(won)}')
    tie = [LABELS[v['metric']] for v in vs if v['winner'] not in (vs[0]['a'], vs[0]['b'])]
    if tie:
        parts.append(f'no winner on {", ".join(tie)}')
    return '; '.join(parts)


def _colour(colours: dict, model: str) -> str:
    """Colour a model by its loss; an augmented recipe a shade darker, so variants stay apart."""
    import matplotlib.colors as mcolors

    r = recipe(model)
    base = colours.get(r.partition('+')[0], 'tab:gray')
    if '+' not in r:
        return base
    rgb = mcolors.to_rgb(base)
    return mcolors.to_hex(tuple(c * 0.55 for c in rgb))


def plot_report(path: str, evals: dict[str, dict], demos: dict[str, dict]) -> str:
    """Per evaluation set every metric with its interval per model; the demo's PR curves."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = len(evals) + (1 if demos else 0)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.0), squeeze=False)
    colours = {'imagenet': 'tab:blue', 'gcl': 'tab:red', 'cl': 'tab:green'}
    for ax, (set_name, report) in zip(axes[0], evals.items()):
        models = report['rows']
        width = 0.8 / max(len(models), 1)
        for i, r in enumerate(models):
            x = [j + (i - (len(models) - 1) / 2) * width for j in range(len(METRICS))]
            ci = r.get('ci', {})
            vals = [ci[m]['value'] for m in METRICS]
            err = [[v - ci[m]['lo'] for v, m in zip(vals, METRICS)],
                   [ci[m]['hi'] - v for v, m in zip(vals, METRICS)]]
            ax.errorbar(x, vals, yerr=err, fmt='o', ms=3, capsize=2,
                        color=_colour(colours, r['name']), label=r['name'])
        ax.set_xticks(range(len(METRICS)), [LABELS[m].replace(' (all pairs)', '')
                                            for m in METRICS], fontsize=8)
        ax.set_title(f'{set_name}: {report["dataset"]["n_query"]} queries, 95 % CI', fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='lower left')
    if demos:
        ax = axes[0][-1]
        for key, d in demos.items():
            ax.plot(d.get('pr_recall', []), d.get('pr_precision', []),
                    color=_colour(colours, key),
                    label=f'{key} (P {_num(d["precision_best"])}, '
                          f'AP {_num(d["average_precision"])})')
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
