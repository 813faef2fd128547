"""
The augmentation, night and seeds study of issue 21 (`python -m experiments.augment_study`).

Two steps, each a subcommand:

* ``eval``: ImageNet and every model given (``--model NAME=PATH``) on test sets from any number
  of data roots (``--set LABEL=ROOT:MAP:QUERY``, e.g. the train-demo's test sessions and the
  cross-session set), on the real corridor, and (``--loops``) as loops: R@1 with a bootstrap 95 %
  interval per set (`training.eval.compare_eval`, through `experiments.collapse_experiment`),
  loop R@1 and recall at 100 % precision (the node's detector replayed, the same code), the
  blank-wall cosine. Writes OUT/table.json and OUT/table.md.
* ``report``: several such tables, the training benchmark (bench/results/bench_train.json) and
  train-demo summaries into one JSON and one PNG: per recipe (a model's name without its seed,
  'gcl+photo+geo s1' -> 'gcl+photo+geo') the R@1 of every seed, their mean and spread, and who
  wins where (by the intervals: a recipe wins only where every interval of its seeds lies above
  every interval of the other's).

Loop R@1 gets a Wilson 95 % interval over the revisiting frames (the replay gives one hit or miss
per frame; no bootstrap is needed for a proportion).
"""
import argparse
import json
import math
import os
import sys
from typing import Sequence

# Run as a script too (`python experiments/augment_study.py`): this checkout's vpr_ros first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.collapse_experiment import (  # noqa: E402
    blank_cosines,
    loops,
    parse_models,
    r1_sets,
)


def parse_sets(items: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(label, root, map, query) from LABEL=ROOT:MAP:QUERY items."""
    out = []
    for it in items:
        label, sep, rest = it.partition('=')
        parts = rest.rsplit(':', 2)
        if not sep or len(parts) != 3:
            raise ValueError(f'--set wants LABEL=ROOT:MAP:QUERY, got {it!r}')
        out.append((label, *parts))
    return out


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % for z = 1.96)."""
    if n <= 0:
        return math.nan, math.nan
    p = hits / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the eval subcommand: every model on every set (and loop); table.json and .md."""
    models = parse_models(args.model)
    os.makedirs(args.out, exist_ok=True)
    cache = args.cache or None
    r1: dict = {}
    for label, root, map_name, query_name in parse_sets(args.set):
        got = r1_sets(models, root, [f'{map_name}:{query_name}'], '', cache, args.out)
        r1[label] = got[query_name]
    if args.corridor:
        r1['corridor (real)'] = r1_sets(models, '', [], args.corridor, cache, args.out)['corridor']
    table = {'models': dict(models), 'r1': r1,
             'blank_wall_cosine': blank_cosines(models), 'loops': {}}
    if args.loops:
        table['loops'] = loops(models, args.corridor, args.demo_loop, cache, args.out)
        for per_model in table['loops'].values():
            for row in per_model.values():
                hits = round(row['r1'] * row['n_revisit'])
                row['r1_ci'] = [round(x, 4) for x in wilson(hits, row['n_revisit'])]
    table['command'] = 'python -m experiments.augment_study eval ' + ' '.join(args.argv)
    with open(os.path.join(args.out, 'table.json'), 'w') as f:
        json.dump(table, f, indent=1)
    md = format_table(table)
    with open(os.path.join(args.out, 'table.md'), 'w') as f:
        f.write(md + '\n')
    print(md)
    return table


def _ci(v: Sequence[float]) -> str:
    return f'{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]'


def format_table(table: dict) -> str:
    """Markdown: R@1 [95 % CI] per set, loops (R@1 [Wilson CI], recall at P = 1), blank walls."""
    names = list(table['models'])
    head = ['model'] + [f'R@1 {s}' for s in table['r1']]
    for lp in table['loops']:
        head += [f'{lp} R@1', f'{lp} recall@P1', f'{lp} +seq recall@P1']
    head.append('blank-wall cos')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for n in names:
        cells = [n] + [_ci(table['r1'][s][n]) for s in table['r1']]
        for lp in table['loops'].values():
            r = lp[n]
            cells += [f'{r["r1"]:.3f} [{r["r1_ci"][0]:.3f}, {r["r1_ci"][1]:.3f}]',
                      f'{r["recall_p100"]:.3f}', f'{r["recall_p100_sequence"]:.3f}']
        cells.append(f'{table["blank_wall_cosine"][n]:.3f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def seed_stats(r1: dict) -> dict:
    """Per set and recipe: each seed's R@1 [lo, hi], the mean and the spread over seeds."""
    from vpr_ros.training.demo.train_demo_report import recipe

    out: dict = {}
    for set_name, per_model in r1.items():
        groups: dict[str, list] = {}
        for model, v in per_model.items():
            groups.setdefault(recipe(model), []).append(v)
        out[set_name] = {}
        for rec, vals in groups.items():
            xs = [v[0] for v in vals]
            mean = sum(xs) / len(xs)
            sd = (math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
                  if len(xs) > 1 else 0.0)
            out[set_name][rec] = {'seeds': vals, 'mean': round(mean, 4), 'sd': round(sd, 4),
                                  'range': [round(min(xs), 4), round(max(xs), 4)]}
    return out


def seed_verdicts(r1: dict) -> list[dict]:
    """Who wins R@1 per set and pair of recipes (train-demo's pairs and rule), seeds pooled."""
    from vpr_ros.training.demo.train_demo_report import recipe, recipe_pairs
    from vpr_ros.training.eval.bootstrap_ci import verdict

    out = []
    for set_name, per_model in r1.items():
        rows: dict[str, list] = {}
        for model, v in per_model.items():
            rows.setdefault(recipe(model), []).append(
                {'r1': {'value': v[0], 'lo': v[1], 'hi': v[2]}})
        for a, b in recipe_pairs(list(rows)):
            v = verdict(rows[a], rows[b], 'r1')
            out.append({'set': set_name, 'a': a, 'b': b,
                        'winner': {'a': a, 'b': b}.get(v, 'none (intervals overlap)')})
    return out


def format_seeds(stats: dict) -> str:
    """Markdown: per set, per recipe the mean ± sd over seeds and each seed's R@1."""
    recs = list(dict.fromkeys(r for per in stats.values() for r in per))
    lines = ['| set | ' + ' | '.join(recs) + ' |', '|' + ' --- |' * (len(recs) + 1)]
    for s, per in stats.items():
        cells = []
        for r in recs:
            st = per.get(r)
            cells.append('-' if st is None else f'{st["mean"]:.3f} ± {st["sd"]:.3f} ('
                         + ', '.join(f'{v[0]:.3f}' for v in st['seeds']) + ')')
        lines.append(f'| {s} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def report(args: argparse.Namespace) -> dict:
    """Run the report subcommand: tables, seed statistics, verdicts, costs: one JSON, one PNG."""
    out: dict = {'tables': {}, 'command': 'python -m experiments.augment_study report '
                 + ' '.join(args.argv)}
    for item in args.table:
        name, _, path = item.partition('=')
        with open(path) as f:
            table = json.load(f)
        entry = {'source': path, **table}
        if args.seeds and name in args.seeds:
            entry['seed_stats'] = seed_stats(table['r1'])
            entry['verdicts'] = seed_verdicts(table['r1'])
            print(f'\n{name}: R@1 mean ± sd over seeds (each seed)\n'
                  + format_seeds(entry['seed_stats']))
            for v in entry['verdicts']:
                print(f'  {v["set"]}: {v["a"]} vs {v["b"]}: {v["winner"]}')
        out['tables'][name] = entry
    if args.costs and os.path.isfile(args.costs):
        with open(args.costs) as f:
            out['costs'] = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(out, f, indent=1)
    print('wrote', args.out + '.json', plot(out, args.out + '.png'))
    return out


def plot(summary: dict, path: str) -> str:
    """One panel per table: R@1 with its 95 % interval per set, one marker per model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tables = summary['tables']
    fig, axes = plt.subplots(len(tables), 1, figsize=(13, 3.6 * len(tables)), squeeze=False)
    for ax, (name, table) in zip(axes[:, 0], tables.items()):
        sets = list(table['r1'])
        models = list(table['models'])
        w = 0.8 / max(len(models), 1)
        cmap = plt.get_cmap('tab20')
        for k, m in enumerate(models):
            xs = [i - 0.4 + (k + 0.5) * w for i in range(len(sets))]
            v = [table['r1'][s][m] for s in sets]
            ax.errorbar(xs, [x[0] for x in v], yerr=[[x[0] - x[1] for x in v],
                                                      [x[2] - x[0] for x in v]],
                        fmt='o', ms=3, capsize=1.5, color=cmap(k % 20), label=m)
        ax.set_xticks(range(len(sets)), sets, fontsize=8, rotation=10)
        ax.set_ylabel('R@1 (95 % CI)')
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, ncol=4, loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog='python -m experiments.augment_study', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    e = sub.add_parser('eval', help='models x sets (and loops) into OUT/table.json')
    e.add_argument('--model', action='append', default=[], metavar='NAME=PATH')
    e.add_argument('--set', action='append', default=[], metavar='LABEL=ROOT:MAP:QUERY')
    e.add_argument('--corridor', default='')
    e.add_argument('--loops', action='store_true', help='corridor and demo loop replays too')
    e.add_argument('--demo-loop', default='', help='index of the demo loop (day_loop.json)')
    e.add_argument('--cache', default='', help='descriptor cache folder')
    e.add_argument('--out', required=True)
    r = sub.add_parser('report', help='tables, seeds and costs into OUT.json and OUT.png')
    r.add_argument('--table', action='append', default=[], metavar='NAME=TABLE.json')
    r.add_argument('--seeds', nargs='*', default=[], help='table names whose models are seeds')
    r.add_argument('--costs', default='', help='bench/results/bench_train.json')
    r.add_argument('--out', required=True, help='output path without extension')
    args = p.parse_args(argv)
    args.argv = argv[1:]
    (evaluate if args.cmd == 'eval' else report)(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
