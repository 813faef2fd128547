"""
Make a shipped model file (vpr_ros/model/data/, shipped.py) from a trained model file.

Inputs: the model file `vpr-train-demo` exported, that run's `train_demo_summary.json` (its rows
of the benchmark, with bootstrap intervals) and the loop reports of `vpr-eval --loop ... --verify
--node-keyframes --out DIR` on the two loops the built-in point was fitted on (the simulated demo
loop and the corridor played as a loop, vpr_ros/model/operating_point.py). The operating point
is fitted jointly over those reports (training.eval.loop_mode.calibrate_jointly), exactly as the
built-in one, and written with the recipe and the metrics into the provenance; the network is
stored as a delta from the pinned ImageNet weights (model file version 2), bit-identical to the
source's. Print the sha256 to pin in shipped.py.
"""
import argparse
import json
import os
import sys
from typing import Sequence

# Run as a script too (`python experiments/ship_model.py`): this checkout's vpr_ros first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vpr_ros.model.model_file import load_model, save_model  # noqa: E402
from vpr_ros.model.operating_point import PROVENANCE_KEY  # noqa: E402
from vpr_ros.training.eval.loop_mode import calibrate_jointly  # noqa: E402


def _row_index(report: dict, model_path: str) -> int:
    """Return the row of the report that ran ``model_path``."""
    for i, row in enumerate(report['rows']):
        if row.get('model') and os.path.abspath(row['model']) == os.path.abspath(model_path):
            return i
    raise ValueError(f'{model_path} is not a row of the loop report '
                     f'({[r.get("model") for r in report["rows"]]})')


def loop_rows(reports: Sequence[dict], names: Sequence[str]) -> list[dict]:
    """Return R@1 and recall at the target precision of every row of every loop report."""
    out = []
    for rep, name in zip(reports, names):
        for row in rep['rows']:
            model = os.path.basename(row['model']) if row.get('model') else 'built-in'
            out.append({'loop': name, 'model': model,
                        'revisits': row['n_revisit'], 'r1': row['recall_at_1'],
                        'r1_sequence': row['recall_at_1_sequence'],
                        'recall_at_p1_single_frame': row['operating_point_single']['recall'],
                        'recall_at_p1': row['operating_point']['recall']})
    return out


def fit_point(model_path: str, reports: Sequence[dict], names: Sequence[str],
              sources: Sequence[str]) -> dict:
    """Fit the joint verified point of ``model_path`` over the loop reports, as the built-in."""
    row = _row_index(reports[0], model_path)
    if any(_row_index(r, model_path) != row for r in reports):
        raise ValueError('the model is not the same row in every loop report')
    point = calibrate_jointly(reports, row=row, name=' + '.join(names)).to_dict()
    for s, name, source in zip(point['data']['sets'], names, sources):
        s['name'], s['source'] = name, source  # no absolute paths of this machine
        if 'csv' in s['ground_truth']:
            s['ground_truth']['csv'] = os.path.basename(s['ground_truth']['csv'])
    point['data']['map'] = 'node keyframes'
    point['data']['fitted'] = ('training.eval.loop_mode.calibrate_jointly '
                               '(experiments/ship_model.py)')
    return point


def benchmark_rows(summary: dict, names: Sequence[str]) -> dict:
    """Return the benchmark's rows of the named models (values and 95 % intervals) per set."""
    keep = ('r1', 'r5', 'r10', 'map5', 'ap', 'n_queries', 'ci')
    out = {}
    for m in summary['models']:
        if m['model'] in names:
            out[m['model']] = {k: {f: v[f] for f in keep if f in v}
                               for k, v in m.items() if isinstance(v, dict)}
    return {'bootstrap': summary.get('bootstrap'), 'split': summary.get('split'),
            'rows': out}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('model', help='the trained model file (vpr-export / vpr-train-demo)')
    ap.add_argument('--summary', required=True, help="the run's train_demo_summary.json")
    ap.add_argument('--row', required=True, help="the model's row name there, e.g. 'gcl s0'")
    ap.add_argument('--loop-report', nargs='+', required=True,
                    help='loop_results.json of vpr-eval --loop ... --verify --node-keyframes')
    ap.add_argument('--loop-name', nargs='+', required=True, help='a name per loop report')
    ap.add_argument('--loop-source', nargs='+', required=True,
                    help='what each loop is, without machine paths')
    ap.add_argument('--recipe', required=True, help='the exact command that trained it')
    ap.add_argument('--train-time', required=True, help='how long training took, and where')
    ap.add_argument('--name', required=True, help='the shipped name (shipped.py)')
    ap.add_argument('--out', required=True)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: write the shipped file and print its sha256."""
    args = parse_args(argv)
    if not len(args.loop_report) == len(args.loop_name) == len(args.loop_source):
        sys.exit('ship_model: give as many --loop-name and --loop-source as --loop-report')
    net, prov = load_model(args.model)
    reports = []
    for path in args.loop_report:
        with open(path) as f:
            reports.append(json.load(f))
    with open(args.summary) as f:
        summary = json.load(f)
    from vpr_ros.model.model_file import file_fingerprint
    source_sha = file_fingerprint(args.model)
    prov = dict(prov)
    prov[PROVENANCE_KEY] = fit_point(args.model, reports, args.loop_name, args.loop_source)
    prov[PROVENANCE_KEY]['data']['model'] = f'{args.name} (shipped)'
    prov['shipped'] = {'name': args.name, 'source_file': os.path.basename(args.model),
                       'source_sha256': source_sha, 'stored_as': 'delta from the pinned '
                       'ImageNet weights (model file version 2), network bit-identical'}
    prov['recipe'] = {'command': args.recipe, 'train_time': args.train_time}
    prov['benchmark'] = benchmark_rows(summary, ['imagenet', args.row])
    prov['loops'] = loop_rows(reports, args.loop_name)
    fingerprint = save_model(args.out, net, prov, delta_from_imagenet=True)
    print(f'ship_model: wrote {args.out} ({os.path.getsize(args.out)} bytes), sha256 '
          f'{fingerprint}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
