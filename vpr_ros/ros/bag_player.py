"""
`vpr-play BAG`: publish a bag's topics over DDS, since `ros2 bag play` is not on PyPI.

Messages are published as serialized CDR (no deserialization on the hot path): rosbag2 data is
CDR already, ROS 1 data is converted with rosbags. Publishing keeps the recorded timing (scaled
by --rate), or paces on another topic so a slow subscriber is never outrun (--pace-topic).
"""
import argparse
import importlib
import os
from pathlib import Path
import threading
import time
from typing import Sequence

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader

DEFAULT_PROFILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'config', 'fastdds_shm16mb.xml')


def message_class(msgtype: str) -> type:
    """Map a bag type name ('sensor_msgs/msg/Image') to the rclpy message class."""
    pkg, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.msg'), name)


def recorded_qos(connection: object, override: str = '') -> QoSProfile:
    """Return the recorded QoS, else reliable (which matches any subscriber)."""
    reliability = ReliabilityPolicy.RELIABLE
    durability = DurabilityPolicy.VOLATILE
    profiles = getattr(getattr(connection, 'ext', None), 'offered_qos_profiles', None) or []
    if profiles and not isinstance(profiles, str):
        first = profiles[0]
        if getattr(getattr(first, 'reliability', None), 'name', '') == 'BEST_EFFORT':
            reliability = ReliabilityPolicy.BEST_EFFORT
        if getattr(getattr(first, 'durability', None), 'name', '') == 'TRANSIENT_LOCAL':
            durability = DurabilityPolicy.TRANSIENT_LOCAL
    if override == 'reliable':
        reliability = ReliabilityPolicy.RELIABLE
    elif override == 'best_effort':
        reliability = ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=reliability,
                      durability=durability)


class BagPlayer(Node):
    """Publishes one bag; a node of its own so it can run beside others in one process."""

    def __init__(self, qos_override: str = '', remap: dict[str, str] | None = None) -> None:
        super().__init__('vpr_bag_player')
        self._qos_override = qos_override
        self._remap = remap or {}
        self._by_topic: dict[str, object] = {}
        self._pace = threading.Event()

    def publisher_for(self, connection: object) -> object:
        topic = self._remap.get(connection.topic, connection.topic)
        if topic not in self._by_topic:
            self._by_topic[topic] = self.create_publisher(
                message_class(connection.msgtype), topic,
                recorded_qos(connection, self._qos_override))
        return self._by_topic[topic]

    def pace_on(self, topic: str, msgtype: str) -> None:
        """Each message on `topic` lets the next paced message go."""
        self.create_subscription(message_class(msgtype), topic,
                                 lambda _msg: self._pace.set(), 10)

    def wait_pace(self, timeout_s: float) -> bool:
        ok = self._pace.wait(timeout_s)
        self._pace.clear()
        return ok

    def wait_for_subscribers(self, topics: Sequence[str], timeout_s: float) -> bool:
        """Block until each published topic has matched a subscriber (or the time is up)."""
        end = time.monotonic() + timeout_s
        pubs = [self._by_topic[t] for t in topics if t in self._by_topic]
        while time.monotonic() < end:
            if all(p.get_subscription_count() > 0 for p in pubs):
                return True
            time.sleep(0.05)
        return False


def play(bag: str, rate: float = 1.0, topics: Sequence[str] = (), qos_override: str = '',
         remap: dict[str, str] | None = None, pace_topic: str = '',
         pace_msgtype: str = 'std_msgs/msg/Header', paced_topic: str = '',
         pace_timeout_s: float = 5.0, wait_subscriber_s: float = 10.0,
         start_delay_s: float = 0.5, limit: int = 0, wait_topics: Sequence[str] = ()) -> dict:
    """
    Publish the bag; return counts per topic. rclpy must be initialised by the caller.

    `limit` > 0 stops after that many messages of the paced (default: first) topic. Playing
    starts once the paced topic and every topic in `wait_topics` (bag names) has a subscriber:
    DDS matches each publisher on its own, so a pose topic matched a moment after the camera
    would otherwise lose its first poses.
    """
    with AnyReader([Path(bag).absolute()]) as reader:
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        if not conns:
            raise ValueError(f'no topic of {list(topics)} in {bag}')
        player = BagPlayer(qos_override, remap)
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(player)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        for conn in conns:
            player.publisher_for(conn)
        if pace_topic:
            player.pace_on(pace_topic, pace_msgtype)
        lead = paced_topic or conns[0].topic
        watched = {(remap or {}).get(t, t) for t in (lead, *wait_topics)}
        player.wait_for_subscribers(sorted(watched), wait_subscriber_s)
        time.sleep(start_delay_s)
        counts: dict[str, int] = {}
        ros1 = reader.is2 is False
        t_wall0 = time.monotonic()
        t_bag0 = None
        paced_timeouts = 0
        for conn, t_bag, raw in reader.messages(connections=conns):
            if limit and counts.get(lead, 0) >= limit:
                break
            if t_bag0 is None:
                t_bag0 = t_bag
            if rate > 0 and not pace_topic:
                delay = (t_bag - t_bag0) / 1e9 / rate - (time.monotonic() - t_wall0)
                if delay > 0:
                    time.sleep(delay)
            data = bytes(reader.typestore.ros1_to_cdr(raw, conn.msgtype) if ros1 else raw)
            player.publisher_for(conn).publish(data)
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            if pace_topic and conn.topic == lead:
                if not player.wait_pace(pace_timeout_s):
                    paced_timeouts += 1
        time.sleep(0.2)  # let reliable writers flush before the node goes away
        executor.shutdown()
        spin.join(timeout=5.0)  # a spinning thread must not outlive its node and context
        player.destroy_node()
    return {'counts': counts, 'paced_timeouts': paced_timeouts,
            'wall_s': time.monotonic() - t_wall0}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='vpr-play', description=__doc__.splitlines()[0])
    parser.add_argument('bag', help='rosbag2 directory (sqlite3/mcap) or ROS 1 .bag')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor; 0 = as fast as possible')
    parser.add_argument('--topics', nargs='*', default=[], help='only these topics')
    parser.add_argument('--remap', nargs='*', default=[], metavar='FROM:=TO')
    parser.add_argument('--qos', choices=['', 'reliable', 'best_effort'], default='',
                        help='override the recorded reliability')
    parser.add_argument('--pace-topic', default='',
                        help='publish the next paced message only after one arrives here')
    parser.add_argument('--pace-type', default='std_msgs/msg/Header',
                        help='message type of --pace-topic')
    parser.add_argument('--paced-topic', default='',
                        help='the topic whose messages wait for --pace-topic (default: first)')
    parser.add_argument('--pace-timeout', type=float, default=5.0)
    parser.add_argument('--wait-topics', nargs='*', default=[],
                        help='also wait for a subscriber on these topics before playing')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', DEFAULT_PROFILES)
    remap = dict(r.split(':=', 1) for r in args.remap)
    # Only our own argv goes to argparse; rcl would read FROM:=TO as a (deprecated) remap rule.
    with rclpy.init(args=[]):  # shut down on the way out, whatever ends the play
        try:
            summary = play(args.bag, rate=args.rate, topics=args.topics, qos_override=args.qos,
                           remap=remap, pace_topic=args.pace_topic,
                           pace_msgtype=args.pace_type, paced_topic=args.paced_topic,
                           pace_timeout_s=args.pace_timeout, wait_topics=args.wait_topics)
        except KeyboardInterrupt:
            return
    for topic, n in sorted(summary['counts'].items()):
        print(f'{topic}: {n} messages')
    print(f"played in {summary['wall_s']:.1f} s, paced timeouts: {summary['paced_timeouts']}")


if __name__ == '__main__':
    main()
