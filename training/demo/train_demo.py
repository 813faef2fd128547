"""
`make train-demo` (`vpr-train-demo`): the training workflow end to end, on simulated garden bags.

What a user does with a robot's own recordings, on bags the simulator renders of a garden:

1. data     render the traverses as rosbags (`vpr_ros.sim`, cached by its parameters)
2. extract  `vpr-extract-bag` each bag (ground-truth pose topic) into a TB-Places folder
3. labels   `vpr-labels`: graded ψ of the training queries against the training map
4. train    `vpr-train` with GCL (`--loss cl`: the binary contrastive loss, `both`: each), each
            loss at the paper's learning rate, `--seeds N` runs per loss, best epoch by
            validation R@1 on a held-out pair
5. export   `vpr-export`: the model file the node loads
6. evaluate `vpr-eval`: the off-the-shelf ImageNet model against every trained one, on traverses
            in conditions never trained on (winter, fog), a night session and the real
            corridor set: R@1/5/10, mAP@5 and all-pairs AP, each with a bootstrap 95 % interval
            over queries
7. demo     the `make demo` flow on the demo bag, with ImageNet and the first trained model

Nothing trained on is evaluated on: the test traverses are other sessions, in conditions the
training never saw (winter, fog) or, for night, in a trained condition (the small set: same
garden, as for a robot trained where it works; `--large`: also gardens never trained on). A
recipe is said to win only where its intervals lie clear of the other's; overlapping intervals
are reported as no winner. Every stage reuses what an earlier run left in OUT, so an
interrupted run continues (training resumes from its checkpoint); `--fresh` starts over.
Prints one table and writes `OUT/train_demo_summary.json` and `OUT/train_demo_report.png`.
"""
import argparse
import json
import os
import shutil
import sys
import time
from typing import Sequence

from vpr_ros.core.errors import VPRError
from vpr_ros.training.demo.train_demo_report import (
    BASELINE,
    format_table,
    plot_report,
    summarize,
    verdicts,
)
from vpr_ros.training.demo.train_demo_sets import (
    Benchmark,
    BENCHMARKS,
    make_labels,
    simulate,
    simulate_benchmark,
)
from vpr_ros.training.fit.augment import AUGMENT_CHOICES, DEFAULT_AUGMENT, DEFAULT_VIEWS

SUMMARY = 'train_demo_summary.json'
REPORT = 'train_demo_report.png'
LOSSES = {'gcl': ('gcl',), 'cl': ('cl',), 'both': ('gcl', 'cl')}


def _stage(name: str) -> float:
    print(f'\n== train-demo: {name}', flush=True)
    return time.monotonic()


def extract_bags(bags: dict[str, str], data_root: str, progress: bool) -> dict[str, dict]:
    """Extract every bag (reusing a finished extraction); return the summaries by name."""
    from vpr_ros.sim.writers import GT_TOPIC, IMAGE_TOPIC
    from vpr_ros.training.data.extract_bag import extract, format_summary

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


def model_key(loss: str, augment: str) -> str:
    """'gcl' or 'gcl+photo+geo': a recipe's name in tables (a model row is '<key> s<seed>')."""
    return loss if augment == 'none' else f'{loss}+{augment}'


def train_argv(args: argparse.Namespace, data_root: str, labels: str, out: str,
               bench: Benchmark, loss: str, seed: int, augment: str = 'none') -> list[str]:
    """Build the vpr-train command line (printed too, to copy for a robot's own data)."""
    split = bench.split
    argv = ['--data-root', data_root, '--train-map', *split.train_map,
            '--train-query', *split.train_query, '--val-map', *split.val_map,
            '--val-query', *split.val_query, '--labels', labels, '--out', out,
            '--loss', loss, '--backbone', 'mobilenet_v2', '--pooling', 'gem',
            '--image-size', str(args.image_size[0]), str(args.image_size[1]),
            '--epochs', str(args.epochs), '--lr-step', str(args.lr_step),
            '--batch-size', str(args.batch_size), '--pairs-per-epoch', str(args.pairs_per_epoch),
            '--workers', str(args.workers), '--seed', str(seed),
            '--select-metric', args.select_metric,
            # views of the same images are shared by the runs (losses, seeds) of one OUT
            '--cache-dir', os.path.join(os.path.dirname(out), 'feature_cache')]
    if args.lr is not None:
        argv += ['--lr', str(args.lr)]
    if augment != 'none':
        argv += ['--augment', augment, '--aug-views', str(args.aug_views)]
    return argv + (['--no-progress'] if args.no_progress else [])


def run_training(argv: list[str]) -> dict:
    from vpr_ros.training.fit.train import train
    from vpr_ros.training.fit.train_args import build_parser

    print('vpr-train ' + ' '.join(argv), flush=True)
    return train(build_parser().parse_args(argv))


def export_once(run_dir: str, model: str, whiten_dim: int, whiten_map: Sequence[str],
                data_root: str) -> str:
    """Export best.pt unless the model file already holds it; return the fingerprint."""
    from vpr_ros.model.model_file import load_model_and_fingerprint
    from vpr_ros.training.fit.checkpoint import BEST
    from vpr_ros.training.ship.export import export_model

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


def train_models(args: argparse.Namespace, out: str, data_root: str, labels: str,
                 bench: Benchmark) -> list[dict]:
    """Train and export one model per augmentation, loss and seed (each loss at its paper lr)."""
    from vpr_ros.training.fit.train_args import DEFAULT_LR

    split = bench.split
    models = []
    for augment in args.augment:
        for loss in LOSSES[args.loss]:
            for seed in range(args.seed, args.seed + args.seeds):
                key = model_key(loss, augment)
                tag = key.replace('+', '_')
                run_dir = os.path.join(out, f'run_{tag}_s{seed}')
                t = time.monotonic()
                summary = run_training(train_argv(args, data_root, labels, run_dir, bench, loss,
                                                  seed, augment))
                path = os.path.join(out, f'model_{tag}_s{seed}.pt')
                fingerprint = export_once(run_dir, path, args.whiten_dim,
                                          split.train_map + split.train_query, data_root)
                models.append({'name': f'{key} s{seed}', 'loss': loss, 'seed': seed,
                               'augment': augment, 'path': path,
                               'lr': args.lr if args.lr is not None else DEFAULT_LR[loss],
                               'fingerprint': fingerprint, 'best': summary.get('best'),
                               'epochs': summary.get('epochs'),
                               'train_seconds': summary.get('seconds'),
                               'seconds': round(time.monotonic() - t, 1)})
    return models


def evaluate_models(models: list[dict], data_root: str, corridor: str, out: str,
                    bench: Benchmark, args: argparse.Namespace) -> dict[str, dict]:
    """ImageNet and every trained model on each test set and the corridor, with CIs."""
    from vpr_ros.training.data.dataset import select_traverses
    from vpr_ros.training.eval.compare_eval import evaluate_with_ci

    named = [(BASELINE, '')] + [(m['name'], m['path']) for m in models]
    cache = os.path.join(out, 'cache')
    progress = not args.no_progress
    sets: dict[str, dict] = {}
    for label, map_name, query_name in bench.split.test:
        m_index, q_index = (t.index_path for t in select_traverses(data_root,
                                                                   [map_name, query_name]))
        sets[label] = evaluate_with_ci(named, [m_index], [q_index],
                                       out_dir=os.path.join(out, query_name), cache_dir=cache,
                                       progress=progress, n_boot=args.boot, seed=args.seed)
    if corridor:
        sets['corridor (real)'] = evaluate_with_ci(
            named, folder=corridor, out_dir=os.path.join(out, 'corridor'), cache_dir=cache,
            progress=progress, n_boot=args.boot, seed=args.seed)
    return sets


def run_demos(models: list[tuple[str, str]], out: str, max_frames: int) -> dict[str, dict]:
    """Run the make-demo flow once per (name, model path); '' is the built-in model."""
    from vpr_ros.tools.demo import parse_args, run_demo

    runs = {}
    for name, path in models:
        folder = os.path.join(out, 'demo_' + name.replace(' ', '_'))
        argv = ['--out', folder, '--max-frames', str(max_frames)]
        run_demo(parse_args(argv + (['--model', path] if path else [])))
        with open(os.path.join(folder, 'demo_summary.json')) as f:
            runs[name] = json.load(f)  # with the precision-recall curve for the report
    return runs


def blank_wall_cosines(models: list[dict]) -> list[float]:
    """Two different blank walls' cosine for ImageNet and each model (the textureless collapse)."""
    from vpr_ros.model.encoder import build_encoder
    from vpr_ros.training.eval.blank_walls import blank_wall_cosine

    return [round(blank_wall_cosine(build_encoder(path, device='cpu')), 4)
            for path in [''] + [m['path'] for m in models]]


def _prepare(args: argparse.Namespace, out: str, bench: Benchmark, seconds: dict) -> tuple:
    """Stages 1-3: rendered bags, their extractions, the labels."""
    t = _stage('1/7 data: simulated garden bags')
    bags = simulate_benchmark(bench, args.frames)
    if not args.no_demo:
        simulate(['--default'])  # the demo's bag, rendered here for the same reason
    seconds['data'] = time.monotonic() - t

    t = _stage('2/7 extract: vpr-extract-bag per bag')
    data_root = os.path.join(out, 'data')
    extracted = extract_bags(bags, data_root, not args.no_progress)
    seconds['extract'] = time.monotonic() - t

    t = _stage('3/7 labels: ψ of the training queries × map')
    labels_path = os.path.join(out, 'train_labels.npz')
    label_summary = make_labels(data_root, labels_path, bench)
    seconds['labels'] = time.monotonic() - t
    return data_root, extracted, labels_path, label_summary


def run(args: argparse.Namespace) -> dict:
    """All stages; returns the summary written to OUT/train_demo_summary.json."""
    t_start = time.monotonic()
    out = os.path.abspath(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    seconds: dict[str, float] = {}
    bench = BENCHMARKS['large' if args.large else 'small']
    data_root, extracted, labels_path, label_summary = _prepare(args, out, bench, seconds)

    t = _stage(f'4-5/7 train and export: {" and ".join(LOSSES[args.loss]).upper()}, '
               f'augment {" and ".join(args.augment)}, {args.seeds} seed(s) each')
    models = train_models(args, out, data_root, labels_path, bench)
    seconds['train_export'] = time.monotonic() - t

    t = _stage('6/7 evaluate: ImageNet vs trained, test sessions and the real corridor')
    corridor = args.corridor if args.corridor and os.path.isdir(args.corridor) else ''
    if args.corridor and not corridor:
        print(f'train-demo: no corridor set at {args.corridor}: left out')
    evals = evaluate_models(models, data_root, corridor, os.path.join(out, 'eval'), bench, args)
    seconds['evaluate'] = time.monotonic() - t

    demos: dict[str, dict] = {}
    if not args.no_demo:
        t = _stage('7/7 demo: make demo with ImageNet and the first trained model')
        demos = run_demos([(BASELINE, ''), (models[0]['name'], models[0]['path'])], out,
                          args.demo_frames)
        seconds['demo'] = time.monotonic() - t

    rows = summarize(evals, demos)
    for row, cos in zip(rows, blank_wall_cosines(models)):  # rows: imagenet, then models
        row['blank_wall_cosine'] = cos
    summary = {
        'out': out, 'benchmark': bench.name, 'model': models[0]['path'],
        'fingerprint': models[0]['fingerprint'], 'trained': models,
        'frames_extracted': {n: s['kept'] for n, s in extracted.items()},
        'labels': label_summary, 'split': bench.split.__dict__, 'bootstrap': {
            'n_boot': args.boot, 'seed': args.seed, 'level': 0.95, 'resampled': 'queries'},
        'models': rows, 'verdicts': verdicts(rows, list(evals)),
        'report_png': plot_report(os.path.join(out, REPORT), evals, demos),
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
    """../shared/data/corridor beside a source checkout (this file is <repo>/training/demo/)."""
    # realpath: imported as vpr_ros/training/ (a link to ../training) it would name vpr_ros/
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    return os.path.join(os.path.dirname(repo), 'shared', 'data', 'corridor')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vpr-train-demo', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='train_demo_out', help='output folder')
    p.add_argument('--fresh', action='store_true', help='delete OUT first (retrain from scratch)')
    p.add_argument('--large', action='store_true',
                   help='the larger benchmark: 4 gardens (2 only tested on), 8 training '
                        'traverses, unseen seasons/times/weather, >= 1,000 test queries')
    p.add_argument('--frames', type=int, default=0,
                   help='render at most N images per traverse (0: whole routes)')
    p.add_argument('--image-size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'),
                   help="training and inference input size (default: the built-in model's)")
    p.add_argument('--loss', choices=tuple(LOSSES), default='gcl',
                   help='train with GCL (graded ψ), the binary contrastive loss, or both')
    p.add_argument('--augment', nargs='+', choices=AUGMENT_CHOICES, default=[DEFAULT_AUGMENT],
                   help="vpr-train's --augment; several: one model per value (each loss and "
                        'seed), compared in one table')
    p.add_argument('--aug-views', type=int, default=DEFAULT_VIEWS,
                   help="vpr-train's --aug-views: augmented views cached per image")
    p.add_argument('--seeds', type=int, default=1,
                   help='models per loss, seeds SEED..SEED+N-1 (seed noise next to the CIs)')
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--lr', type=float, default=None,
                   help="one lr for every loss; default: vpr-train's per loss, the paper's "
                        '(0.1 GCL, 0.01 CL)')
    p.add_argument('--lr-step', type=int, default=5, help='epochs between lr ÷ 10')
    p.add_argument('--batch-size', type=int, default=32, help='pairs per step')
    p.add_argument('--pairs-per-epoch', type=int, default=1024)
    p.add_argument('--workers', type=int, default=2, help='DataLoader workers')
    p.add_argument('--seed', type=int, default=0, help='first training seed; bootstrap seed')
    p.add_argument('--select-metric', choices=('r1', 'r5', 'r10', 'map'), default='r1',
                   help="validation metric that picks each run's best epoch")
    p.add_argument('--boot', type=int, default=1000,
                   help='bootstrap samples (queries resampled) for the 95 %% intervals')
    p.add_argument('--whiten-dim', type=int, default=0,
                   help='PCA-whiten the exported models to N dims, fitted on the TRAINING '
                        'traverses. Not recommended: measured, it cost 0.15-0.38 R@1 on unseen '
                        'conditions; 0 (default) = no whitening')
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
