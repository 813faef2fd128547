"""vpr-play publishes a bag's messages over real DDS to a subscriber in another process."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros
# Best effort as a camera subscriber, with room for the whole bag: the DDS thread files samples
# into this history whenever the test's spin loop is late (depth 5 lost 13 frames under load).
SENSOR_DEEP = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)


def write_image_bag(path: str, n: int, storage: StoragePlugin, with_header: bool = False
                    ) -> None:
    """Write images (pixel value i) on /camera/image_raw, with_header a /stamps topic beside."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    image_t = typestore.types['sensor_msgs/msg/Image']
    header_t = typestore.types['std_msgs/msg/Header']
    time_t = typestore.types['builtin_interfaces/msg/Time']
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conn = writer.add_connection('/camera/image_raw', image_t.__msgtype__, typestore=typestore)
        side = writer.add_connection('/stamps', header_t.__msgtype__,
                                     typestore=typestore) if with_header else None
        for i in range(n):
            stamp_ns = 1_000_000_000 + i * 50_000_000
            header = header_t(stamp=time_t(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                              frame_id='cam')
            if side is not None:
                writer.write(side, stamp_ns, bytes(typestore.serialize_cdr(
                    header, header_t.__msgtype__)))
            data = np.full((48, 64, 3), i, np.uint8)
            msg = image_t(header=header, height=48, width=64, encoding='rgb8', is_bigendian=0,
                          step=64 * 3, data=data.reshape(-1))
            writer.write(conn, stamp_ns, bytes(typestore.serialize_cdr(msg, image_t.__msgtype__)))


def play_and_collect(node, args: list[str], got: list, n: int) -> str:
    """Run vpr-play with args, spin node until it exits and n messages are in; its output."""
    proc = subprocess.Popen([sys.executable, '-m', 'vpr_ros.ros.bag_player', *args],
                            env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        rclpy.spin_once(node, timeout_sec=0.1)
    drain_until = time.monotonic() + 2.0
    while time.monotonic() < drain_until and len(got) < n:
        rclpy.spin_once(node, timeout_sec=0.1)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize('storage', [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_play_delivers_every_message_in_order(tmp_path, storage) -> None:
    bag = str(tmp_path / 'bag')
    write_image_bag(bag, 20, storage)
    with rclpy.init():
        node = rclpy.create_node('bag_player_test')
        got: list[tuple[int, int]] = []
        node.create_subscription(Image, '/play_test/image',
                                 lambda m: got.append((m.header.stamp.nanosec, m.data[0])),
                                 SENSOR_DEEP)
        out = play_and_collect(node, [bag, '--rate', '4',
                                      '--remap', '/camera/image_raw:=/play_test/image'], got, 20)
        assert '/camera/image_raw: 20 messages' in out
        assert [v for _, v in got] == list(range(20)), out
        node.destroy_node()


def test_play_waits_for_every_wait_topic(tmp_path) -> None:
    """A subscriber matched late on a second topic still gets that topic's first messages."""
    from std_msgs.msg import Header

    bag = str(tmp_path / 'bag')
    write_image_bag(bag, 10, StoragePlugin.MCAP, with_header=True)
    with rclpy.init():
        node = rclpy.create_node('bag_player_wait_test')
        images: list[int] = []
        stamps: list[int] = []
        node.create_subscription(Image, '/camera/image_raw',
                                 lambda m: images.append(m.data[0]), 10)
        # the image subscriber matches at once; the /stamps one only after 3 s of playing time
        timer = node.create_timer(3.0, lambda: (
            node.create_subscription(Header, '/stamps',
                                     lambda m: stamps.append(m.stamp.nanosec), 10),
            timer.cancel()))
        out = play_and_collect(node, [bag, '--rate', '4', '--wait-topics', '/stamps'],
                               stamps, 10)
        assert images == list(range(10)), out
        assert stamps == [i * 50_000_000 for i in range(10)], out
        node.destroy_node()
