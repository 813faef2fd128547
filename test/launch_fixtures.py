"""
`ros2 launch` in its own process group, and an rclpy feeder that paces on the node's status.

`LaunchProcess.interrupt()` is Ctrl-C in a terminal: SIGINT to the whole process group, so the
node gets it twice (from the "terminal" and forwarded by launch). `Feeder` publishes real
images and poses over DDS from this process and waits for the node's per-frame `vpr/status` row
(publish_status: true), so tests pace on the node, never on a fixed time.
"""
import os
import signal
import subprocess
import time

import numpy as np
from ros_fixtures import Client, GraphClient, RELIABLE, rows

READY = 'vpr_node ready'


class LaunchProcess:
    """`ros2 launch ARGS...` with its output in a file, in a new process group."""

    def __init__(self, env: dict, args: list[str], log_path: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, 'w')
        self.proc = subprocess.Popen(['ros2', 'launch', *args], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, text: str, count: int = 1, timeout: float = 180.0) -> str:
        """Block until `text` appears `count` times in the output (fail if launch exits)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            log = self.log()
            if log.count(text) >= count:
                return log
            if self.proc.poll() is not None:
                raise AssertionError(f'launch exited ({self.proc.returncode}) before '
                                     f'{text!r}:\n{self.log()}')
            time.sleep(0.1)
        raise AssertionError(f'no {text!r} x{count} after {timeout} s:\n{self.log()}')

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the process group (launch and its nodes)."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Kill whatever is left of the group (a failed test) and close the log."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


class Feeder(GraphClient):
    """Publishes frames to one node (namespace `ns`) and records its status rows and matches."""

    def __init__(self, name: str, ns: str = '', watch_matches: tuple[str, ...] = ()) -> None:
        from std_msgs.msg import Float64MultiArray

        super().__init__(name, f'{ns}/vpr/status')
        self.matches: dict[str, list[np.ndarray]] = {t: [] for t in watch_matches}
        for topic in watch_matches:
            self.node.create_subscription(Float64MultiArray, topic,
                                          self._keep(self.matches[topic], rows), RELIABLE)
        self.start()

    def wait_connected(self, image_topic: str, pose_topic: str, timeout: float = 60.0) -> None:
        """Wait until the node subscribes to both inputs and publishes its status."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image
        pubs = (self.publisher(Image, image_topic), self.publisher(PoseStamped, pose_topic))
        self.wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs)
                      and self.node.count_publishers(self.status_topic) > 0,
                      timeout, f'node subscribed to {image_topic}, {pose_topic}')

    def wait_for(self, predicate, timeout: float, what: str):
        return self._wait(predicate, timeout, what)

    def send(self, seq, indices, image_topic: str, pose_topic: str, offset_ns: int = 0,
             timeout: float = 60.0) -> list[np.ndarray]:
        """Publish frames (pose first) and wait for each one's status row; return the rows."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image
        img_pub = self.publisher(Image, image_topic)
        pose_pub = self.publisher(PoseStamped, pose_topic)
        out = []
        for i in indices:
            stamp = int(seq.stamps_ns[i]) + offset_ns
            pose_pub.publish(Client.pose_msg('PoseStamped', stamp, seq.poses[i]))
            img_pub.publish(Client.image_msg(np.ascontiguousarray(seq.frames[i]), stamp))
            key = round(stamp / 1e9, 6)
            (row,) = self.wait_for(lambda: (self.status[key],) if key in self.status else None,
                                   timeout, f'status of frame {i} on {self.status_topic}')
            out.append(row)
        return out
