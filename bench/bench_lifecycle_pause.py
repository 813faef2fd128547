"""
What an idle vpr_lifecycle_node costs while the camera goes on: paused, deactivated, idle.

    python bench/bench_lifecycle_pause.py                 # 300 frames 640x480 rgb8 at 30 Hz
    python bench/bench_lifecycle_pause.py --frames 600 --rate 15

The managed node may stop work in two ways: keep its subscription and drop each frame in the
callback (what `~/pause` does), or destroy its subscriptions on deactivate (what it does). The
node (another process, driven over DDS through its lifecycle services) is measured in three
states while this process publishes the same camera stream, and once with nothing published:
CPU seconds the node process used (utime + stime from /proc) over the stream. Figures are
printed and written to bench/results/bench_lifecycle_pause.json, not asserted.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from vpr_ros.tools.demo import ros_environment  # noqa: E402

# DDS on loopback, a random domain, the 16 MB SHM profile: set before rclpy is imported.
os.environ.update(ros_environment())

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import yaml  # noqa: E402

NAME = 'vpr_bench_lifecycle'


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process `pid` used so far."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def start(tmp: str) -> subprocess.Popen:
    path = os.path.join(tmp, 'params.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump({'/**': {'ros__parameters': {'pose_type': 'none', 'map_dir': '',
                                                    'max_image_pixels': 640 * 480}}}, f)
    log = open(os.path.join(tmp, 'node.log'), 'w')
    return subprocess.Popen([sys.executable, '-m', 'vpr_ros.ros.lifecycle_node', '--ros-args',
                             '--params-file', path, '-r', f'__node:={NAME}'],
                            env=os.environ.copy(), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


def call(node, srv_type, name: str, request, timeout: float = 300.0):
    cli = node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=timeout), f'no service {name}'
    fut = cli.call_async(request)
    rclpy.spin_until_future_complete(node, fut, timeout_sec=timeout)
    assert fut.done(), f'{name} did not answer'
    return fut.result()


def transition(node, label: str) -> None:
    from lifecycle_msgs.srv import ChangeState

    req = ChangeState.Request()
    req.transition.label = label
    assert call(node, ChangeState, f'/{NAME}/change_state', req).success, label


def wait_subscribers(node, pub, n: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while (pub.get_subscription_count() > 0) != (n > 0):
        assert time.monotonic() < end, f'subscribers never {n}'
        rclpy.spin_once(node, timeout_sec=0.1)


def stream(node, pub, proc, frames: int, rate: float, publish: bool) -> float:
    """Node CPU seconds over `frames` frame periods at `rate` Hz (frames sent when `publish`)."""
    from sensor_msgs.msg import Image

    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    msg = Image(height=480, width=640, encoding='rgb8', step=640 * 3)
    msg.data = img.tobytes()
    c0 = cpu_s(proc.pid)
    t = time.monotonic()
    for k in range(frames):
        if publish:
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(10**18 + k * 10**8, 10**9)
            pub.publish(msg)
        t += 1.0 / rate
        time.sleep(max(0.0, t - time.monotonic()))
    time.sleep(1.0)  # what was delivered last is handled
    return cpu_s(proc.pid) - c0  # the settle second counts in every state alike


def main(argv: list | None = None) -> int:
    from sensor_msgs.msg import Image
    from std_srvs.srv import SetBool

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('--frames', type=int, default=300)
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--out', default=os.path.join(HERE, 'results',
                                                  'bench_lifecycle_pause.json'))
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix='bench_lifecycle_')
    proc = start(tmp)
    rclpy.init()
    node = rclpy.create_node('bench_lifecycle_client')
    pub = node.create_publisher(Image, '/camera/image_raw', 10)
    row = {'frames': args.frames, 'rate_hz': args.rate, 'image': '640x480 rgb8',
           'loadavg_before': [round(v, 2) for v in os.getloadavg()]}
    try:
        transition(node, 'configure')
        transition(node, 'activate')
        pause = SetBool.Request(data=True)
        assert call(node, SetBool, f'/{NAME}/pause', pause).success
        wait_subscribers(node, pub, 1)
        row['paused_cpu_s'] = stream(node, pub, proc, args.frames, args.rate, True)
        transition(node, 'deactivate')
        wait_subscribers(node, pub, 0)
        row['inactive_cpu_s'] = stream(node, pub, proc, args.frames, args.rate, True)
        row['idle_cpu_s (baseline)'] = stream(node, pub, proc, args.frames, args.rate, False)
        base = row['idle_cpu_s (baseline)']
        for state in ('paused', 'inactive'):
            row[f'{state}_over_idle_cpu_s'] = row[f'{state}_cpu_s'] - base
        row['loadavg_after'] = [round(v, 2) for v in os.getloadavg()]
    finally:
        proc.terminate()
        proc.wait(60)
        node.destroy_node()
        rclpy.shutdown()
    seconds = args.frames / args.rate + 1.0
    for key in ('paused_cpu_s', 'inactive_cpu_s', 'idle_cpu_s (baseline)'):
        print(f'{key:24s} {row[key]:7.2f} s CPU over {seconds:.0f} s '
              f'({100 * row[key] / seconds:5.1f} % of a core)')
    print(f'beyond idle: paused {row["paused_over_idle_cpu_s"]:.2f} s, inactive '
          f'{row["inactive_over_idle_cpu_s"]:.2f} s for {args.frames} frames')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(row, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
