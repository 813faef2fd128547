"""
The messages and QoS profiles of vpr_node's outputs: the `vpr/*` Float64MultiArray contract.

Every `vpr/*` array is `[rows x columns]` with the column names in the second dimension's label
(README.md, "the contract"), so a client reads them by name and a new column cannot shift old
ones silently.

``vpr/relative_pose`` (reliable, depth 10): one message per processed query with at least one
accepted candidate that has a relative pose (verification with intrinsics from camera_info);
rows best first, `RELATIVE_POSE_COLUMNS`. ``qx, qy, qz, qw`` and ``tx, ty, tz`` are the query
camera's orientation and position in the match camera's optical frame (z forward, x right, y
down): a point X in the query camera frame is R X + t in the match camera frame, the edge a
pose graph adds between the two keyframes' camera poses. t is a unit direction
(``scale_known`` 0) unless depth made it metric (1). ``parallax_deg`` is the median ray angle
once the rotation is removed: under ~1 degree the rotation is good but the direction of t is
noise.
"""
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    qos_profile_sensor_data,
    QoSProfile,
    ReliabilityPolicy,
)

from vpr_ros.core.msg_convert import stamp_s

# The first five columns are the original contract; confidence (the sequence rule's margin,
# NaN when the single-frame rule accepted without one), evidence (1: score and verified inliers,
# 2: sequence and distinctiveness), prior_map (0: the node's own map, k: its k-th prior map) and
# session (of the matched keyframe) were added after them (README, the contract).
MATCH_COLUMNS = ('query_stamp,match_stamp,score,match_id,query_id,confidence,evidence,'
                 'prior_map,session')
EVIDENCE_CODES = {'frame': 1, 'sequence': 2}
STATUS_COLUMNS = 'query_stamp,query_id,is_keyframe,candidates,core_ms,node_ms,dropped'
LOOP_COLUMNS = 'query_stamp,match_stamp'
RELATIVE_POSE_COLUMNS = ('query_stamp,match_stamp,match_id,qx,qy,qz,qw,tx,ty,tz,inliers,'
                         'inlier_ratio,scale_known,parallax_deg,prior_map')


def reliable_qos(depth: int) -> QoSProfile:
    """Reliable, volatile, keep-last `depth`: what the outputs use."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def sensor_qos(name: str, depth: int) -> QoSProfile:
    """Input QoS of the `qos` parameter: 'reliable', or sensor data (best effort) of `depth`."""
    if name == 'reliable':
        return reliable_qos(depth)
    return QoSProfile(**{k: getattr(qos_profile_sensor_data, k)
                         for k in ('history', 'reliability', 'durability')}, depth=depth)


def multiarray(columns: str, rows: list[list[float]], outer: str):
    """Float64MultiArray with the [rows x len(columns)] layout of the vpr/* contract."""
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    n_cols = len(columns.split(','))
    msg = Float64MultiArray()
    msg.layout.dim = [
        MultiArrayDimension(label=outer, size=len(rows), stride=len(rows) * n_cols),
        MultiArrayDimension(label=columns, size=n_cols, stride=n_cols),
    ]
    msg.layout.data_offset = 0
    msg.data = [float(v) for row in rows for v in row]
    return msg


def matches_message(result):
    """Build the vpr/matches message of a FrameResult (None: no accepted candidate)."""
    if not result.candidates:
        return None
    t_q = stamp_s(result.stamp_ns)
    rows = [[t_q, stamp_s(c.match_stamp_ns), c.score, c.match_id, result.query_id,
             float('nan') if c.margin is None else c.margin,
             EVIDENCE_CODES.get(c.accepted_by, 0), c.prior, c.session]
            for c in result.candidates]
    return multiarray(MATCH_COLUMNS, rows, 'candidates')


def loop_closure_message(result):
    """
    [t_query, t_match] of the best candidate in the node's own map (LIO-SAM's loop input).

    None when only prior maps matched: their stamps are another robot's, not LIO-SAM's.
    """
    own = [c for c in result.candidates if not c.prior]
    if not own:
        return None
    return multiarray(LOOP_COLUMNS,
                      [[stamp_s(result.stamp_ns), stamp_s(own[0].match_stamp_ns)]], 'loop')


def relative_pose_rows(result) -> list[list[float]]:
    """One row per accepted candidate of a FrameResult that carries a relative pose, best first."""
    rows = []
    t_q = stamp_s(result.stamp_ns)
    for c in result.candidates:
        rp = c.relative_pose
        if rp is None or not rp.ok:
            continue
        rows.append([t_q, stamp_s(c.match_stamp_ns), c.match_id, *rp.quaternion,
                     *rp.translation, rp.inliers, rp.inlier_ratio, float(rp.scale_known),
                     rp.parallax_deg, c.prior])
    return rows


def relative_pose_message(result):
    """Build the vpr/relative_pose message of a FrameResult (None: no candidate has a pose)."""
    rows = relative_pose_rows(result)
    return multiarray(RELATIVE_POSE_COLUMNS, rows, 'candidates') if rows else None


def status_message(stamp_ns: int, result, node_s: float, dropped: int):
    """One vpr/status row; a refused frame (result None) has candidates -1."""
    if result is None:
        row = [stamp_s(stamp_ns), -1, 0, -1, 0.0, 0.0, dropped]
    else:
        row = [stamp_s(stamp_ns), result.query_id, int(result.is_keyframe),
               len(result.candidates), result.t_total_s * 1e3, node_s * 1e3, dropped]
    return multiarray(STATUS_COLUMNS, [row], 'frames')
