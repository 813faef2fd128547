"""
Helpers for tests of `vpr_node` over real DDS: the node in a subprocess, a client in pytest.

`NodeProcess` starts `python -m vpr_ros.ros.node` with a params file in its own namespace
(`/<name>` unless told otherwise; every topic of the node is relative, so two nodes of one module
never hear each other) and under its own name (services `/<ns>/<name>/save_map`...).
`Client` is an rclpy node in the test process, with its own
context and a background executor, that publishes images and poses and records what the node
publishes. `Client.send` publishes a frame and waits for the node's per-frame `/vpr/status`
row (publish_status is on in tests), so a test paces itself on the node and stays
deterministic on a loaded machine. The environment (loopback DDS, random domain, Fast DDS
profile) comes from conftest.py, which sets os.environ before this is imported.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
import yaml

from vpr_ros.ros.topics import input_remaps

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
START_TIMEOUT_S = 120.0
FRAME_TIMEOUT_S = 60.0


def node_env() -> dict:
    """Copy the parent's environment whole (the ROS wheels need its LD_LIBRARY_PATH)."""
    env = os.environ.copy()
    env['PYTHONUNBUFFERED'] = '1'
    env.setdefault('RCUTILS_COLORIZED_OUTPUT', '0')
    return env


def node_args(params: dict, params_file: str, name: str, namespace: str = '/') -> list[str]:
    """
    Command line of a node: params file, name, namespace and input remaps.

    `camera_topic` / `pose_topic` in `params` are no node parameters: they name the topics the
    test publishes on and become remap rules (topics.input_remaps), as the launch file does.
    `/diagnostics` (the node's one absolute topic) is moved into the namespace as well.
    """
    params = dict(params)
    rules = input_remaps(params.pop('camera_topic', ''), params.get('image_transport', 'raw'),
                         params.pop('pose_topic', ''), params.get('pose_type', 'Odometry'))
    with open(params_file, 'w') as f:
        yaml.safe_dump({'/**': {'ros__parameters': params}}, f)
    args = [sys.executable, '-m', 'vpr_ros.ros.node', '--ros-args', '--params-file',
            params_file, '-r', f'__node:={name}', '-r', f'__ns:={namespace}']
    if namespace != '/':
        rules.append(f'/diagnostics:={namespace}/diagnostics')
    for rule in rules:
        args += ['-r', rule]
    return args


class NodeProcess:
    """`vpr_node` in a subprocess named `name`, in `namespace` (default `/<name>`)."""

    def __init__(self, tmp_dir: str, name: str, params: dict, namespace: str | None = None,
                 extra_args: tuple[str, ...] = (), env: dict | None = None,
                 file_size_limit: int | None = None) -> None:
        self.name = name
        self.namespace = namespace if namespace is not None else '/' + name
        self.params = {'publish_status': True, 'diagnostics_period_s': 0.5,
                       'markers_period_s': 0.5, **params}
        os.makedirs(tmp_dir, exist_ok=True)
        self.params_file = os.path.join(tmp_dir, f'{name}.yaml')
        self.log_path = os.path.join(tmp_dir, f'{name}.log')
        args = node_args(self.params, self.params_file, name, self.namespace) + list(extra_args)
        self._log_file = open(self.log_path, 'w')
        limit = None
        if file_size_limit is not None:  # RLIMIT_FSIZE: writes past it fail (EFBIG), a full disk
            def limit() -> None:
                import resource
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        self.proc = subprocess.Popen(args, env={**node_env(), **(env or {})},
                                     stdout=self._log_file, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=limit)

    def topic(self, name: str) -> str:
        """Resolve the node's topic `name` ('vpr/matches', 'camera/image_raw') in its namespace."""
        return f'{self.namespace.rstrip("/")}/{name.lstrip("/")}'

    def service(self, name: str) -> str:
        return f'{self.namespace.rstrip("/")}/{self.name}/{name}'

    def log(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Block until the node logged 'vpr_node ready' (model loaded, map opened)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if 'vpr_node ready' in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f'{self.name} exited with {self.proc.returncode}:\n'
                                     f'{self.log()}')
            time.sleep(0.1)
        raise AssertionError(f'{self.name} not ready after {timeout} s:\n{self.log()}')

    def wait_log(self, text: str, timeout: float = 60.0) -> str:
        """Block until the node's output contains `text`; return the output."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            log = self.log()
            if text in log:
                return log
            if self.proc.poll() is not None:
                raise AssertionError(f'{self.name} exited ({self.proc.returncode}) before '
                                     f'{text!r}:\n{log}')
            time.sleep(0.01)
        raise AssertionError(f'{text!r} not in the output of {self.name}:\n{self.log()}')

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait; return the exit code (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()
        return self.proc.returncode


def run_to_exit(params: dict, tmp_dir: str, name: str, timeout: float = 120.0
                ) -> subprocess.CompletedProcess:
    """Run a node that should fail at start-up; return its result (stderr included)."""
    args = node_args(params, os.path.join(tmp_dir, f'{name}.yaml'), name)
    return subprocess.run(args, env=node_env(), capture_output=True, text=True, timeout=timeout)


def rows(msg) -> np.ndarray:
    """(rows, columns) array of a /vpr/* Float64MultiArray, shaped by its own layout."""
    d = msg.layout.dim
    return np.asarray(msg.data, dtype=np.float64).reshape(d[0].size, d[1].size)


def diag_values(msg) -> dict[str, str]:
    return {kv.key: kv.value for st in msg.status for kv in st.values}


def revisit_hits(matches: list, seq) -> tuple[list[int], dict[int, int | None]]:
    """Revisit frames of `seq` whose best match (first row of their vpr/matches) is correct."""
    idx = {round(int(t) / 1e9, 6): i for i, t in enumerate(seq.stamps_ns)}
    best = {}
    for m in matches:
        r = rows(m)
        key = round(float(r[0, 0]), 6)
        if key in idx:
            best[idx[key]] = idx.get(round(float(r[0, 1]), 6))
    hits = [i for i in sorted(seq.revisits) if best.get(i) in seq.revisits[i]]
    return hits, best


class GraphClient:
    """
    An rclpy node in the test process, in its own context, spun by a background thread.

    It records the per-frame status rows of one node (`status_topic`) and keeps one publisher a
    topic and type; `Client` (a NodeProcess) and launch_fixtures' `Feeder` (a node started by
    `ros2 launch`) add what their tests look at.
    """

    def __init__(self, name: str, status_topic: str) -> None:
        from std_msgs.msg import Float64MultiArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.status: dict[float, object] = {}
        self.status_topic = status_topic
        self._pubs: dict[str, object] = {}
        self.status_sub = self.node.create_subscription(Float64MultiArray, status_topic,
                                                        self._on_status, RELIABLE)

    def start(self) -> None:
        """Spin in the background; call once every subscription is made."""
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def _keep(self, into: list, convert=lambda m: m):
        def cb(msg) -> None:
            with self.lock:
                into.append(convert(msg))
        return cb

    def _on_status(self, msg) -> None:
        with self.lock:
            for r in rows(msg):
                self.status[round(float(r[0]), 6)] = r

    def close(self) -> None:
        # The spin thread must have left the executor before the node and context go: one
        # left spinning over a destroyed node was seen (CI, test_slam_backend) to loop hot on
        # the GIL and starve the test's own thread for good.
        self.executor.shutdown(timeout_sec=10.0)
        self._spin.join(timeout=30.0)
        assert not self._spin.is_alive(), 'the client executor did not stop spinning'
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def publisher(self, msg_type, topic: str, qos=RELIABLE):
        key = f'{topic}:{msg_type.__name__}'
        if key not in self._pubs:
            self._pubs[key] = self.node.create_publisher(msg_type, topic, qos)
        return self._pubs[key]

    def _wait(self, predicate, timeout: float, what: str, log=None):
        """Poll `predicate` under the lock until it is truthy; fail naming `what`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                got = predicate()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError(f'timed out waiting for {what}' + (f':\n{log()}' if log else ''))


class Client(GraphClient):
    """Publishes frames and poses to a NodeProcess and records its outputs."""

    def __init__(self, name: str, node: NodeProcess) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray
        from visualization_msgs.msg import MarkerArray

        super().__init__(name, node.topic('vpr/status'))
        self.target = node
        self.matches: list = []
        self.loops: list = []
        self.diags: list = []
        self.markers: list = []
        sub = self.node.create_subscription
        self.matches_sub = sub(Float64MultiArray, node.topic('vpr/matches'),
                               self._keep(self.matches), RELIABLE)
        sub(Float64MultiArray, node.topic('vpr/loop_closure'), self._keep(self.loops), RELIABLE)
        sub(DiagnosticArray, node.topic('/diagnostics'), self._keep(self.diags), RELIABLE)
        sub(MarkerArray, node.topic('vpr/markers'), self._keep(self.markers), 10)
        self.start()

    def wait_connected(self, topics: list[tuple[object, str]], timeout: float = 60.0) -> None:
        """
        Wait until the node subscribes to each input and our status and matches readers match.

        Without the second, the rows the node publishes before discovery completes are lost.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            subs_ok = all(self.publisher(t, n).get_subscription_count() > 0 for t, n in topics)
            ours_ok = (self.status_sub.get_publisher_count() > 0
                       and self.matches_sub.get_publisher_count() > 0)
            if subs_ok and ours_ok:
                time.sleep(0.5)  # graph seen; give the data path a moment too
                return
            time.sleep(0.1)
        raise AssertionError(f'node never connected to {topics}:\n{self.target.log()}')

    @staticmethod
    def image_msg(img: np.ndarray, stamp_ns: int, encoding: str = 'rgb8',
                  frame_id: str = 'camera'):
        from sensor_msgs.msg import Image

        msg = Image(height=img.shape[0], width=img.shape[1], encoding=encoding,
                    is_bigendian=0, step=int(img.strides[0]) if img.size else 0)
        msg.data = np.ascontiguousarray(img).tobytes()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
        msg.header.frame_id = frame_id
        return msg

    @staticmethod
    def jpeg_msg(img_rgb: np.ndarray, stamp_ns: int, ext: str = '.jpg'):
        from sensor_msgs.msg import CompressedImage

        ok, data = cv2.imencode(ext, cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
        assert ok
        msg = CompressedImage(format='jpeg' if ext == '.jpg' else 'png')
        msg.data = data.tobytes()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
        msg.header.frame_id = 'camera'
        return msg

    @staticmethod
    def pose_msg(pose_type: str, stamp_ns: int, vec, frame_id: str = 'odom'):
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Odometry

        msg = Odometry() if pose_type == 'Odometry' else PoseStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
        msg.header.frame_id = frame_id
        pose = msg.pose.pose if pose_type == 'Odometry' else msg.pose
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in vec[:3])
        o = pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in vec[3:7])
        return msg

    def wait_status(self, stamp_ns: int, timeout: float = FRAME_TIMEOUT_S):
        """Return the node's /vpr/status row for the frame at stamp_ns (fail after `timeout`)."""
        key = round(int(stamp_ns) / 1e9, 6)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if key in self.status:
                    return self.status[key]
            if self.target.proc.poll() is not None:
                raise AssertionError(f'node died:\n{self.target.log()}')
            time.sleep(0.005)
        raise AssertionError(f'no status for frame {key} after {timeout} s:\n'
                             f'{self.target.log()[-3000:]}')

    def wait_for(self, predicate, timeout: float = 30.0, what: str = 'condition'):
        return self._wait(predicate, timeout, what, lambda: self.target.log()[-3000:])

    def latest_diag(self, after: float = 0.0, timeout: float = 30.0) -> dict[str, str]:
        """Values of a /diagnostics message received after wall time `after` (time.time())."""
        def pred():
            for m in reversed(self.diags):
                t = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                if t >= after:
                    return diag_values(m)
            return None
        return self.wait_for(pred, timeout, 'a fresh /diagnostics message')

    def wait_diag(self, predicate, timeout: float = 30.0, what: str = 'diagnostics'
                  ) -> dict[str, str]:
        """
        Values of the first /diagnostics message, received from now on, that satisfies them.

        Counters reach their value a little after the frames were sent (delivery, the worker),
        so a test polls for the value it asserts instead of reading one message once.
        """
        start = len(self.diags)
        seen: list[dict[str, str]] = []

        def pred():
            for m in self.diags[start:]:
                values = diag_values(m)
                seen[:] = [values]
                if predicate(values):
                    return values
            return None
        try:
            return self.wait_for(pred, timeout, what)
        except AssertionError as err:
            raise AssertionError(f'{err}\nlast diagnostics: {seen}') from None

    def call(self, srv_type, name: str, request, timeout: float = 60.0):
        cli = self.node.create_client(srv_type, name)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name} not available:\n{self.target.log()}')
            fut = cli.call_async(request)
            end = time.monotonic() + timeout
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.01)
            assert fut.done(), f'service {name} did not answer'
            return fut.result()
        finally:
            self.node.destroy_client(cli)


def stream(client: Client, seq, indices, image_topic: str, pose_type: str = 'PoseStamped',
           pose_topic: str = '', transport: str = 'raw', wait: bool = True,
           stamp_offset_ns: int = 0) -> list:
    """Publish frames `indices` of an image sequence (pose first); return their status rows."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CompressedImage, Image

    img_pub = client.publisher(CompressedImage if transport == 'compressed' else Image,
                               image_topic)
    pose_pub = None
    if pose_type != 'none':
        pose_pub = client.publisher(Odometry if pose_type == 'Odometry' else PoseStamped,
                                    pose_topic)
    out = []
    for i in indices:
        stamp = int(seq.stamps_ns[i]) + stamp_offset_ns
        if pose_pub is not None:
            pose_pub.publish(client.pose_msg(pose_type, stamp, seq.poses[i]))
        if transport == 'compressed':
            img_pub.publish(client.jpeg_msg(seq.frames[i], stamp))
        else:
            img_pub.publish(client.image_msg(seq.frames[i], stamp))
        if wait:
            out.append(client.wait_status(stamp))
        else:
            time.sleep(0.2)
    return out
