"""
The textureless-collapse experiment of issue 14 (`python -m experiments.collapse_experiment`).

Does a training change keep blank walls apart, and what does it cost or bring where it matters
(R@1, loops at 100 % precision)?

For ImageNet and every model given (``--model NAME=PATH``) it measures, with the project's own
code and nothing else:

* the cosine of two different blank walls (`training.eval.blank_walls`, 1 = collapsed);
* R@1 with a bootstrap 95 % interval on test traverses (map:query pairs under ``--data-root``,
  e.g. unseen gardens) and on the real corridor (`training.eval.compare_eval`);
* recall at 100 % precision as a loop (`training.eval.loop_mode`, node keyframes, with and without
  ORB verification) on the corridor played as a loop (1 frame/s, 30 s exclusion) and on the
  simulated demo loop (5 Hz, 30 s exclusion): the settings of the built-in operating point.

Writes OUT/collapse.json, OUT/collapse.txt (the table) and OUT/collapse.png.
"""
import argparse
import json
import os
import sys
from typing import Sequence

# Run as a script too (`python experiments/collapse_experiment.py`): this checkout's vpr_ros first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASELINE = 'imagenet'


def parse_models(items: Sequence[str]) -> list[tuple[str, str]]:
    """[('imagenet', ''), (NAME, PATH), ...] from NAME=PATH items (also augment_study's)."""
    out = [(BASELINE, '')]
    for it in items:
        name, sep, path = it.partition('=')
        if not sep or not name or not path:
            raise ValueError(f'--model wants NAME=PATH, got {it!r}')
        out.append((name, path))
    return out


def blank_cosines(models: list[tuple[str, str]]) -> dict[str, float]:
    """Blank-wall cosine per model."""
    from vpr_ros.model.encoder import build_encoder
    from vpr_ros.training.eval.blank_walls import blank_wall_cosine
    return {n: round(blank_wall_cosine(build_encoder(p, device='cpu')), 4) for n, p in models}


def lowtex_cosines(models: list[tuple[str, str]], paths: Sequence[str], n: int = 32
                   ) -> dict[str, float]:
    """Mean cosine over pairs of low-texture frames made from never-trained-on images."""
    import numpy as np

    from vpr_ros.model.encoder import build_encoder
    from vpr_ros.training.fit.lowtex import make_lowtex_frames

    frames, _ = make_lowtex_frames(paths, n, seed=12345)
    out = {}
    for name, path in models:
        d = np.asarray(build_encoder(path, device='cpu').embed(frames, 'rgb8'), np.float64)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        c = d @ d.T
        out[name] = round(float(c[~np.eye(len(d), dtype=bool)].mean()), 4)
    return out


def r1_sets(models: list[tuple[str, str]], data_root: str, sets: Sequence[str], corridor: str,
            cache: str, out: str) -> dict[str, dict[str, list[float]]]:
    """R@1 [lo, hi] per set and model."""
    from vpr_ros.training.data.dataset import select_traverses
    from vpr_ros.training.eval.compare_eval import evaluate_with_ci

    res: dict[str, dict[str, list[float]]] = {}
    jobs = []
    for s in sets:
        map_name, query_name = s.split(':')
        m, q = (t.index_path for t in select_traverses(data_root, [map_name, query_name]))
        jobs.append((query_name, {'map_indexes': [m], 'query_indexes': [q]}))
    if corridor:
        jobs.append(('corridor', {'folder': corridor}))
    for label, kw in jobs:
        rep = evaluate_with_ci(models, out_dir=os.path.join(out, label), cache_dir=cache,
                               progress=False, **kw)
        res[label] = {row['name']: [round(row['recall'][1], 4),
                                    round(row['ci']['r1']['lo'], 4),
                                    round(row['ci']['r1']['hi'], 4)]
                      for row in rep['rows']}
    return res


def loops(models: list[tuple[str, str]], corridor: str, demo_loop: str, cache: str,
          out: str) -> dict[str, dict[str, dict]]:
    """Loop R@1 and recall at precision 1.0 (single-frame rule; with sequences), per loop."""
    from vpr_ros.training.eval.loop_mode import evaluate_loop

    jobs = []
    if corridor:
        jobs.append(('corridor loop', {'folder': corridor, 'rate_hz': 1.0}))
    if demo_loop:
        jobs.append(('demo loop', {'inputs': [demo_loop], 'rate_hz': 5.0}))
    res: dict[str, dict[str, dict]] = {}
    for label, kw in jobs:
        rep = evaluate_loop(models=[p for _, p in models[1:]], include_default=True,
                            exclusion_s=30.0, verify=True, keyframes=True, progress=False,
                            cache_dir=cache, verbose=False,
                            out_dir=os.path.join(out, label.replace(' ', '_')), **kw)
        res[label] = {}
        for (name, _), row in zip(models, rep['rows']):
            op, sop = row['operating_point_single'], row['operating_point']
            res[label][name] = {
                'r1': round(row['recall_at_1'], 4), 'recall_p100': round(op['recall'], 4),
                'precision': round(op['precision'], 4),
                'r1_sequence': round(row['recall_at_1_sequence'], 4),
                'recall_p100_sequence': round(sop['recall'], 4),
                'precision_sequence': round(sop['precision'], 4),
                'n_revisit': row['n_revisit']}
    return res


def format_table(summary: dict) -> str:
    """One line per model: blank-wall cosine, R@1 per set, loop recall at 100 % precision."""
    names = list(summary['blank_wall_cosine'])
    low = summary.get('lowtex_cosine_test', {})
    head = ['model', 'blank cos'] + (['low-tex cos (test)'] if low else [])
    head += [f'R@1 {s}' for s in summary['r1']]
    for lp in summary['loops']:
        head += [f'{lp} R@1', f'{lp} rec@P1', f'{lp} +seq R@1', f'{lp} +seq rec@P1']
    lines = [' | '.join(head), ' | '.join(['---'] * len(head))]
    for n in names:
        cells = [n, f'{summary["blank_wall_cosine"][n]:.3f}'] + ([f'{low[n]:.3f}'] if low else [])
        cells += [f'{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]' for v in
                  (summary['r1'][s][n] for s in summary['r1'])]
        for lp in summary['loops'].values():
            r = lp[n]
            cells += [f'{r["r1"]:.3f}', f'{r["recall_p100"]:.3f}', f'{r["r1_sequence"]:.3f}',
                      f'{r["recall_p100_sequence"]:.3f}']
        lines.append(' | '.join(cells))
    return '\n'.join('| ' + ln + ' |' for ln in lines)


def plot(summary: dict, path: str) -> str:
    """Blank-wall cosine, R@1 per set and loop recall at 100 % precision, bars per model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary['blank_wall_cosine'])
    cos = {'blank walls': [summary['blank_wall_cosine'][n] for n in names]}
    if summary.get('lowtex_cosine_test'):
        cos['low-tex frames, test garden'] = [summary['lowtex_cosine_test'][n] for n in names]
    panels = [('cosine of different textureless frames (lower: less collapse)', cos, None)]
    panels.append(('R@1 (95 % CI)', {s: [v[n][0] for n in names]
                                     for s, v in summary['r1'].items()},
                   {s: [(v[n][0] - v[n][1], v[n][2] - v[n][0]) for n in names]
                    for s, v in summary['r1'].items()}))
    rec = {}
    for lp, v in summary['loops'].items():
        rec[lp] = [v[n]['recall_p100'] for n in names]
        rec[lp + ' +seq'] = [v[n]['recall_p100_sequence'] for n in names]
    panels.append(('loop recall at 100 % precision', rec, None))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (title, groups, err) in zip(axes, panels):
        x = np.arange(len(groups))
        w = 0.8 / len(names)
        for k, n in enumerate(names):
            vals = [g[k] for g in groups.values()]
            yerr = None
            if err:
                yerr = np.array([e[k] for e in err.values()]).T
            ax.bar(x + k * w, vals, w, label=n, yerr=yerr, capsize=2)
        ax.set_xticks(x + 0.4 - w / 2, list(groups), rotation=20, ha='right', fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=len(names), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m experiments.collapse_experiment',
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', action='append', default=[], metavar='NAME=PATH')
    p.add_argument('--data-root', default='')
    p.add_argument('--set', action='append', default=[], metavar='MAP:QUERY',
                   help='test traverse pair under --data-root')
    p.add_argument('--corridor', default='')
    p.add_argument('--demo-loop', default='', help='index of the demo loop (day_loop.json)')
    p.add_argument('--cache', default='', help='descriptor cache folder')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    models = parse_models(args.model)
    os.makedirs(args.out, exist_ok=True)
    summary = {'models': dict(models), 'blank_wall_cosine': blank_cosines(models)}
    if args.set:  # low-texture frames of the first test set's query images (never trained on)
        from vpr_ros.training.data.dataset import select_traverses
        query = select_traverses(args.data_root, [args.set[0].split(':')[1]])[0]
        summary['lowtex_cosine_test'] = lowtex_cosines(models, query.image_paths)
    cache = args.cache or None
    summary['r1'] = r1_sets(models, args.data_root, args.set, args.corridor, cache, args.out)
    summary['loops'] = loops(models, args.corridor, args.demo_loop, cache, args.out)
    summary['command'] = 'python -m experiments.collapse_experiment ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    with open(os.path.join(args.out, 'collapse.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    table = format_table(summary)
    with open(os.path.join(args.out, 'collapse.txt'), 'w') as f:
        f.write(table + '\n')
    print(table)
    print('wrote', plot(summary, os.path.join(args.out, 'collapse.png')))
    return 0


if __name__ == '__main__':
    sys.exit(main())
