"""
`make demo`'s SLAM section: vpr_node's loops close a drifting traverse in a pose graph.

The simulated multi-revisit traverse (vpr_ros/sim/slam_sets.py: two laps of a garden block, the
whole outer ring, back into the block; odometry integrated from noisy increments) is played into
vpr_node, started as demo.py starts it (shipped config, the model's calibrated operating point),
with its camera_info, so verified loops come with a relative pose. Three reference back-ends
(vpr-slam-backend, each its own process, at their defaults) listen at once:

* ``loops``: the node's `vpr/matches` and `vpr/relative_pose`;
* ``false_loops``: the same, plus N false loop closures injected at random (`--false-loops`,
  vpr_ros/tools/false_loops.py: a relay in this process forwards the node's messages);
* ``position_only``: the same loops as "same place" factors, their relative poses ignored
  (`use_relative_pose: false`): what the relative pose is worth.

Each back-end's final path is scored against `/ground_truth/pose` (ATE after SE(3) alignment
and RPE over 10 m, with evo: trajectory_error.py), beside the odometry at the same stamps; the
node's loops are scored as in the demo (ψ > 0.5). The result goes to demo_summary.json under
`slam`, demo_slam.png and one printed line.
"""
import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

BACKENDS = {'loops': {}, 'false_loops': {}, 'position_only': {'use_relative_pose': 'false'}}
SETTLE_TIMEOUT_S = 120.0


def backend_command(name: str, params: dict) -> list[str]:
    """vpr-slam-backend in namespace /slam_<name>, its inputs remapped to the node's topics."""
    cmd = [sys.executable, '-m', 'vpr_ros.tools.slam_backend', '--ros-args',
           '-r', f'__ns:=/slam_{name}', '-r', '__node:=vpr_slam_backend',
           '-r', 'odom:=/odom', '-p', 'qos:=reliable']
    if name != 'false_loops':  # that one reads the relay's topics in its own namespace
        cmd += ['-r', 'vpr/matches:=/vpr/matches', '-r', 'vpr/relative_pose:=/vpr/relative_pose']
    for key, value in params.items():
        cmd += ['-p', f'{key}:={value}']
    return cmd


class SlamCollector:
    """The demo's rclpy node: node outputs, each back-end's status and path, the relay."""

    def __init__(self, false_loops: list) -> None:
        from nav_msgs.msg import Path
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray

        from vpr_ros.ros.messages import reliable_qos
        from vpr_ros.tools.false_loops import FalseLoopRelay
        from vpr_ros.tools.slam_backend import STATUS_COLUMNS, table

        self.node = rclpy.create_node('vpr_demo_slam')
        self.lock = threading.Lock()
        self.matches: list[np.ndarray] = []
        self.poses: list[np.ndarray] = []
        self.status: list[np.ndarray] = []
        self.backend_status: dict[str, dict] = {}
        self.paths: dict[str, object] = {}
        self._columns = STATUS_COLUMNS.split(',')
        qos = reliable_qos(1000)
        sub = self.node.create_subscription
        sub(Float64MultiArray, '/vpr/matches', lambda m: self._keep(self.matches, m), qos)
        sub(Float64MultiArray, '/vpr/relative_pose', lambda m: self._keep(self.poses, m), qos)
        sub(Float64MultiArray, '/vpr/status', lambda m: self._keep(self.status, m), qos)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for name in BACKENDS:
            sub(Float64MultiArray, f'/slam_{name}/slam/status',
                lambda m, n=name: self._on_backend(n, table(m)), qos)
            sub(Path, f'/slam_{name}/slam/path', lambda m, n=name: self._on_path(n, m), latched)
        self.relay = FalseLoopRelay(self.node, false_loops, '/slam_false_loops')
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _keep(self, into: list, msg) -> None:
        from vpr_ros.tools.slam_backend import table
        cols = table(msg)
        with self.lock:
            into.append(np.stack(list(cols.values()), 1))

    def _on_backend(self, name: str, cols: dict) -> None:
        with self.lock:
            self.backend_status[name] = {k: float(v[0]) for k, v in cols.items()}

    def _on_path(self, name: str, msg) -> None:
        with self.lock:
            self.paths[name] = msg

    def settled(self, last_odom_s: float) -> list[str]:
        """Back-ends that have not yet taken every message (empty: all done)."""
        with self.lock:
            rows = int(sum(len(m) for m in self.matches))
            expected = {'loops': rows, 'position_only': rows,
                        'false_loops': rows + self.relay.sent}
            late = []
            for name, want in expected.items():
                s = self.backend_status.get(name)
                path = self.paths.get(name)
                done = (s is not None and s['odom_stamp'] >= last_odom_s - 1e-6
                        and s['matches_rows'] == want and s['pending'] == 0
                        and path is not None and np.isclose(path_sum(path), s['path_sum']))
                if not done:
                    late.append(name)
            return late

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def path_sum(path) -> float:
    """Sum of x + y over a path's poses: slam/status's `path_sum` of the path it follows."""
    return float(sum(p.pose.position.x + p.pose.position.y for p in path.poses))


def path_arrays(path) -> tuple[np.ndarray, np.ndarray]:
    """(stamps ns, poses (N, 7)) of a nav_msgs/Path."""
    stamps = np.array([p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in path.poses],
                      dtype=np.int64)
    poses = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z,
                       p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z,
                       p.pose.orientation.w] for p in path.poses]).reshape(-1, 7)
    return stamps, poses


def _stop(procs: list) -> list[int]:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
        log.close()
    return codes


def _false_loops(bag: str, gt_topic: str, image_topic: str, n: int, seed: int) -> list:
    """N false loops between image frames of the bag, far apart in ground truth."""
    from vpr_ros.sim.writers import read_bag_poses
    from vpr_ros.tools.false_loops import draw_false_loops
    from vpr_ros.tools.loop_eval import GroundTruth
    gt = GroundTruth(*read_bag_poses(bag, gt_topic))
    stamps = _image_stamps(bag, image_topic)
    xy = gt.at(stamps)[:, :2]
    return draw_false_loops(stamps, xy, n, seed) if n > 0 else []


def _image_stamps(bag: str, topic: str) -> np.ndarray:
    from pathlib import Path

    from rosbags.highlevel import AnyReader
    with AnyReader([Path(bag).absolute()]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return np.array([t for _, t, _ in reader.messages(connections=conns)], dtype=np.int64)


def run_slam(args: argparse.Namespace) -> dict:
    """Play the SLAM traverse into vpr_node and the back-ends; return the `slam` summary."""
    import rclpy

    from vpr_ros.ros.bag_player import play
    from vpr_ros.sim.slam_sets import slam_bag
    from vpr_ros.tools import demo, slam_report

    out = os.path.join(args.out, 'slam')
    os.makedirs(out, exist_ok=True)
    bag, odom_topic, gt_topic = slam_bag(args.slam)
    image_topic, info_topic = '/camera/image_raw', '/camera/camera_info'
    injected = _false_loops(bag, gt_topic, image_topic, args.false_loops, args.false_loops_seed)
    env = demo.ros_environment()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    node_args = argparse.Namespace(**{**vars(args), 'image_topic': image_topic,
                                      'transport': 'raw', 'pose_topic': odom_topic,
                                      'pose_type': 'Odometry'})
    node, node_log = demo.start_node(node_args, os.path.join(out, 'map'), env,
                                     os.path.join(out, 'vpr_node.log'))
    procs = [(node, node_log)]
    for name, params in BACKENDS.items():
        log = open(os.path.join(out, f'backend_{name}.log'), 'w')
        procs.append((subprocess.Popen(backend_command(name, params), env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    rclpy.init(args=[])
    collector = SlamCollector(injected)
    t0 = time.monotonic()
    try:
        demo.wait_for_node(collector.node, node, image_topic, node_log.name)
        _wait_subscribers(collector.node, odom_topic, 1 + len(BACKENDS), procs)
        print(f'vpr-demo slam: playing {bag} into vpr_node and {len(BACKENDS)} back-ends '
              f'({len(injected)} false loops injected into one)')
        played = play(bag, rate=0, topics=[image_topic, info_topic, odom_topic],
                      pace_topic='/vpr/status', pace_msgtype='std_msgs/msg/Float64MultiArray',
                      paced_topic=image_topic, pace_timeout_s=30.0, wait_subscriber_s=180.0,
                      start_delay_s=1.0, wait_topics=[odom_topic, info_topic])
        last_odom_s = _last_stamp_s(bag, odom_topic)
        late = _wait_settled(collector, last_odom_s)
    finally:
        codes = _stop(procs)
        with collector.lock:
            paths = dict(collector.paths)
            rows = np.concatenate(collector.matches) if collector.matches else np.zeros((0, 5))
            status = (np.concatenate(collector.status) if collector.status
                      else np.zeros((0, 7)))
            poses = np.concatenate(collector.poses) if collector.poses else np.zeros((0, 14))
            backend_status = dict(collector.backend_status)
        collector.close()
        rclpy.shutdown()
    # what the node sent, for trying other graph settings offline (columns: its contracts)
    np.savez_compressed(os.path.join(out, 'node_loops.npz'), matches=rows, relative_pose=poses,
                        status=status)
    summary = slam_report.evaluate(bag, gt_topic, odom_topic, paths, rows, status,
                                   args.exclusion_s, injected, out)
    summary.update({'route': args.slam, 'bag': bag, 'seconds': round(time.monotonic() - t0, 1),
                    'frames_published': played['counts'].get(image_topic, 0),
                    'exit_codes': {'vpr_node': codes[0],
                                   **{n: c for n, c in zip(BACKENDS, codes[1:])}},
                    'backend_status': backend_status, 'not_settled': late})
    if 'loops' in backend_status:
        summary['n_loop_factors'] = int(backend_status['loops']['loop_factors'])
    return summary


def slam_route(args: argparse.Namespace) -> str | None:
    """Return the simulated route of the SLAM section (`--slam auto`: 'revisits' unless --bag)."""
    from vpr_ros.sim.slam_sets import SLAM_ROUTE
    if args.slam == 'auto':
        return None if args.bag else SLAM_ROUTE
    return None if args.slam == 'none' else args.slam


def report_line(s: dict) -> str:
    """Return the ATE line `make demo` prints."""
    def m(v):
        return 'n/a' if v is None else f'{v:.2f} m'
    line = (f"SLAM ({s['route']}, {s['path_length_m']:.0f} m): ATE odometry "
            f"{m(s['ate_odometry_m'])} -> with the node's {s['n_loop_factors']} loop factors "
            f"{m(s['ate_with_loops_m'])}")
    if s.get('ratio_with_loops') is not None:
        line += f" (x{s['ratio_with_loops']:.2f})"
    line += (f"; with {s['n_false_loops']} false loops injected {m(s['ate_with_false_loops_m'])}"
             + (f" (x{s['ratio_with_false_loops']:.2f})" if 'ratio_with_false_loops' in s else '')
             + f"; loops as position only {m(s['ate_position_only_m'])}; RPE (10 m) "
             f"{m(s['rpe_odometry_m'])} -> {m(s['rpe_with_loops_m'])}; {s['png']}")
    return line


def _last_stamp_s(bag: str, topic: str) -> float:
    from vpr_ros.sim.writers import read_bag_poses
    stamps, _ = read_bag_poses(bag, topic)
    return float(stamps[-1]) / 1e9


def _wait_subscribers(probe, topic: str, n: int, procs: list, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while probe.count_subscribers(topic) < n:
        dead = [p.args for p, _ in procs if p.poll() is not None]
        if dead or time.monotonic() > end:
            raise RuntimeError(f'not every process subscribed to {topic}; exited: {dead}')
        time.sleep(0.2)


def _wait_settled(collector: SlamCollector, last_odom_s: float) -> list[str]:
    """Wait until every back-end took the whole traverse; return the ones that did not."""
    end = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < end:
        late = collector.settled(last_odom_s)
        if not late:
            return []
        time.sleep(0.2)
    print(f'vpr-demo slam: back-ends still busy after {SETTLE_TIMEOUT_S:.0f} s: {late}')
    return late
