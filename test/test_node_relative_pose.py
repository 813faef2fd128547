"""
vpr_node over real DDS on the simulated garden loop: camera_info in, vpr/relative_pose out.

The node runs in a subprocess with its default configuration (so the built-in model's
calibrated operating point); this process publishes camera_info, then the loop's frames with
their ground-truth poses, and compares every published relative pose with the one the known
camera poses give (rotation error, translation-direction error).
"""
import os
import sys
import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import sim_day_loop  # noqa: E402
from ros_fixtures import Client, NodeProcess, RELIABLE, rows, stream  # noqa: E402

from vpr_ros.core.fov import fov_overlap, yaw_from_quaternion  # noqa: E402
from vpr_ros.core.relative_pose import (  # noqa: E402
    direction_error_deg,
    relative_from_poses,
    rotation_error_deg,
)
from vpr_ros.ros.messages import RELATIVE_POSE_COLUMNS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
COLS = RELATIVE_POSE_COLUMNS.split(',')


def _sim_loop():
    """Start and revisit of the demo's day loop (every 2nd frame), poses and intrinsics."""
    files, stamps, poses, intrinsics = sim_day_loop()
    pick = list(range(0, 100, 2)) + list(range(220, len(files), 2))
    frames = [cv2.cvtColor(cv2.imread(files[i]), cv2.COLOR_BGR2RGB) for i in pick]
    return SimpleNamespace(frames=frames, stamps_ns=np.array([stamps[i] for i in pick],
                                                             dtype=np.int64),
                           poses=poses[pick], intrinsics=intrinsics)


def _camera_info(k: dict, stamp_ns: int):
    from sensor_msgs.msg import CameraInfo
    msg = CameraInfo(width=int(k['width']), height=int(k['height']),
                     distortion_model='plumb_bob')
    msg.k = [k['fx'], 0.0, k['cx'], 0.0, k['fy'], k['cy'], 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    msg.p = [k['fx'], 0.0, k['cx'], 0.0, 0.0, k['fy'], k['cy'], 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = 'camera_optical'
    return msg


def test_relative_pose_over_dds_on_a_simulated_loop(tmp_path) -> None:
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Float64MultiArray

    seq = _sim_loop()
    node = NodeProcess(str(tmp_path), 'vpr_relpose', {'pose_type': 'PoseStamped',
                                                        'qos': 'reliable',
                                                        'map_dir': str(tmp_path / 'map')})
    client = None
    try:
        node.wait_ready()
        assert 'operating point: calibrated' in node.log(), node.log()
        client = Client('client_relpose', node)
        got, lock = [], threading.Lock()

        def keep(msg):
            with lock:
                got.append(msg)
        client.node.create_subscription(Float64MultiArray, node.topic('vpr/relative_pose'),
                                        keep, RELIABLE)
        image_topic, pose_topic = node.topic('camera/image_raw'), node.topic('pose')
        info_topic = node.topic('camera/camera_info')
        client.wait_connected([(Image, image_topic), (PoseStamped, pose_topic),
                               (CameraInfo, info_topic)])
        client.publisher(CameraInfo, info_topic).publish(
            _camera_info(seq.intrinsics, int(seq.stamps_ns[0])))
        node.wait_log('intrinsics from', 30)
        status = stream(client, seq, range(len(seq.frames)), image_topic, 'PoseStamped',
                        pose_topic)
        n_matches = sum(1 for s in status if s[3] > 0)
        client.wait_for(lambda: len(client.matches) >= n_matches, 30, 'all matches')
        client.wait_for(lambda: len(got) >= n_matches, 30, 'a relative pose per match')
        diag = client.wait_diag(lambda d: int(d['frames_processed']) == len(seq.frames),
                                what='diagnostics counting the whole loop')
        assert diag['degenerate_frames'] == '0'
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
    _check_poses(seq, got, client.matches, n_matches)


def _check_poses(seq, got, matches, n_matches) -> None:
    index = {round(int(t) / 1e9, 6): i for i, t in enumerate(seq.stamps_ns)}
    yaw = yaw_from_quaternion(seq.poses[:, 3:])
    assert len(got) == n_matches >= 5
    rot, dirs, best_false = [], [], 0
    for m, mm in zip(got, matches):
        d = m.layout.dim
        assert d[0].label == 'candidates' and d[1].label == RELATIVE_POSE_COLUMNS
        assert d[1].size == len(COLS) and len(m.data) == d[0].size * len(COLS)
        r, rm = rows(m), rows(mm)
        assert r[0, 0] == rm[0, 0] and set(r[:, 2]) <= set(rm[:, 3])  # same query, candidates
        for k, row in enumerate(r):
            v = dict(zip(COLS, row))
            i, j = index[round(v['query_stamp'], 6)], index[round(v['match_stamp'], 6)]
            psi = fov_overlap(seq.poses[i, :2], yaw[i], seq.poses[j, :2], yaw[j])
            if k == 0 and psi <= 0.0:
                best_false += 1
            assert v['scale_known'] == 0.0
            t = np.array([v['tx'], v['ty'], v['tz']])
            assert abs(np.linalg.norm(t) - 1.0) < 1e-6  # unit direction without depth
            if psi <= 0.5:
                continue
            q_true, t_true = relative_from_poses(seq.poses[i], seq.poses[j])
            rot.append(rotation_error_deg([v['qx'], v['qy'], v['qz'], v['qw']], q_true))
            if np.linalg.norm(t_true) > 0.5:
                dirs.append(direction_error_deg(t, t_true))
    print(f'vpr/relative_pose over DDS: {len(got)} messages, {len(rot)} rows of true loops '
          f'(psi > 0.5): rotation error median {np.median(rot):.2f} deg, p90 '
          f'{np.percentile(rot, 90):.2f}, max {np.max(rot):.2f}; translation direction '
          f'(baseline > 0.5 m, {len(dirs)} rows): median {np.median(dirs):.1f} deg; best '
          f'candidates at another place (psi 0): {best_false}')
    assert best_false == 0
    assert len(rot) >= 5 and np.median(rot) < 1.0 and np.percentile(rot, 90) < 2.0
    assert not dirs or np.median(dirs) < 10.0


def test_depth_and_camera_info_decoding() -> None:
    """ROS-free parts: 16UC1/32FC1 depth (padded rows, big endian), camera_info refusals."""
    from vpr_ros.core.errors import VPRError
    from vpr_ros.core.msg_convert import depth_from_msg
    from vpr_ros.ros.camera_info import intrinsics_from_camera_info
    d = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    padded = np.zeros((3, 6), np.uint16)
    padded[:, :4] = d
    msg = SimpleNamespace(encoding='16UC1', is_bigendian=0, height=3, width=4, step=12,
                          data=padded.tobytes())
    np.testing.assert_array_equal(depth_from_msg(msg), d)
    f = np.linspace(0.5, 5, 12, dtype=np.float32).reshape(3, 4)
    msg = SimpleNamespace(encoding='32FC1', is_bigendian=1, height=3, width=4, step=16,
                          data=f.astype('>f4').tobytes())
    np.testing.assert_array_equal(depth_from_msg(msg), f)
    with pytest.raises(VPRError):
        depth_from_msg(SimpleNamespace(encoding='rgb8', is_bigendian=0, height=1, width=1,
                                       step=3, data=b'abc'))
    with pytest.raises(VPRError):
        depth_from_msg(SimpleNamespace(encoding='16UC1', is_bigendian=0, height=3, width=4,
                                       step=6, data=b'\0' * 24))
    info = SimpleNamespace(k=[0.0] * 9, d=[], distortion_model='')
    with pytest.raises(VPRError, match='focal'):
        intrinsics_from_camera_info(info)
    info = SimpleNamespace(k=[500.0, 0, 320, 0, 500.0, 240, 0, 0, 1], d=[0.1, 0, 0, 0],
                           distortion_model='equidistant')
    with pytest.raises(VPRError, match='equidistant'):
        intrinsics_from_camera_info(info)
    info.distortion_model = 'plumb_bob'
    intr = intrinsics_from_camera_info(info)
    assert (intr.fx, intr.cy, intr.dist) == (500.0, 240.0, (0.1, 0.0, 0.0, 0.0))


def test_operating_point_resolution() -> None:
    """Calibrated point unless the user set score_threshold / gv_min_inliers, else the params."""
    from vpr_ros.model.operating_point import builtin_operating_point
    from vpr_ros.ros.detector_config import RunningConfig
    from vpr_ros.ros.params import Params
    point = builtin_operating_point()
    assert point is not None and point.usable and point.precision == 1.0
    run = RunningConfig(Params({}), point, '', frozenset())
    c = run.detector_config()
    assert c.score_threshold == point.score_threshold
    assert c.gv_min_inliers == point.min_inliers
    assert 'calibrated' in run.note()
    mine = RunningConfig(Params({'score_threshold': 0.85}), point, '',
                         frozenset({'score_threshold'}))
    assert mine.detector_config().score_threshold == 0.85
    assert 'set explicitly' in mine.note()
    none = RunningConfig(Params({}), None, 'why', frozenset())
    assert none.detector_config().score_threshold == Params({}).score_threshold
    assert 'from the parameters (why)' in none.note()
