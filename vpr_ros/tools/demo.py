"""
`make demo`: the whole loop-closure pipeline on a bag, scored against ground truth.

Generates (or reuses) the simulated garden bag unless a bag is given, starts `vpr_node` as its
own process with the shipped config, plays the bag into it over DDS (paced on the node's
per-frame `/vpr/status`, so no frame is dropped and the result does not depend on machine
load), collects `/vpr/matches`, stops the node with SIGINT (the map is saved) and reports
frames, keyframes, loop closures, precision/recall against ground-truth poses (ψ > 0.5) and
latency, as a table, a JSON and a PNG.

By default it then runs the node again on the same bag with the shipped GCL-trained model
(`--compare gcl_garden`, each model at its own calibrated operating point) and reports both
side by side (demo_compare.py): one table, `side_by_side` in demo_summary.json and
demo_side_by_side.png. `--compare none` runs only `--model`.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

import numpy as np

from vpr_ros.model import shipped
from vpr_ros.ros.topics import input_remaps
from vpr_ros.tools import demo_compare

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO_CONFIG = os.path.join(REPO, 'config')  # vpr_ros/tools/demo.py -> <repo>/config


def ros_environment() -> dict:
    """Loopback-only DDS on a random domain, the shipped Fast DDS profile, for us and the node."""
    env = os.environ.copy()
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if env.get('ROS_DOMAIN_ID', '0') in ('', '0'):
        env['ROS_DOMAIN_ID'] = str(np.random.default_rng().integers(1, 102))
    env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                   os.path.join(REPO_CONFIG, 'fastdds_shm16mb.xml'))
    env['PYTHONUNBUFFERED'] = '1'
    return env


class Collector:
    """Records /vpr/matches and /vpr/status in this process (its own executor thread)."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray

        self.node = rclpy.create_node('vpr_demo_collector')
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.matches: list[np.ndarray] = []
        self.status: list[np.ndarray] = []
        self.node.create_subscription(Float64MultiArray, '/vpr/matches',
                                      lambda m: self.matches.append(_rows(m)), qos)
        self.node.create_subscription(Float64MultiArray, '/vpr/status',
                                      lambda m: self.status.append(_rows(m)), qos)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _rows(msg: object) -> np.ndarray:
    cols = msg.layout.dim[1].size if len(msg.layout.dim) > 1 else len(msg.data)
    return np.asarray(msg.data, dtype=np.float64).reshape(-1, cols)


def node_command(args: argparse.Namespace, map_dir: str) -> list[str]:
    """vpr_node with the shipped config, the demo's overrides, then the user's --param ones."""
    params = os.path.join(REPO_CONFIG, 'vpr.yaml')
    cmd = [sys.executable, '-m', 'vpr_ros.ros.node', '--ros-args', '--params-file', params,
           '-p', f'image_transport:={args.transport}', '-p', f'pose_type:={args.pose_type}',
           '-p', f'map_dir:={map_dir}',
           '-p', 'load_map:=false', '-p', 'publish_status:=true', '-p', 'qos:=reliable',
           '-p', f'exclusion_window_s:={args.exclusion_s}']
    if args.model:  # rcl refuses an empty override; the yaml's '' means the built-in model
        model = args.model if shipped.is_shipped_name(args.model) else os.path.abspath(args.model)
        cmd += ['-p', f'model_path:={model}']
    for rule in input_remaps(args.image_topic, args.transport, args.pose_topic, args.pose_type):
        cmd += ['-r', rule]  # the node's inputs are chosen by remapping
    for override in args.param:  # last: a user's NAME:=VALUE wins over the demo's own
        cmd += ['-p', override]
    return cmd


def start_node(args: argparse.Namespace, map_dir: str, env: dict, log_path: str) -> tuple:
    cmd = node_command(args, map_dir)
    log = open(log_path, 'w')
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log


def wait_for_node(probe: object, node: subprocess.Popen, topic: str, log_path: str,
                  timeout_s: float = 300.0) -> None:
    """Block until the node subscribes to the camera topic; fail with its log if it dies."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if node.poll() is not None:
            with open(log_path) as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f'vpr_node exited with {node.returncode} at start-up:\n{tail}')
        if probe.count_subscribers(topic) > 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f'vpr_node did not subscribe to {topic} within {timeout_s:.0f} s')


def wait_for_statuses(collector: 'Collector', frames: int, timeout_s: float = 30.0) -> None:
    """Wait until the node reported a status for every frame played (its last are in flight)."""
    end = time.monotonic() + timeout_s
    while sum(len(s) for s in collector.status) < frames and time.monotonic() < end:
        time.sleep(0.1)


def stop_node(node: subprocess.Popen, node_log, collector: 'Collector') -> int:
    """SIGINT the node (it saves its map), kill it after 60 s; close its log and the collector."""
    node.send_signal(signal.SIGINT)
    try:
        rc = node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        node.kill()
        rc = node.wait()
    node_log.close()
    collector.close()
    return rc


def collected(collector: 'Collector') -> tuple[np.ndarray, np.ndarray]:
    """Return the /vpr/matches and /vpr/status rows received as arrays (empty: no rows)."""
    rows = np.concatenate(collector.matches) if collector.matches else np.zeros((0, 5))
    status = np.concatenate(collector.status) if collector.status else np.zeros((0, 7))
    return rows, status


def default_bag() -> tuple[str, str]:
    """Return the simulated garden's looping traverse: (bag, ground-truth topic)."""
    from vpr_ros.sim.dataset import default_dataset
    from vpr_ros.sim.writers import GT_TOPIC
    paths = default_dataset()
    return paths.bags[paths.names.index('day_loop')], GT_TOPIC


def run_demo(args: argparse.Namespace) -> dict:
    """Run the pipeline once; return the summary (also written to OUT/demo_summary.json)."""
    import rclpy

    from vpr_ros.ros.bag_player import play
    from vpr_ros.sim.writers import read_bag_poses
    from vpr_ros.tools.loop_eval import evaluate_loops, GroundTruth, plot_report

    os.makedirs(args.out, exist_ok=True)
    bag, gt_topic = (args.bag, args.gt_topic or args.pose_topic) if args.bag else default_bag()
    env = ros_environment()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    map_dir = os.path.join(args.out, 'map')
    node, node_log = start_node(args, map_dir, env, os.path.join(args.out, 'vpr_node.log'))
    rclpy.init(args=[])
    collector = Collector()
    try:
        wait_for_node(collector.node, node, args.image_topic, node_log.name)
        print(f'vpr-demo: playing {bag} into vpr_node (domain {env["ROS_DOMAIN_ID"]})')
        played = play(bag, rate=0, topics=[args.image_topic, args.pose_topic],
                      pace_topic='/vpr/status', pace_msgtype='std_msgs/msg/Float64MultiArray',
                      paced_topic=args.image_topic, pace_timeout_s=30.0,
                      wait_subscriber_s=180.0, start_delay_s=1.0, limit=args.max_frames,
                      wait_topics=[args.pose_topic] if args.pose_type != 'none' else [])
        wait_for_statuses(collector, played['counts'].get(args.image_topic, 0))
    finally:
        rc = stop_node(node, node_log, collector)
        rclpy.shutdown()
    rows, status = collected(collector)
    gt = GroundTruth(*read_bag_poses(bag, gt_topic))
    query_ns = np.round(status[:, 0] * 1e9).astype(np.int64)
    evaluation, psi = evaluate_loops(gt, query_ns, rows, args.exclusion_s)
    keyframe_xy = gt.at(query_ns[status[:, 2] > 0])[:, :2] if len(status) else np.zeros((0, 2))
    png = os.path.join(args.out, 'demo_report.png')
    plot_report(png, gt, keyframe_xy[~np.isnan(keyframe_xy).any(1)], rows, psi, evaluation,
                title=f'vpr_ros demo: {os.path.basename(os.path.normpath(bag))}, '
                      f'{demo_compare.model_label(args.model)}')
    summary = {
        'bag': bag, 'frames_published': played['counts'].get(args.image_topic, 0),
        'frames_processed': int(len(status)), 'keyframes': int((status[:, 2] > 0).sum()),
        'dropped': int(status[-1, 6]) if len(status) else 0,
        'queries_with_loop_closures': evaluation.n_published,
        'node_exit_code': rc, 'map_saved': os.path.exists(os.path.join(map_dir, 'CURRENT')),
        'latency_core_ms_p50_p95': _p50_p95(status[:, 4]),
        'latency_node_ms_p50_p95': _p50_p95(status[:, 5]),
        **{k: v for k, v in evaluation.as_dict().items() if not k.startswith('pr_')},
        'report_png': png,
    }
    summary['node_params'] = list(args.param)
    with open(node_log.name, errors='replace') as f:  # the point the node ran at (issue 12)
        used = [ln.split('operating point: ', 1)[1].strip() for ln in f
                if 'operating point: ' in ln]
    summary['operating_point'] = used[0] if used else ''
    with open(os.path.join(args.out, 'demo_summary.json'), 'w') as f:
        json.dump({**summary, 'pr_precision': evaluation.pr_precision,
                   'pr_recall': evaluation.pr_recall, 'pr_threshold': evaluation.pr_threshold},
                  f, indent=2)
    return summary


def _p50_p95(values: np.ndarray) -> list:
    values = values[np.isfinite(values)] if len(values) else values
    return [round(float(np.percentile(values, q)), 2) for q in (50, 95)] if len(values) else []


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='vpr-demo', description=__doc__.splitlines()[0])
    parser.add_argument('--bag', default='', help='your bag (default: the simulated garden)')
    parser.add_argument('--image-topic', default='/camera/image_raw')
    parser.add_argument('--transport', choices=['raw', 'compressed'], default='raw')
    parser.add_argument('--pose-topic', default='/odom')
    parser.add_argument('--pose-type', choices=['Odometry', 'PoseStamped', 'none'],
                        default='Odometry')
    parser.add_argument('--gt-topic', default='',
                        help='ground-truth pose topic of your bag (default: the pose topic)')
    parser.add_argument('--model', default='',
                        help='model file or shipped model name (default: built-in)')
    parser.add_argument('--compare', default='gcl_garden',
                        help="model run beside --model on the same bag (default: the shipped "
                             "GCL model; with --model gcl_garden, the built-in); 'none': "
                             'only --model')
    parser.add_argument('--exclusion-s', type=float, default=30.0)
    parser.add_argument('--max-frames', type=int, default=0, help='stop after N images')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='vpr_node parameter override (repeatable), e.g. '
                             'score_threshold:=0.9 or geometric_verification:=true')
    parser.add_argument('--out', default='demo_out')
    parser.add_argument('--slam', default='auto',
                        help="SLAM section (slam_demo.py): the simulated route played into the "
                             "node and the pose-graph back-ends ('revisits'; 'laps', 'excursion', "
                             "'loop'); 'none': skip; auto: 'revisits' unless --bag is given")
    parser.add_argument('--false-loops', type=int, default=5,
                        help='false loop closures injected at random into one back-end')
    parser.add_argument('--false-loops-seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    bad = [p for p in args.param if ':=' not in p]
    if bad:
        print(f'vpr-demo: --param takes NAME:=VALUE, got {bad[0]!r}', file=sys.stderr)
        sys.exit(2)
    summary = run_demo(args)
    other = demo_compare.second_model(args.model, args.compare)
    if other is not None:
        label = demo_compare.model_label(other)
        second = run_demo(argparse.Namespace(**{
            **vars(args), 'model': other,
            'out': os.path.join(args.out, demo_compare.folder_name(label))}))
        table = demo_compare.write_side_by_side(
            args.out, [(demo_compare.model_label(args.model), args.model, summary),
                       (label, other, second)])
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = f'{value:.3f}' if isinstance(value, float) else value
        print(f'{key:<{width}}  {shown}')
    if summary.get('suggested_threshold') is not None:
        print(f"score_threshold keeping precision >= {summary['target_precision']:.2f} on this "
              f"run: {summary['suggested_threshold']:.3f} (recall "
              f"{summary['recall_at_suggested']:.2f}); -p score_threshold:=... to use it")
    if other is not None:
        print(f'\nside by side on the same bag (each model at its own calibrated point; '
              f'{os.path.join(args.out, "demo_side_by_side.png")}):\n{table}')
    _slam_section(args)


def _slam_section(args: argparse.Namespace) -> None:
    """Run the SLAM section (slam_demo.py) and add it to demo_summary.json under `slam`."""
    from vpr_ros.tools import slam_demo
    route = slam_demo.slam_route(args)
    if route is None:
        return
    slam = slam_demo.run_slam(argparse.Namespace(**{**vars(args), 'slam': route}))
    path = os.path.join(args.out, 'demo_summary.json')
    with open(path) as f:
        summary = json.load(f)
    summary['slam'] = slam
    with open(path, 'w') as f:
        json.dump(summary, f, indent=2, default=float)
    print('\n' + slam_demo.report_line(slam))


if __name__ == '__main__':
    main()
