"""
False loop closures for robustness checks: wrong pairs drawn at random, sent as vpr_node would.

A back-end earns its robust kernel on loops that are wrong. `draw_false_loops` picks N pairs of
frames that are far apart in ground truth (more than `min_distance_m`, more than `min_dt_s`
apart in time, so outside the node's exclusion window), each with a plausible but random
relative pose (yaw within +-40 deg, a random forward-looking direction, 2-10 deg of parallax,
scale unknown): what a confident wrong match with a passing geometric check looks like.
`FalseLoopRelay` forwards the node's `vpr/matches` and `vpr/relative_pose` to another
back-end's inputs and adds the false loops there, each once the node has processed its query
frame (`vpr/status`), so that back-end sees the node's loops plus N wrong ones.
"""
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.tools.pose_graph import LoopObservation

FALSE_MATCH_ID = 10**9   # match ids of injected rows start here (never a keyframe id in a demo)


def draw_false_loops(stamps_ns: np.ndarray, xy: np.ndarray, n: int, seed: int = 0,
                     min_distance_m: float = 15.0, min_dt_s: float = 30.0,
                     busy=()) -> list[LoopObservation]:
    """`n` wrong loops between frames (stamps, ground-truth xy); queries not in `busy`."""
    rng = np.random.default_rng([int(seed), 11])
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    free = set(np.flatnonzero(~np.isin(stamps_ns, np.asarray(list(busy), dtype=np.int64))))
    out: list[LoopObservation] = []
    for _ in range(1000 * max(n, 1)):
        if len(out) >= n or len(free) < 2:
            break
        i, j = rng.choice(len(stamps_ns), 2, replace=False)
        i, j = max(i, j), min(i, j)
        if (i not in free or stamps_ns[i] - stamps_ns[j] < min_dt_s * 1e9
                or np.linalg.norm(xy[i] - xy[j]) <= min_distance_m):
            continue
        q = Rotation.from_euler('y', rng.uniform(-40, 40), degrees=True).as_quat()
        t = np.array([rng.uniform(-1, 1), rng.uniform(-0.1, 0.1), rng.uniform(0.2, 1)])
        out.append(LoopObservation(int(stamps_ns[i]), int(stamps_ns[j]), q,
                                   t / np.linalg.norm(t), False, float(rng.uniform(2, 10))))
    if len(out) < n:
        raise ValueError(f'found only {len(out)} of {n} frame pairs over {min_distance_m} m apart')
    return sorted(out, key=lambda o: o.query_ns)


def loop_messages(loops: list[LoopObservation], first_id: int = FALSE_MATCH_ID):
    """(vpr/matches, vpr/relative_pose) messages of one query's loops, in the node's layout."""
    from vpr_ros.ros.messages import MATCH_COLUMNS, multiarray, RELATIVE_POSE_COLUMNS
    match_rows, pose_rows = [], []
    for k, o in enumerate(loops):
        q_s, m_s, mid = o.query_ns / 1e9, o.match_ns / 1e9, float(first_id + k)
        # score, query_id -1, no margin, accepted by the single-frame rule, own map, session 0
        match_rows.append([q_s, m_s, 0.95 - 0.01 * k, mid, -1.0, float('nan'), 1.0, 0.0, 0.0])
        pose_rows.append([q_s, m_s, mid, *o.quaternion, *o.translation, 60.0, 0.97,
                          float(o.scale_known), o.parallax_deg, 0.0])
    return (multiarray(MATCH_COLUMNS, match_rows, 'candidates'),
            multiarray(RELATIVE_POSE_COLUMNS, pose_rows, 'candidates'))


class FalseLoopRelay:
    """Forwards the node's loop topics to `target_ns` and adds `loops` there at their query."""

    def __init__(self, node, loops: list[LoopObservation], target_ns: str,
                 source_ns: str = '') -> None:
        from std_msgs.msg import Float64MultiArray

        from vpr_ros.ros.messages import reliable_qos
        self.loops = sorted(loops, key=lambda o: o.query_ns)
        self.sent = 0
        self.rows_out = 0
        qos = reliable_qos(100)
        self.pub_matches = node.create_publisher(Float64MultiArray, f'{target_ns}/vpr/matches',
                                                 qos)
        self.pub_poses = node.create_publisher(Float64MultiArray,
                                               f'{target_ns}/vpr/relative_pose', qos)
        node.create_subscription(Float64MultiArray, f'{source_ns}/vpr/matches',
                                 lambda m: self._forward(self.pub_matches, m), qos)
        node.create_subscription(Float64MultiArray, f'{source_ns}/vpr/relative_pose',
                                 lambda m: self.pub_poses.publish(m), qos)
        node.create_subscription(Float64MultiArray, f'{source_ns}/vpr/status', self._on_status,
                                 qos)

    def _forward(self, pub, msg) -> None:
        self.rows_out += msg.layout.dim[0].size
        pub.publish(msg)

    def _on_status(self, msg) -> None:
        """Once the node processed a frame at or after a false loop's query, send that loop."""
        stamp_ns = int(round(msg.data[0] * 1e9))
        while self.sent < len(self.loops) and self.loops[self.sent].query_ns <= stamp_ns:
            matches, poses = loop_messages([self.loops[self.sent]], FALSE_MATCH_ID + self.sent)
            self._forward(self.pub_matches, matches)
            self.pub_poses.publish(poses)
            self.sent += 1
