"""
vpr-slam-backend: a reference pose-graph back-end that closes vpr_node's loops (GTSAM, iSAM2).

Copy this to wire vpr_node into your own back-end. It subscribes to

* ``odom`` (nav_msgs/Odometry; ``pose`` with ``pose_type: PoseStamped``): the drifting odometry;
* ``vpr/matches`` and ``vpr/relative_pose`` (the node's contract, read by column name);

builds the planar pose graph of vpr_ros/tools/pose_graph.py (odometry factors between nodes
every 0.5 m, one robust loop factor per candidate row, iSAM2) and publishes

* ``slam/path`` (nav_msgs/Path, frame ``map``): the optimised nodes, after every change;
* ``slam/correction`` (geometry_msgs/TransformStamped ``map`` -> the odometry's frame): what to
  put in front of the odometry to get the corrected pose (the map->odom transform of REP-105);
* ``slam/status`` (std_msgs/Float64MultiArray, one row, columns STATUS_COLUMNS): counters a
  test or a tool can wait on.

A row of ``vpr/matches`` whose relative pose has not come (no camera_info, or a candidate
without a pose) becomes a weak "same place" factor (``unposed_loops: weak``) or none (``skip``)
once the relative poses of a later query arrived (the node publishes in order) or
``pair_wait_s`` passed since the row came. gtsam is needed by this tool only (the node never
imports it): ``pip install -r requirements-slam.txt``.
"""
from dataclasses import fields
import sys

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from vpr_ros.core.fov import yaw_from_quaternion
from vpr_ros.core.msg_convert import pose_from_msg
from vpr_ros.ros.messages import multiarray, reliable_qos, sensor_qos
from vpr_ros.ros.topics import MATCHES, POSE, RELATIVE_POSE
from vpr_ros.tools.pose_graph import GraphConfig, LoopObservation, PoseGraph

PATH, CORRECTION, STATUS = 'slam/path', 'slam/correction', 'slam/status'
STATUS_COLUMNS = ('odom_stamp,nodes,matches_rows,relative_pose_rows,loop_factors,'
                  'loops_direction,loops_metric,loops_near,loops_unposed,loops_skipped,'
                  'loops_out_of_range,pending,path_sum,odometry_refused,rows_refused')
MAX_PENDING = 10000   # loop rows waiting for odometry or their relative pose (oldest dropped)
MATCH_NEEDS = ('query_stamp', 'match_stamp', 'match_id')
POSE_NEEDS = MATCH_NEEDS + ('qx', 'qy', 'qz', 'qw', 'tx', 'ty', 'tz', 'scale_known',
                            'parallax_deg')


def table(msg) -> dict[str, np.ndarray]:
    """Columns of a vpr/* Float64MultiArray by name (the contract: names in dim[1].label)."""
    names = msg.layout.dim[1].label.split(',')
    data = np.asarray(msg.data, dtype=np.float64).reshape(-1, len(names))
    return {name: data[:, k] for k, name in enumerate(names)}


def to_ns(seconds: float) -> int:
    return int(round(float(seconds) * 1e9))


class SlamBackend(Node):
    """The node: parameters are GraphConfig's fields plus the ROS ones below."""

    def __init__(self) -> None:
        from geometry_msgs.msg import PoseStamped, TransformStamped
        from nav_msgs.msg import Odometry, Path
        from std_msgs.msg import Float64MultiArray

        super().__init__('vpr_slam_backend')
        defaults = GraphConfig()
        values = {}
        for f in fields(GraphConfig):
            default = getattr(defaults, f.name)
            default = [float(v) for v in default] if isinstance(default, tuple) else default
            values[f.name] = self.declare_parameter(f.name, default).value
        values['camera_mount'] = tuple(values['camera_mount'])
        self.graph = PoseGraph(GraphConfig(**values))
        self.pose_type = self.declare_parameter('pose_type', 'Odometry').value
        qos = self.declare_parameter('qos', 'sensor_data').value
        self.pair_wait_ns = to_ns(self.declare_parameter('pair_wait_s', 1.0).value)
        self.map_frame = self.declare_parameter('map_frame', 'map').value
        self.odom_frame = 'odom'
        # (query stamp, match id) -> (query stamp, match stamp, arrival): rows without a pose yet
        self.unposed: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.posed: dict[tuple[int, int], None] = {}  # rows whose relative pose came first
        self.waiting: list[LoopObservation] = []      # loops ahead of the odometry
        self.rows = {'matches': 0, 'relative_pose': 0}
        self.bad_odometry = 0
        self.rows_refused = 0
        self.path_sum = 0.0   # sum of x + y of the last path: tells which path a status follows
        pose_msg = Odometry if self.pose_type == 'Odometry' else PoseStamped
        self.create_subscription(pose_msg, POSE[self.pose_type], self._on_odom,
                                 sensor_qos(qos, 100))
        self.create_subscription(Float64MultiArray, MATCHES, self._on_matches, reliable_qos(100))
        if self.graph.config.use_relative_pose:
            self.create_subscription(Float64MultiArray, RELATIVE_POSE, self._on_relative_pose,
                                     reliable_qos(100))
        self.create_timer(0.25, self._tick)  # unposed rows are released without odometry too
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_path = self.create_publisher(Path, PATH, latched)
        self.pub_corr = self.create_publisher(TransformStamped, CORRECTION, reliable_qos(10))
        self.pub_status = self.create_publisher(Float64MultiArray, STATUS, reliable_qos(100))
        self.get_logger().info(f'vpr_slam_backend ready: odometry {pose_msg.__name__} on '
                               f'{self.resolve_topic_name(POSE[self.pose_type])}, loops from '
                               f'{self.resolve_topic_name(MATCHES)}; graph {self.graph.config}')

    # -- inputs -----------------------------------------------------------------------------
    def _on_odom(self, msg) -> None:
        pose = pose_from_msg(msg)
        values = np.concatenate([pose.position, pose.quaternion])
        if not np.isfinite(values).all() or not pose.quaternion.any():
            self.bad_odometry += 1
            self.get_logger().warn(f'odometry without a usable pose: ignored '
                                   f'({self.bad_odometry} so far)', throttle_duration_sec=5.0)
            return
        self.odom_frame = pose.frame_id or self.odom_frame
        x, y, z = pose.position
        changed = self.graph.add_odometry(pose.stamp_ns, x, y,
                                          yaw_from_quaternion(pose.quaternion), z)
        changed |= self._flush()
        self._publish(changed)

    def _read(self, msg, needs: tuple[str, ...], topic: str) -> dict | None:
        """Return the columns; rows with non-finite or impossible values are dropped (counted)."""
        try:
            cols = table(msg)
            missing = [c for c in needs if c not in cols]
            if missing:
                raise ValueError(f'no column {missing[0]!r}')
        except (IndexError, ValueError) as err:
            self._refuse(1, f'{topic} message refused: {err}')
            return None
        ok = np.isfinite(np.stack([cols[c] for c in needs])).all(axis=0)
        if 'qw' in needs:  # a relative pose needs a rotation and a translation
            quat = np.stack([cols[c] for c in ('qx', 'qy', 'qz', 'qw')])
            t = np.stack([cols[c] for c in ('tx', 'ty', 'tz')])
            ok &= (np.abs(np.linalg.norm(quat, axis=0) - 1) < 0.01) & (np.linalg.norm(t, axis=0)
                                                                     > 0)
        if not ok.all():
            self._refuse(int((~ok).sum()), f'{topic}: rows with non-finite values, a quaternion '
                                           'that is not unit or a zero translation refused')
        return {c: v[ok] for c, v in cols.items()}

    def _refuse(self, n: int, why: str) -> None:
        self.rows_refused += n
        self.get_logger().warn(f'{why} ({self.rows_refused} refused so far)',
                               throttle_duration_sec=5.0)

    def _on_matches(self, msg) -> None:
        cols = self._read(msg, MATCH_NEEDS, MATCHES)
        if cols is None:
            return
        n = self.graph.config.loops_per_query
        self.rows['matches'] += len(cols['query_stamp'])
        now = self.get_clock().now().nanoseconds
        for q, m, mid in list(zip(cols['query_stamp'], cols['match_stamp'], cols['match_id']))[:n]:
            key = (to_ns(q), int(mid))
            if self.posed.pop(key, 'absent') is None:
                continue  # its relative pose came first and was used
            self.unposed[key] = (to_ns(q), to_ns(m), now)
        if not self.graph.config.use_relative_pose:
            self._release(lambda q, arrived: True)
        self._bound()
        self._publish(self._flush())

    def _on_relative_pose(self, msg) -> None:
        cols = self._read(msg, POSE_NEEDS, RELATIVE_POSE)
        if cols is None:
            return
        self.rows['relative_pose'] += len(cols['query_stamp'])
        if len(cols['query_stamp']):  # rows of earlier queries will get no pose any more
            first = to_ns(cols['query_stamp'][0])
            self._release(lambda q, arrived: q < first)
        for k in range(min(len(cols['query_stamp']), self.graph.config.loops_per_query)):
            key = (to_ns(cols['query_stamp'][k]), int(cols['match_id'][k]))
            if self.unposed.pop(key, None) is None:
                self.posed[key] = None
            self.waiting.append(LoopObservation(
                key[0], to_ns(cols['match_stamp'][k]),
                np.array([cols[c][k] for c in ('qx', 'qy', 'qz', 'qw')]),
                np.array([cols[c][k] for c in ('tx', 'ty', 'tz')]),
                bool(cols['scale_known'][k] > 0.5), float(cols['parallax_deg'][k])))
        self._bound()
        self._publish(self._flush())

    def _tick(self) -> None:
        if self.unposed:
            self._publish(self._flush())

    def _bound(self) -> None:
        """Keep what waits bounded: a silent odometry must not grow memory without end."""
        for store in (self.unposed, self.posed):
            while len(store) > MAX_PENDING:
                store.pop(next(iter(store)))
        del self.waiting[:-MAX_PENDING]

    def _release(self, done) -> None:
        """Move the rows without a pose for which `done(query stamp, arrival)` to the loops."""
        for key in [k for k, (q, _, arrived) in self.unposed.items() if done(q, arrived)]:
            q, m, _ = self.unposed.pop(key)
            self.waiting.append(LoopObservation(q, m))

    def _flush(self) -> bool:
        """Add the loops the odometry now covers, and the unposed rows whose wait is over."""
        deadline = self.get_clock().now().nanoseconds - self.pair_wait_ns
        self._release(lambda q, arrived: arrived <= deadline)
        ready = [o for o in self.waiting if self.graph.covers(o.query_ns)]
        self.waiting = [o for o in self.waiting if not self.graph.covers(o.query_ns)]
        for obs in ready:
            self.graph.add_loop(obs)
        return bool(ready)

    # -- outputs ----------------------------------------------------------------------------
    def _publish(self, changed: bool) -> None:
        if changed and self.graph.update():
            self._publish_path()
            self._publish_correction()
            self.path_sum = float(self.graph.estimate[:, :2].sum())
        c = self.graph.counters
        latest = self.graph.latest[0] * 1e-9 if self.graph.latest is not None else -1.0
        row = [latest, len(self.graph.stamps), self.rows['matches'], self.rows['relative_pose'],
               c['loop_factors'], c['loops_direction'], c['loops_metric'], c['loops_near'],
               c['loops_unposed'], c['loops_skipped'], c['loops_out_of_range'],
               len(self.unposed) + len(self.waiting), self.path_sum,
               self.bad_odometry + c['odometry_out_of_order'], self.rows_refused]
        self.pub_status.publish(multiarray(STATUS_COLUMNS, [row], 'status'))

    def _publish_path(self) -> None:
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Path
        path = Path()
        path.header.frame_id = self.map_frame
        _set_stamp(path.header, self.graph.stamps[-1])
        for t, (x, y, yaw), z in zip(self.graph.stamps, self.graph.estimate, self.graph.z):
            p = PoseStamped()
            p.header.frame_id = self.map_frame
            _set_stamp(p.header, t)
            p.pose.position.x, p.pose.position.y, p.pose.position.z = float(x), float(y), z
            p.pose.orientation.z, p.pose.orientation.w = np.sin(yaw / 2), np.cos(yaw / 2)
            path.poses.append(p)
        self.pub_path.publish(path)

    def _publish_correction(self) -> None:
        from geometry_msgs.msg import TransformStamped
        x, y, yaw = self.graph.correction()
        msg = TransformStamped()
        msg.header.frame_id = self.map_frame
        _set_stamp(msg.header, self.graph.stamps[-1])
        msg.child_frame_id = self.odom_frame
        msg.transform.translation.x, msg.transform.translation.y = float(x), float(y)
        msg.transform.rotation.z, msg.transform.rotation.w = np.sin(yaw / 2), np.cos(yaw / 2)
        self.pub_corr.publish(msg)

    def summary(self) -> str:
        c = self.graph.counters
        return (f'{len(self.graph.stamps)} nodes, {c["loop_factors"]} loop factors '
                f'({c["loops_direction"]} direction, {c["loops_metric"]} metric, '
                f'{c["loops_near"]} near, {c["loops_unposed"]} unposed), '
                f'{c["loops_skipped"]} skipped, {c["loops_out_of_range"]} out of range')


def _set_stamp(header, ns: int) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(int(ns), 10**9)


def main(args=None) -> int:
    """Run the console script `vpr-slam-backend` until SIGINT."""
    rclpy.init(args=args)
    node = SlamBackend()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.get_logger().info(f'vpr_slam_backend: {node.summary()}')
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
