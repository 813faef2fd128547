"""
vpr-cross-session: map the garden by day, come back at dusk, at night, in fog, in winter.

The cross-session benchmark (issue 22) through the node, over DDS (with odometry, or with
`--no-pose` a camera alone): the day bag is played into a
`vpr_node` with a fresh map_dir, which is stopped with SIGINT (the map is saved); then for each
session a node starts on that map_dir with `load_map:=true` (a copy per session, so every
session meets the day map alone) and the session's bag is played into it. `--cumulative` plays the
sessions as a robot lives them, night after night: each starts on the map the session before it
left (the day map and every earlier session's keyframes). Each session is
scored as `make demo` scores its loop (tools/loop_eval.py): precision of the best candidate of
every query with an accepted loop closure, recall of the session frames that could close one
(a ground-truth FoV overlap ψ > 0.5 with a keyframe of the map it started on, or with an
earlier frame of the session outside the exclusion window). Writes cross_session_summary.json,
cross_session.png and one report PNG per session.

The sets are rendered once and cached (`vpr_ros.sim.dataset.cross_session_dataset`), in a
child process: OSMesa and torch in one process crash. `--render-only` prints the set's paths and
the `vpr-eval` commands of its single-frame benchmark; `--contact-sheet PNG` renders the
conditions at the same poses.
"""
import argparse
from concurrent.futures import ProcessPoolExecutor
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from typing import Sequence

import numpy as np

from vpr_ros.tools import demo, demo_compare

CONTACT_CONDITIONS = ('noon', 'dusk', 'night', 'fog', 'winter')
_LOADED = re.compile(r'with (\d+) keyframes, session')


def _in_child(fn, *args):
    """Run fn(*args) in a fresh interpreter (spawn): rendering never shares a process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:
        return pool.submit(fn, *args).result()


def _render_set(sessions: tuple[str, ...], max_frames: int | None, seed: int):
    from vpr_ros.sim.dataset import cross_session_dataset
    return cross_session_dataset(sessions, max_frames, seed=seed)


def render_set(sessions: Sequence[str], max_frames: int | None = None, seed: int = 0):
    """Return the cross-session set's DatasetPaths (cached; rendered in a child if missing)."""
    return _in_child(_render_set, tuple(sessions), max_frames, int(seed))


def _contact_sheet(path: str, frames: tuple[int, ...], size: tuple[int, int]) -> str:
    import cv2
    from PIL import Image

    from vpr_ros.sim.conditions import parse_condition
    from vpr_ros.sim.render_backend import Renderer
    from vpr_ros.sim.scene import GardenScene, Intrinsics
    from vpr_ros.sim.sensor import exposure_for
    from vpr_ros.sim.trajectories import ROUTES, sample_traverse, TraverseSpec
    from vpr_ros.sim.world import generate_world

    world = generate_world(0)
    _, poses = sample_traverse(TraverseSpec(route=tuple(ROUTES['loop_once']), rate_hz=20.0),
                               world)
    rows = []
    with Renderer(*size) as renderer:
        for name in CONTACT_CONDITIONS:
            cond = parse_condition(name)
            scene = GardenScene(world, cond, Intrinsics.from_hfov(*size), renderer=renderer)
            row = np.concatenate([scene.render(poses[i], i, poses[i - 1], 0.05)[0]
                                  for i in frames], axis=1)
            e = exposure_for(cond)
            label = f'{name}: {e.exposure_ms:.0f} ms, gain {e.gain:.0f}'
            cv2.rectangle(row, (0, 0), (8 + 8 * len(label), 18), (0, 0, 0), -1)
            cv2.putText(row, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                        cv2.LINE_AA)
            rows.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # a 256-colour palette: a third of the bytes, for the README
    Image.fromarray(np.concatenate(rows, axis=0)).quantize(
        256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def contact_sheet(path: str, frames: Sequence[int] = (40, 130, 200),
                  size: tuple[int, int] = (240, 180)) -> str:
    """Render the conditions (rows) at the same poses of the demo's loop (columns) to a PNG."""
    return _in_child(_contact_sheet, path, tuple(frames), tuple(size))


def run_node(args: argparse.Namespace, bag: str, map_dir: str, load_map: bool,
             log_path: str) -> dict:
    """
    Play one bag into a vpr_node on map_dir, stop it with SIGINT; the matches and statuses.

    rclpy must be initialised. The node, the player and the collector are demo.py's.
    """
    from vpr_ros.ros.bag_player import play

    node_args = demo.parse_args(['--exclusion-s', str(args.exclusion_s), '--model', args.model]
                                + (['--pose-type', 'none'] if args.no_pose else [])
                                + [f'--param={p}' for p in args.param])
    node_args.param.append(f'load_map:={str(load_map).lower()}')   # last: it wins
    node, node_log = demo.start_node(node_args, map_dir, os.environ.copy(), log_path)
    collector = demo.Collector()
    try:
        demo.wait_for_node(collector.node, node, node_args.image_topic, log_path)
        played = play(bag, rate=0, topics=[node_args.image_topic, node_args.pose_topic],
                      pace_topic='/vpr/status', pace_msgtype='std_msgs/msg/Float64MultiArray',
                      paced_topic=node_args.image_topic, pace_timeout_s=30.0,
                      wait_subscriber_s=180.0, start_delay_s=1.0,
                      wait_topics=[] if args.no_pose else [node_args.pose_topic])
        frames = played['counts'].get(node_args.image_topic, 0)
        demo.wait_for_statuses(collector, frames)
    finally:
        rc = demo.stop_node(node, node_log, collector)
    with open(log_path, errors='replace') as f:
        loaded = _LOADED.findall(f.read())
    rows, status = demo.collected(collector)
    return {'rows': rows, 'status': status, 'frames_published': frames, 'exit_code': rc,
            'map_keyframes_at_start': int(loaded[0]) if loaded else -1}


def score_session(map_gt, map_keyframes_ns: np.ndarray, bag: str, result: dict,
                  exclusion_s: float, png: str, title: str) -> dict:
    """
    Score one session's node run against ground truth (loop_eval's precision and recall).

    The earlier frames a session frame may close a loop with are the keyframes of the map it
    started on (`map_gt`: the ground truth of the traverses that made them) and the session's
    own frames: one ground truth holds both (the map's stamps lie a day or more before the
    session's), so loop_eval scores it as it scores the demo's loop. `best_to_day_map` counts
    the best rows into that map (the day map, and with --cumulative the earlier sessions).
    """
    from vpr_ros.sim.writers import GT_TOPIC, read_bag_poses
    from vpr_ros.tools.loop_eval import evaluate_loops, GroundTruth, plot_report, possible_loops

    stamps, poses = read_bag_poses(bag, GT_TOPIC)
    kf_poses = map_gt.at(map_keyframes_ns)
    known = ~np.isnan(kf_poses).any(axis=1)
    gt = GroundTruth(np.concatenate([map_keyframes_ns[known], stamps]),
                     np.concatenate([kf_poses[known], poses]))
    status, rows = result['status'], result['rows']
    query_ns = np.round(status[:, 0] * 1e9).astype(np.int64)
    evaluation, psi = evaluate_loops(gt, query_ns, rows, exclusion_s)
    _, first = np.unique(rows[:, 0], return_index=True) if len(rows) else ([], [])
    to_map = rows[first, 1] * 1e9 < stamps.min() if len(rows) else np.zeros(0, bool)
    plot_report(png, gt, kf_poses[known][:, :2], rows, psi, evaluation, title=title)
    keep = ('n_queries', 'n_possible', 'n_published', 'n_best_correct', 'precision_best',
            'recall', 'average_precision', 'suggested_threshold', 'recall_at_suggested')
    return {'frames_published': result['frames_published'],
            'frames_processed': int(len(status)),
            **{k: v for k, v in evaluation.as_dict().items() if k in keep},
            'best_to_day_map': int(np.sum(to_map)), 'best_within_session': int(np.sum(~to_map)),
            # of n_possible, the frames that could also close a loop within their own session
            'possible_within_session': int(possible_loops(GroundTruth(stamps, poses), query_ns,
                                                          exclusion_s).sum()),
            'map_keyframes_at_start': result['map_keyframes_at_start'],
            'keyframes_added': int((status[:, 2] > 0).sum()) if len(status) else 0,
            'latency_core_ms_p50_p95': demo._p50_p95(status[:, 4] if len(status) else status),
            'node_exit_code': result['exit_code'], 'report_png': png}


def _keyframe_stamps(result: dict) -> np.ndarray:
    """Stamps (ns) of the frames a node run made keyframes (its /vpr/status rows)."""
    status = result['status']
    return np.round(status[status[:, 2] > 0, 0] * 1e9).astype(np.int64)


def run(args: argparse.Namespace) -> dict:
    """Map by day, then play every session against it; return (and write) the summary."""
    import rclpy

    from vpr_ros.sim.dataset import CROSS_SESSION_MAP, session_name
    from vpr_ros.sim.writers import GT_TOPIC, read_bag_poses
    from vpr_ros.tools.loop_eval import GroundTruth

    t0 = time.monotonic()
    paths = render_set(args.sessions, args.max_frames, args.seed)
    bags = dict(zip(paths.names, paths.bags))
    t_render = time.monotonic() - t0
    os.makedirs(args.out, exist_ok=True)
    env = demo.ros_environment()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
                                           'FASTDDS_DEFAULT_PROFILES_FILE', 'PYTHONUNBUFFERED')})
    day_map = os.path.join(args.out, 'map_day')
    shutil.rmtree(day_map, ignore_errors=True)
    summary = {'set': paths.root, 'garden_seed': args.seed, 'node_params': list(args.param),
               'pose_input': 'none' if args.no_pose else 'odometry',
               'model': args.model or 'built-in', 'exclusion_s': args.exclusion_s,
               'sessions': {}, 'render_s': round(t_render, 1)}
    rclpy.init(args=[])
    try:
        print(f'vpr-cross-session: day map from {bags[CROSS_SESSION_MAP]} '
              f'(domain {env["ROS_DOMAIN_ID"]})')
        day = run_node(args, bags[CROSS_SESSION_MAP], day_map, False,
                       os.path.join(args.out, 'vpr_node_day.log'))
        # the ground truth of the traverses that made the map, and its keyframes' stamps
        gt_parts = [read_bag_poses(bags[CROSS_SESSION_MAP], GT_TOPIC)]
        map_gt, map_kf = GroundTruth(*gt_parts[0]), _keyframe_stamps(day)
        summary['day_map'] = {'frames_processed': int(len(day['status'])),
                              'keyframes': int(len(map_kf)), 'node_exit_code': day['exit_code']}
        summary['cumulative'] = bool(args.cumulative)
        start_map = day_map
        for session in args.sessions:
            name = session_name(session)
            map_dir = os.path.join(args.out, f'map_{name}')
            shutil.rmtree(map_dir, ignore_errors=True)
            shutil.copytree(start_map, map_dir)   # without --cumulative: the day map alone
            against = 'day map' if start_map == day_map else 'day map and earlier sessions'
            print(f'vpr-cross-session: session {session} against the {against}')
            result = run_node(args, bags[name], map_dir, True,
                              os.path.join(args.out, f'vpr_node_{name}.log'))
            summary['sessions'][session] = score_session(
                map_gt, map_kf, bags[name], result, args.exclusion_s,
                os.path.join(args.out, f'cross_session_{name}.png'),
                f'{against}, {session} session ({demo_compare.model_label(args.model)})')
            if args.cumulative:  # the next session starts on the map this one left
                start_map = map_dir
                gt_parts.append(read_bag_poses(bags[name], GT_TOPIC))
                map_gt = GroundTruth(*(np.concatenate(v) for v in zip(*gt_parts)))
                map_kf = np.concatenate([map_kf, _keyframe_stamps(result)])
    finally:
        rclpy.shutdown()
    summary['seconds'] = round(time.monotonic() - t0, 1)
    summary['png'] = plot_summary(os.path.join(args.out, 'cross_session.png'), summary)
    with open(os.path.join(args.out, 'cross_session_summary.json'), 'w') as f:
        json.dump(_json_safe(summary), f, indent=2)
    return summary


def _json_safe(value):
    """NaN (no loop published, none possible) as null: strict JSON readers refuse NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def plot_summary(path: str, summary: dict) -> str:
    """Precision and recall per session, side by side, with the counts behind them."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(summary['sessions'])
    s = [summary['sessions'][n] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 3, 4.5))
    prec = [np.nan_to_num(v['precision_best'], nan=0.0) for v in s]
    ax.bar(x - 0.2, prec, 0.4, label='precision (best candidate)', color='tab:blue')
    ax.bar(x + 0.2, [np.nan_to_num(v['recall'], nan=0.0) for v in s], 0.4,
           label='recall (frames that could close a loop)', color='tab:orange')
    for k, v in enumerate(s):
        ax.text(x[k], 1.03, f"{v['n_published']} published\n{v['n_possible']} possible",
                ha='center', fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel('fraction')
    params = ' '.join(summary['node_params']) or 'node defaults'
    if summary.get('pose_input') == 'none':
        params += ', no pose topic'
    ax.set_title(f"day map, sessions against it: {summary['model']}, {params}", fontsize=9)
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from vpr_ros.sim.dataset import CROSS_SESSIONS

    p = argparse.ArgumentParser(prog='vpr-cross-session', description=__doc__.splitlines()[1])
    p.add_argument('--sessions', nargs='+', default=list(CROSS_SESSIONS), metavar='CONDITION',
                   help=f'session conditions (default: {" ".join(CROSS_SESSIONS)}); any '
                        "vpr-sim condition, e.g. 'night,gain=8'")
    p.add_argument('--max-frames', type=int, default=None,
                   help='frames per traverse (a smaller set, cached separately)')
    p.add_argument('--seed', type=int, default=0,
                   help='garden: 0 the benchmark, 1 the calibration garden of the built-in '
                        'operating point (another garden, same route and sessions)')
    p.add_argument('--model', default='', help='model file or shipped name (default: built-in)')
    p.add_argument('--exclusion-s', type=float, default=30.0)
    p.add_argument('--no-pose', action='store_true',
                   help='nodes without a pose topic (a camera alone: keyframes by time and '
                        'novelty, sequences aligned by time); the bags keep the ground truth')
    p.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                   help='vpr_node parameter for every node (repeatable)')
    p.add_argument('--cumulative', action='store_true',
                   help='each session continues the map the session before it left (the day '
                        'map and every earlier session), as a robot does night after night; '
                        'default: every session meets the day map alone')
    p.add_argument('--out', default='cross_session_out')
    p.add_argument('--render-only', action='store_true',
                   help="render (or find) the set, print its paths and vpr-eval's commands")
    p.add_argument('--contact-sheet', metavar='PNG',
                   help='render the conditions at the same poses into PNG and exit')
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bad = [p for p in args.param if ':=' not in p]
    if bad:
        print(f'vpr-cross-session: --param takes NAME:=VALUE, got {bad[0]!r}', file=sys.stderr)
        return 2
    if args.contact_sheet:
        print(contact_sheet(args.contact_sheet))
        return 0
    if args.render_only:
        paths = render_set(args.sessions, args.max_frames, args.seed)
        print(f'root: {paths.root}')
        for name, index, bag in zip(paths.names, paths.indices, paths.bags):
            print(f'{name}: {index} {bag}')
        for name, index in zip(paths.names[1:], paths.indices[1:]):
            print(f'vpr-eval --map {paths.indices[0]} --query {index} --out eval_{name}')
        return 0
    summary = run(args)
    print(format_table(summary))
    print(f"vpr-cross-session: {summary['png']}, "
          f"{os.path.join(args.out, 'cross_session_summary.json')}")
    failed = [s for s, v in summary['sessions'].items() if v['node_exit_code'] != 0]
    return 1 if failed or summary['day_map']['node_exit_code'] != 0 else 0


def format_table(summary: dict) -> str:
    """One line per session: frames, possible loops, accepted loops, precision, recall."""
    head = (f"{'session':<12} {'frames':>6} {'possible':>8} {'published':>9} "
            f"{'precision':>9} {'recall':>6} {'to map':>6}")
    lines = [f"day map: {summary['day_map']['keyframes']} keyframes of "
             f"{summary['day_map']['frames_processed']} frames", head]
    for name, v in summary['sessions'].items():
        lines.append(f"{name:<12} {v['frames_processed']:>6} {v['n_possible']:>8} "
                     f"{v['n_published']:>9} {v['precision_best']:>9.3f} {v['recall']:>6.3f} "
                     f"{v['best_to_day_map']:>6}")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
