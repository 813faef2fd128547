"""
`make train-demo` (`vpr-train-demo`): the training workflow end to end, on simulated garden bags.

What a user does with a robot's own recordings, on bags the simulator renders of one garden:

1. data     render the traverses as rosbags (`vpr_ros.sim`, cached by its parameters)
2. extract  `vpr-extract-bag` each bag (ground-truth pose topic) into a TB-Places folder
3. labels   `vpr-labels`: graded ψ of the training queries against the training map
4. train    `vpr-train` with GCL, validated on a held-out pair, best by validation R@5
5. export   `vpr-export`: the model file the node loads
6. evaluate `vpr-eval`: the off-the-shelf ImageNet model against the trained one, on traverses
            in conditions never trained on (winter, fog) and on the real corridor set
7. demo     the `make demo` flow on the demo bag, once per model

Nothing trained on is evaluated on: the test traverses are other sessions in conditions the
training never saw (only the garden is the same, as for a robot trained where it works).
Every stage reuses what an earlier run left in OUT, so an interrupted run continues (training
resumes from its checkpoint); `--fresh` starts over. Prints one table and writes
`OUT/train_demo_summary.json` and `OUT/train_demo_report.png`.
"""
import argparse
from dataclasses import dataclass
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

from vpr_ros.training.train_demo_report import format_table, plot_report, summarize

from vpr_ros.core.errors import VPRError
from vpr_ros.sim.dataset import DatasetPaths, load_paths, TraverseConfig

FIGURE8_REVERSED = ('S', 'SW', 'W', 'C', 'E', 'NE', 'N', 'C', 'S', 'SW')


@dataclass(frozen=True)
class Split:
    """Which traverses play which part; names are the TraverseConfig names."""

    train_map: tuple[str, ...] = ('train_map_noon',)
    train_query: tuple[str, ...] = ('train_morning', 'train_evening', 'train_overcast')
    val_map: tuple[str, ...] = ('val_map_noon',)
    val_query: tuple[str, ...] = ('val_evening',)
    test_map: str = 'test_map_noon'
    test_query: tuple[str, ...] = ('test_winter', 'test_fog')


# One garden (seed 0, the demo's). Training sees noon, morning, evening and overcast; winter and
# fog appear only in the test traverses. Between them the routes cover every garden path.
TRAVERSES = (
    TraverseConfig('train_map_noon', 'figure8', 'noon'),
    TraverseConfig('train_morning', FIGURE8_REVERSED, 'morning'),
    TraverseConfig('train_evening', 'big', 'evening'),
    TraverseConfig('train_overcast', 'figure8', 'overcast'),
    TraverseConfig('val_map_noon', 'loop_once', 'noon'),
    TraverseConfig('val_evening', 'loop_once', 'evening'),
    TraverseConfig('test_map_noon', 'east', 'noon'),
    TraverseConfig('test_winter', 'east', 'winter'),
    TraverseConfig('test_fog', 'east', 'fog'),
)
SPLIT = Split()
SUMMARY = 'train_demo_summary.json'
REPORT = 'train_demo_report.png'


def sim_argv(frames: int) -> list[str]:
    """vpr-sim options of the training set: 2.5 images/s at 1 m/s, one every 0.4 m."""
    argv = ['--default', '--seed', '0', '--rate', '2.5', '--pose-rate', '20', '--no-folder']
    for t in TRAVERSES:
        route = t.route if isinstance(t.route, str) else '-'.join(t.route)
        argv += ['--traverse', f'{t.name}:{route}:{t.condition}:{t.speed_mps:g}']
    return argv + (['--frames', str(frames)] if frames else [])


def simulate(argv: Sequence[str]) -> DatasetPaths:
    """
    Render (or find in the cache) a set with vpr-sim in a process of its own, as a user would.

    Not in this process: OSMesa's llvmpipe and the LLVM inside triton (which torch imports)
    clash, and importing torch after rendering crashed with a segmentation fault here.
    """
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.sim.cli', *argv], env=os.environ.copy(),
                          stdout=subprocess.PIPE, text=True)
    print(proc.stdout, end='', flush=True)
    roots = [line.split(':', 1)[1].strip() for line in proc.stdout.splitlines()
             if line.startswith('root:')]
    if proc.returncode != 0 or not roots:
        raise VPRError(f'vpr-sim {" ".join(argv)} failed with exit code {proc.returncode}')
    return load_paths(roots[0])


def _stage(name: str) -> float:
    print(f'\n== train-demo: {name}', flush=True)
    return time.monotonic()


def extract_bags(bags: dict[str, str], data_root: str, progress: bool) -> dict[str, dict]:
    """Extract every bag (reusing a finished extraction); return the summaries by name."""
    from vpr_ros.training.extract_bag import extract, format_summary

    from vpr_ros.sim.writers import GT_TOPIC, IMAGE_TOPIC

    summaries = {}
    for name, bag in bags.items():
        out = os.path.join(data_root, name)
        done = os.path.join(out, 'extract_summary.json')
        if os.path.isfile(done):
            with open(done) as f:
                summaries[name] = json.load(f)
            continue
        shutil.rmtree(out, ignore_errors=True)  # a half-written extraction has no summary
        summaries[name] = extract(bag, out, image_topic=IMAGE_TOPIC, pose_topic=GT_TOPIC,
                                  min_distance_m=0.3, progress=progress)
        print(format_summary(summaries[name]), flush=True)
    return summaries


def make_labels(data_root: str, out_path: str, split: Split) -> dict:
    """ψ labels of the training queries × the training map (reused when already written)."""
    from vpr_ros.training.dataset import select_traverses
    from vpr_ros.training.labels import format_summary, generate_labels, read_label_meta

    if os.path.isfile(out_path):
        return read_label_meta(out_path)['summary']
    _, summary = generate_labels(select_traverses(data_root, split.train_query),
                                 select_traverses(data_root, split.train_map), out_path,
                                 progress=True)
    print(format_summary(summary), flush=True)
    return summary


def train_argv(args: argparse.Namespace, data_root: str, labels: str, out: str,
               split: Split) -> list[str]:
    """Build the vpr-train command line (printed too, to copy for a robot's own data)."""
    argv = ['--data-root', data_root, '--train-map', *split.train_map,
            '--train-query', *split.train_query, '--val-map', *split.val_map,
            '--val-query', *split.val_query, '--labels', labels, '--out', out,
            '--loss', 'gcl', '--backbone', 'mobilenet_v2', '--pooling', 'gem',
            '--image-size', str(args.image_size[0]), str(args.image_size[1]),
            '--epochs', str(args.epochs), '--lr-step', str(args.lr_step),
            '--batch-size', str(args.batch_size), '--pairs-per-epoch', str(args.pairs_per_epoch),
            '--workers', str(args.workers), '--seed', str(args.seed)]
    if args.lr is not None:
        argv += ['--lr', str(args.lr)]
    return argv + (['--no-progress'] if args.no_progress else [])


def run_training(argv: list[str]) -> dict:
    from vpr_ros.training.train import build_parser, train

    print('vpr-train ' + ' '.join(argv), flush=True)
    return train(build_parser().parse_args(argv))


def export_once(run_dir: str, model: str, whiten_dim: int, whiten_map: Sequence[str],
                data_root: str) -> str:
    """Export best.pt unless the model file already holds it; return the fingerprint."""
    from vpr_ros.training.export import export_model
    from vpr_ros.training.train import BEST

    from vpr_ros.model.model_file import load_model_and_fingerprint

    best = os.path.join(run_dir, BEST)
    if os.path.isfile(model) and os.path.getmtime(model) >= os.path.getmtime(best):
        net, _, fingerprint = load_model_and_fingerprint(model)
        if (net.spec.whitening_dim or 0) == whiten_dim:
            return fingerprint  # a re-export would differ only in its date, and fingerprint
    _, fingerprint, _ = export_model(run_dir, model, whiten_dim=whiten_dim or None,
                                     whiten_map=list(whiten_map) if whiten_dim else (),
                                     data_root=data_root)
    whiten = f' --whiten-dim {whiten_dim}' if whiten_dim else ''
    print(f'vpr-export {run_dir} --out {model}{whiten}: fingerprint {fingerprint}', flush=True)
    return fingerprint


def evaluate_models(model: str, data_root: str, corridor: str, out: str, split: Split,
                    progress: bool) -> dict[str, dict]:
    """vpr-eval of default vs trained on each unseen-condition traverse and the corridor."""
    from vpr_ros.training.dataset import select_traverses
    from vpr_ros.training.evaluate import evaluate

    cache = os.path.join(out, 'cache')
    test_map = select_traverses(data_root, [split.test_map])[0].index_path
    sets: dict[str, dict] = {}
    for name in split.test_query:
        query = select_traverses(data_root, [name])[0].index_path
        sets[f'garden {name.removeprefix("test_")}'] = evaluate(
            [test_map], [query], models=[model], out_dir=os.path.join(out, name),
            cache_dir=cache, progress=progress)
    if corridor:
        sets['corridor (real)'] = evaluate(folder=corridor, models=[model],
                                           out_dir=os.path.join(out, 'corridor'),
                                           cache_dir=cache, progress=progress)
    return sets


def run_demos(model: str, out: str, max_frames: int) -> dict[str, dict]:
    """Run the make-demo flow once with the built-in model and once with the trained one."""
    from vpr_ros.tools.demo import parse_args, run_demo

    runs = {}
    for name, path in (('default', ''), ('trained', model)):
        argv = ['--out', os.path.join(out, f'demo_{name}'), '--max-frames', str(max_frames)]
        run_demo(parse_args(argv + (['--model', path] if path else [])))
        with open(os.path.join(out, f'demo_{name}', 'demo_summary.json')) as f:
            runs[name] = json.load(f)  # with the precision-recall curve for the report
    return runs


def run(args: argparse.Namespace) -> dict:
    """All stages; returns the summary written to OUT/train_demo_summary.json."""
    t_start = time.monotonic()
    out = os.path.abspath(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    seconds: dict[str, float] = {}
    split = SPLIT

    t = _stage('1/7 data: simulated garden bags')
    print('vpr-sim ' + ' '.join(sim_argv(args.frames)), flush=True)
    paths = simulate(sim_argv(args.frames))
    if not args.no_demo:
        simulate(['--default'])  # the demo's bag, rendered here for the same reason
    seconds['data'] = time.monotonic() - t

    t = _stage('2/7 extract: vpr-extract-bag per bag')
    data_root = os.path.join(out, 'data')
    extracted = extract_bags(dict(zip(paths.names, paths.bags)), data_root, not args.no_progress)
    seconds['extract'] = time.monotonic() - t

    t = _stage('3/7 labels: ψ of the training queries × map')
    labels_path = os.path.join(out, 'train_labels.npz')
    label_summary = make_labels(data_root, labels_path, split)
    seconds['labels'] = time.monotonic() - t

    t = _stage('4/7 train: GCL')
    run_dir = os.path.join(out, 'run')
    train_summary = run_training(train_argv(args, data_root, labels_path, run_dir, split))
    seconds['train'] = time.monotonic() - t

    t = _stage('5/7 export: the model file')
    model = os.path.join(out, 'model.pt')
    fingerprint = export_once(run_dir, model, args.whiten_dim,
                              split.train_map + split.train_query, data_root)
    seconds['export'] = time.monotonic() - t

    t = _stage('6/7 evaluate: default vs trained, unseen conditions and the real corridor')
    corridor = args.corridor if args.corridor and os.path.isdir(args.corridor) else ''
    if args.corridor and not corridor:
        print(f'train-demo: no corridor set at {args.corridor}: left out')
    evals = evaluate_models(model, data_root, corridor, os.path.join(out, 'eval'), split,
                            not args.no_progress)
    seconds['evaluate'] = time.monotonic() - t

    demos: dict[str, dict] = {}
    if not args.no_demo:
        t = _stage('7/7 demo: make demo with each model')
        demos = run_demos(model, out, args.demo_frames)
        seconds['demo'] = time.monotonic() - t

    rows = summarize(evals, demos)
    summary = {
        'out': out, 'model': model, 'fingerprint': fingerprint, 'sim_root': paths.root,
        'frames_extracted': {n: s['kept'] for n, s in extracted.items()},
        'labels': label_summary, 'split': split.__dict__,
        'train': {'best': train_summary.get('best'), 'epochs': train_summary.get('epochs'),
                  'seconds': train_summary.get('seconds')},
        'models': rows, 'report_png': plot_report(os.path.join(out, REPORT), evals, demos),
        'seconds': {k: round(v, 1) for k, v in seconds.items()}
        | {'total': round(time.monotonic() - t_start, 1)},
    }
    with open(os.path.join(out, SUMMARY), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    print('\n' + format_table(rows, list(evals)))
    print(f'stage seconds: {summary["seconds"]}')
    print(f'wrote {os.path.join(out, SUMMARY)} and {summary["report_png"]}')
    return summary


def _default_corridor() -> str:
    """../shared/data/corridor beside a source checkout (this file is <repo>/training/)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(os.path.dirname(repo), 'shared', 'data', 'corridor')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vpr-train-demo', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='train_demo_out', help='output folder')
    p.add_argument('--fresh', action='store_true', help='delete OUT first (retrain from scratch)')
    p.add_argument('--frames', type=int, default=0,
                   help='render at most N images per traverse (0: whole routes)')
    p.add_argument('--image-size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'),
                   help="training and inference input size (default: the built-in model's)")
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--lr', type=float, default=None, help="default: vpr-train's (0.1 for GCL)")
    p.add_argument('--lr-step', type=int, default=5, help='epochs between lr ÷ 10')
    p.add_argument('--batch-size', type=int, default=32, help='pairs per step')
    p.add_argument('--pairs-per-epoch', type=int, default=1024)
    p.add_argument('--workers', type=int, default=2, help='DataLoader workers')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--whiten-dim', type=int, default=0,
                   help='PCA-whiten the exported model to N dims (fitted on the training set)')
    p.add_argument('--corridor', default=_default_corridor(),
                   help='real reference/query folder to evaluate on too (skipped if missing)')
    p.add_argument('--no-demo', action='store_true', help='skip the demo runs')
    p.add_argument('--demo-frames', type=int, default=0, help='demo: stop after N images')
    p.add_argument('--no-progress', action='store_true')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (VPRError, ValueError, OSError) as exc:
        print(f'vpr-train-demo: error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
