"""
vpr_node over DDS: end-to-end latency against the core's own time, drops, and memory growth.

Latency: 640x480 rgb8 frames published at 10 and 30 Hz to a node in another process; latency is
publish → `/vpr/matches` received (score_threshold -1 and no exclusion window, so every frame
after the first yields a match), next to the core's `LoopDetector.process` time for the same
frame (from the node's per-frame `/vpr/status`). The difference is what DDS, conversion,
queueing and the node add. Memory: RSS of the node process before and after `--frames` small
frames, against the map's own size. Figures are printed and written to
bench/results/bench_node.json, not asserted.

`--max-batch 1 8`: instead, the node in its shipped configuration (verification on, calibrated
threshold; no pose topic, map in memory) is run once per max_batch value on the same 640x480
stream at `--rates` (30 Hz by default for this mode), and frames dropped and the latency
publish → `/vpr/status` (every frame has its row) are printed side by side
(bench/results/bench_node_batch.json). `--device cuda` runs the same on a GPU.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# DDS on loopback, a random domain, the 16 MB SHM profile: set before rclpy is imported.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 101))
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      os.path.join(REPO, 'config', 'fastdds_shm16mb.xml'))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
import yaml  # noqa: E402

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def start_node(tmp: str, name: str, params: dict) -> subprocess.Popen:
    path = os.path.join(tmp, f'{name}.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump({'/**': {'ros__parameters': params}}, f)
    log = open(os.path.join(tmp, f'{name}.log'), 'w')
    env = os.environ.copy()
    env['PYTHONUNBUFFERED'] = '1'
    proc = subprocess.Popen([sys.executable, '-m', 'vpr_ros.ros.node', '--ros-args',
                             '--params-file', path, '-r', f'__node:={name}'],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    end = time.monotonic() + 180
    while time.monotonic() < end:
        with open(log.name) as f:
            if 'vpr_node ready' in f.read():
                return proc
        if proc.poll() is not None:
            raise RuntimeError(open(log.name).read())
        time.sleep(0.2)
    raise RuntimeError('node did not start')


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def frames(n: int, size_hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Real-photo crops (scikit-image photos) resized to size_hw: the CNN sees real statistics."""
    import cv2
    sys.path.insert(0, os.path.join(REPO, 'test'))
    from image_sequences import make_sequence
    seq = make_sequence(seed=seed)
    h, w = size_hw
    return [cv2.resize(seq.frames[i % len(seq)], (w, h)) for i in range(n)]


class Client:
    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray
        rclpy.init()
        self.node = rclpy.create_node('bench_node_client')
        self.lock = threading.Lock()
        self.match_t: dict[float, float] = {}
        self.status: dict[float, list] = {}
        self.status_t: dict[float, float] = {}
        self.diag: dict[str, str] = {}
        self.status_event = threading.Event()
        self.pub = self.node.create_publisher(Image, '/camera/image_raw', RELIABLE)
        self.node.create_subscription(Float64MultiArray, '/vpr/matches', self._on_match,
                                      RELIABLE)
        self.node.create_subscription(Float64MultiArray, '/vpr/status', self._on_status,
                                      RELIABLE)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, RELIABLE)
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        threading.Thread(target=self.ex.spin, daemon=True).start()

    def _on_match(self, msg) -> None:
        t = time.perf_counter()
        with self.lock:
            self.match_t[round(msg.data[0], 6)] = t

    def _on_status(self, msg) -> None:
        t = time.perf_counter()
        with self.lock:
            self.status[round(msg.data[0], 6)] = list(msg.data)
            self.status_t[round(msg.data[0], 6)] = t
        self.status_event.set()

    def _on_diag(self, msg) -> None:
        with self.lock:
            self.diag = {kv.key: kv.value for s in msg.status for kv in s.values}

    def wait_connected(self) -> None:
        while (self.pub.get_subscription_count() == 0
               or self.node.count_publishers('/vpr/status') == 0):
            time.sleep(0.1)
        time.sleep(1.0)

    def image(self, img: np.ndarray, stamp_ns: int):
        from sensor_msgs.msg import Image
        msg = Image(height=img.shape[0], width=img.shape[1], encoding='rgb8',
                    step=img.shape[1] * 3)
        msg.data = img.tobytes()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        return msg

    def reset(self) -> None:
        with self.lock:
            self.match_t.clear()
            self.status.clear()
            self.status_t.clear()

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


DIAG_DELTAS = ('frames_received', 'frames_dropped', 'batches', 'batched_frames')


def run_latency(client: Client, imgs: list, rate_hz: float, duration_s: float,
                stamp0_ns: int) -> dict:
    """
    Publish at rate_hz; latency per frame: publish → /vpr/matches and publish → /vpr/status.

    The core time of the same frame comes from its status row. Counters are the node's
    diagnostics, as differences over the run (received by the node, dropped by its queue).
    """
    client.reset()
    with client.lock:
        diag0 = {k: int(client.diag.get(k, 0)) for k in DIAG_DELTAS}
    n = int(rate_hz * duration_s)
    sent: dict[float, float] = {}
    period = 1.0 / rate_hz
    msgs = [client.image(imgs[k % len(imgs)], stamp0_ns + k * int(period * 1e9))
            for k in range(n)]  # built ahead, so publishing keeps the pace
    t0 = time.perf_counter()
    for k, msg in enumerate(msgs):
        target = t0 + k * period
        while time.perf_counter() < target:
            time.sleep(min(0.002, max(0.0, target - time.perf_counter())))
        key = round((stamp0_ns + k * int(period * 1e9)) / 1e9, 6)
        sent[key] = time.perf_counter()
        client.pub.publish(msg)
    end = time.monotonic() + 30.0  # the newest frame is never dropped by the node's queue
    while time.monotonic() < end and key not in client.status:
        time.sleep(0.05)
    time.sleep(1.5)  # three diagnostics periods: the counters of the last frames
    with client.lock:
        matched = {k: client.match_t[k] - sent[k] for k in sent if k in client.match_t}
        status = {k: client.status[k] for k in sent if k in client.status}
        status_lat = np.array([client.status_t[k] - sent[k] for k in status]) * 1e3
        diag = dict(client.diag)
    keys = [k for k in matched if k in status]
    e2e = np.array([matched[k] for k in keys]) * 1e3
    core = np.array([status[k][4] for k in keys])
    core_all = np.array([status[k][4] for k in status])
    over = e2e - core
    out = {'rate_hz': rate_hz, 'published': n, 'processed': len(status), 'matched': len(matched)}
    out.update({k.replace('frames_', ''): int(diag.get(k, 0)) - diag0[k] for k in DIAG_DELTAS})
    out.update({
        'e2e_p50_ms': pct(e2e, 50), 'e2e_p95_ms': pct(e2e, 95),
        'core_p50_ms': pct(core, 50), 'core_p95_ms': pct(core, 95),
        'overhead_p50_ms': pct(over, 50), 'overhead_p95_ms': pct(over, 95),
        'ratio_p50': pct(e2e, 50) / pct(core, 50) if len(core) else float('nan'),
        'status_p50_ms': pct(status_lat, 50), 'status_p95_ms': pct(status_lat, 95),
        'core_all_p50_ms': pct(core_all, 50),
        'callback_p95_ms': float(diag.get('callback_p95_ms', 'nan')),
    })
    return out


# The memory run's node: defaults but for these (no pose topic, map in memory, per-frame status).
MEMORY_PARAMS = ('pose_type', 'map_dir', 'publish_status', 'diagnostics_period_s',
                 'markers_period_s', 'device')


def run_memory(client: Client, proc, n_frames: int, stamp0_ns: int) -> dict:
    """Stream n_frames small frames, each after the previous one was processed; RSS growth."""
    imgs = frames(64, (120, 160), seed=1)
    rng = np.random.default_rng(0)
    warm = min(200, n_frames // 10)
    rss0 = None
    core_ms: list[float] = []
    node_ms: list[float] = []
    t0 = time.perf_counter()
    for k in range(n_frames):
        if k == warm:
            time.sleep(1.5)
            rss0 = rss_mb(proc.pid)
            with client.lock:
                map0 = int(client.diag.get('map_size', 0))
        img = imgs[k % len(imgs)]
        img = np.roll(img, int(rng.integers(0, 160)), axis=1)  # new views: the map grows
        stamp = stamp0_ns + k * 100_000_000
        client.status_event.clear()
        client.pub.publish(client.image(np.ascontiguousarray(img), stamp))
        key = round(stamp / 1e9, 6)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with client.lock:
                if key in client.status:
                    row = client.status.pop(key)
                    core_ms.append(row[4])
                    node_ms.append(row[5])
                    break
            client.status_event.wait(0.05)
            client.status_event.clear()
        if k % 1000 == 999:
            print(f'  memory run: {k + 1}/{n_frames} frames, RSS {rss_mb(proc.pid):.0f} MB',
                  flush=True)
    elapsed = time.perf_counter() - t0
    time.sleep(1.5)
    rss1 = rss_mb(proc.pid)
    with client.lock:
        diag = dict(client.diag)
    map1 = int(diag.get('map_size', 0))
    dim = 1280
    per_kf = dim * 4 + 8 * 7 + 64  # descriptor + pose + record overhead (estimate)
    return {'frames': n_frames, 'processed': int(diag.get('frames_processed', 0)),
            'rss_after_warmup_mb': rss0, 'rss_end_mb': rss1, 'rss_growth_mb': rss1 - rss0,
            'keyframes_added': map1 - map0,
            'rss_growth_per_keyframe_bytes': round((rss1 - rss0) * 2**20 / max(1, map1 - map0)),
            'map_growth_estimate_mb': (map1 - map0) * per_kf / 2**20,
            'frames_per_s': n_frames / elapsed, 'core_p50_ms': pct(core_ms, 50),
            'node_p50_ms': pct(node_ms, 50)}


# The batch comparison's node: shipped defaults but for these (no pose topic, map in memory).
BATCH_PARAMS = {'pose_type': 'none', 'map_dir': '', 'publish_status': True,
                'diagnostics_period_s': 0.5, 'markers_period_s': 0.0}


def set_param(client: Client, node_name: str, name: str, value) -> None:
    """Set one node parameter live (its set_parameters service); raise when refused."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    cli = client.node.create_client(SetParameters, f'/{node_name}/set_parameters')
    try:
        if not cli.wait_for_service(timeout_sec=60.0):
            raise RuntimeError(f'/{node_name}/set_parameters not available')
        fut = cli.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        end = time.monotonic() + 60.0
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.01)
        res = fut.result().results[0]
        if not res.successful:
            raise RuntimeError(f'{name}={value!r} refused: {res.reason}')
    finally:
        client.node.destroy_client(cli)


def compare_batches(args, tmp: str) -> None:
    """
    One node in the shipped config; max_batch values set live in turn, `--rounds` times.

    Interleaved rounds on one node, because on a shared machine the load drifts more between
    two node runs than the difference measured. The node starts at max_batch 1, so its image
    subscription keeps the shipped depth (5).
    """
    imgs = frames(40, (480, 640))
    rates = args.rates if args.rates_given else [30.0]
    results = {'device': args.device, 'cpus': os.cpu_count(), 'frame_hw': [480, 640],
               'config': 'shipped defaults (verification on, calibrated threshold), '
                         'pose_type none, map in memory', 'runs': [],
               'loadavg_before': list(os.getloadavg())}
    proc = start_node(tmp, 'vpr_node_batch', {**BATCH_PARAMS, 'device': args.device})
    client = Client()
    try:
        client.wait_connected()
        run_latency(client, imgs, 5.0, 3.0, 10**12)  # warm-up, not measured
        stamp0 = 2 * 10**12
        for rnd in range(args.rounds):
            for mb in args.max_batch:
                set_param(client, 'vpr_node_batch', 'max_batch', mb)
                for rate in rates:
                    r = run_latency(client, imgs, rate, args.duration, stamp0)
                    stamp0 += 10**12
                    r.update(max_batch=mb, round=rnd)
                    results['runs'].append(r)
                    print_batch_row(r)
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)
    results['loadavg_after'] = list(os.getloadavg())
    print_batch_summary(args, results)
    out = args.out if args.out_given else os.path.join(HERE, 'results', 'bench_node_batch.json')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'written {out}')


BATCH_HEADER = ('max_batch | rate Hz | published | received | processed | dropped | batches '
                '(frames) | status latency p50/p95 ms | core p50 ms')


def print_batch_row(r: dict) -> None:
    print(f"{r['max_batch']:9d} | {r['rate_hz']:7.0f} | {r['published']:9d} | "
          f"{r['received']:8d} | {r['processed']:9d} | {r['dropped']:7d} | "
          f"{r['batches']:7d} ({r['batched_frames']}) | {r['status_p50_ms']:7.1f} / "
          f"{r['status_p95_ms']:7.1f} | {r['core_all_p50_ms']:6.1f}", flush=True)


def print_batch_summary(args, results: dict) -> None:
    """Each run, then per max_batch and rate: drops summed, medians of the runs' p50/p95."""
    load = results['loadavg_before'][0], results['loadavg_after'][0]
    print(f'\nvpr_node over DDS, shipped config, 640x480 rgb8, {args.device}, '
          f'{os.cpu_count()} cores, {args.duration:g} s per run, {args.rounds} interleaved '
          f'rounds, loadavg {load[0]:.1f} -> {load[1]:.1f}')
    print(BATCH_HEADER)
    for r in results['runs']:
        print_batch_row(r)
    print('max_batch | rate Hz | dropped / published | median status p50 ms | median p95 ms | '
          'median core p50 ms')
    summary = []
    for mb in args.max_batch:
        for rate in sorted({r['rate_hz'] for r in results['runs']}):
            rs = [r for r in results['runs'] if r['max_batch'] == mb and r['rate_hz'] == rate]
            row = {'max_batch': mb, 'rate_hz': rate,
                   'dropped': sum(r['dropped'] for r in rs),
                   'published': sum(r['published'] for r in rs),
                   'status_p50_ms': float(np.median([r['status_p50_ms'] for r in rs])),
                   'status_p95_ms': float(np.median([r['status_p95_ms'] for r in rs])),
                   'core_p50_ms': float(np.median([r['core_all_p50_ms'] for r in rs]))}
            summary.append(row)
            print(f"{mb:9d} | {rate:7.0f} | {row['dropped']:7d} / {row['published']:<9d} | "
                  f"{row['status_p50_ms']:20.1f} | {row['status_p95_ms']:13.1f} | "
                  f"{row['core_p50_ms']:.1f}")
    results['summary'] = summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('--rates', type=float, nargs='+', default=None,
                    help='Hz (default 10 30; with --max-batch 30)')
    ap.add_argument('--duration', type=float, default=20.0, help='seconds per rate')
    ap.add_argument('--frames', type=int, default=10000, help='frames of the memory run '
                    '(0: skip)')
    ap.add_argument('--max-batch', type=int, nargs='+', default=None,
                    help='compare these max_batch values in the shipped config instead')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds (--max-batch)')
    ap.add_argument('--device', default='cpu', help='cpu or cuda (node parameter device)')
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    args.rates_given, args.out_given = args.rates is not None, args.out is not None
    args.rates = args.rates or [10.0, 30.0]
    args.out = args.out or os.path.join(HERE, 'results', 'bench_node.json')
    tmp = tempfile.mkdtemp(prefix='bench_node_')
    if args.max_batch:
        compare_batches(args, tmp)
        return
    # Verification off: every frame must publish a match, and what is measured is the node's
    # overhead over the core, whatever the core does.
    params = {'pose_type': 'none', 'map_dir': '', 'score_threshold': -1.0,
              'geometric_verification': False, 'exclusion_window_s': 0.0,
              'publish_status': True, 'diagnostics_period_s': 0.5, 'markers_period_s': 0.0,
              'device': args.device}
    proc = start_node(tmp, 'vpr_node', params)
    client = Client()
    results = {'device': args.device, 'cpus': os.cpu_count(), 'latency': [], 'memory': None}
    try:
        client.wait_connected()
        imgs = frames(40, (480, 640))
        # warm-up (first inferences are slow), not measured
        run_latency(client, imgs, 5.0, 3.0, 10**12)
        stamp0 = 2 * 10**12
        for rate in args.rates:
            r = run_latency(client, imgs, rate, args.duration, stamp0)
            stamp0 += 10**12
            results['latency'].append(r)
        if args.frames > 0:
            # Memory per keyframe in the node's default detection config (verification on:
            # each keyframe keeps its local features), not the latency run's.
            proc.terminate()
            proc.wait(60)
            proc = start_node(tmp, 'vpr_node_mem', {k: params[k] for k in MEMORY_PARAMS})
            client.wait_connected()
            results['memory'] = run_memory(client, proc, args.frames, stamp0)
            results['memory']['config'] = ('node defaults (geometric verification on), '
                                           'no map_dir')
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)
    print(f'\nvpr_node over DDS (640x480 rgb8, default model, CPU, {os.cpu_count()} cores)')
    print('rate Hz | published | processed | dropped | e2e p50/p95 ms | core p50/p95 ms | '
          'overhead p50/p95 ms | e2e/core p50 | callback p95 ms')
    for r in results['latency']:
        print(f"{r['rate_hz']:7.0f} | {r['published']:9d} | {r['processed']:9d} | "
              f"{r['dropped']:7d} | {r['e2e_p50_ms']:6.1f} / {r['e2e_p95_ms']:6.1f} | "
              f"{r['core_p50_ms']:6.1f} / {r['core_p95_ms']:6.1f} | "
              f"{r['overhead_p50_ms']:6.2f} / {r['overhead_p95_ms']:6.2f} | "
              f"{r['ratio_p50']:5.2f} | {r['callback_p95_ms']:.3f}")
    m = results['memory']
    if m:
        print(f"memory: {m['frames']} frames ({m['frames_per_s']:.0f}/s), RSS "
              f"{m['rss_after_warmup_mb']:.0f} → {m['rss_end_mb']:.0f} MB "
              f"(+{m['rss_growth_mb']:.1f} MB), core p50 {m['core_p50_ms']:.1f} ms, node p50 "
              f"{m['node_p50_ms']:.1f} ms; map +{m['keyframes_added']} keyframes "
              f"≈ {m['map_growth_estimate_mb']:.1f} MB (descriptors only); RSS per keyframe "
              f"{m['rss_growth_per_keyframe_bytes']} B ({m['config']})")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'written {args.out}')


if __name__ == '__main__':
    main()
