"""
vpr-extract-bag on bags written here: analytic circle trajectory, gap, NaN pose, bad images.

Images at 10 Hz, poses at 7 Hz on a circle (yaw follows the tangent and crosses ±180°), so every
kept frame's interpolated pose can be checked against the exact trajectory, and each dropped
frame's reason can be predicted from the stamps alone.
"""
from collections import Counter
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from scipy.spatial.transform import Rotation

from vpr_ros.core.bitdepth import to_8bit
from vpr_ros.core.msg_convert import any_image_from_msg
from vpr_ros.training.data.extract_bag import _decode, compose_extrinsic, extract

T0 = 1_700_000_000  # epoch seconds: stamps far from zero, as on a robot
RADIUS, OMEGA = 2.0, 0.5  # m, rad/s: 1 m/s along a 2 m circle
IMG_HZ, POSE_HZ = 10.0, 7.0
POSE_START, POSE_END = 1.013, 11.0  # images run 0..12 s, so both ends fall outside the poses
GAP = (5.0, 6.0)  # no pose in here: a 1.14 s hole > max_gap 0.5 s
NAN_AT = 8.0  # the pose nearest this time is NaN
BAD_IMAGE = 75  # index of the truncated / undecodable image
W, H = 64, 48


def truth(t):
    """Exact pose on the circle at time t (s): position and yaw (tangent, forward = +x)."""
    a = OMEGA * t
    return np.array([RADIUS * math.cos(a), RADIUS * math.sin(a), 0.3]), a + math.pi / 2


def pose_times():
    ts = POSE_START + np.arange(0, 200) / POSE_HZ
    ts = ts[ts <= POSE_END]
    return ts[(ts < GAP[0]) | (ts > GAP[1])]


def image_times():
    return np.arange(0, int(12 * IMG_HZ) + 1) / IMG_HZ


def _stamp(ts, t):
    ns = int(round(t * 1e9))
    return ts.types['builtin_interfaces/msg/Time'](sec=T0 + ns // 10**9, nanosec=ns % 10**9)


def _image(i):
    rng = np.random.default_rng(i)
    g = np.linspace(0, 255, W, dtype=np.float64)[None, :, None] * np.ones((H, 1, 3))
    return np.clip(g + rng.normal(0, 30, (H, W, 3)), 0, 255).astype(np.uint8)


def write_bag(path, storage, image_kind, pose_kind, ros1=False):
    """Write the test bag; returns the stamp of the NaN pose (seconds from T0)."""
    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    T = ts.types
    hdr_kw = {'seq': 0} if ros1 else {}

    def header(t, frame):
        return T['std_msgs/msg/Header'](**hdr_kw, stamp=_stamp(ts, t), frame_id=frame)

    img_type = ('sensor_msgs/msg/CompressedImage' if image_kind == 'compressed'
                else 'sensor_msgs/msg/Image')
    pose_type = 'nav_msgs/msg/Odometry' if pose_kind == 'odom' else 'geometry_msgs/msg/PoseStamped'
    if ros1:
        writer = Writer1(path)
        ser = ts.serialize_ros1
    else:
        writer = Writer(path, version=9, storage_plugin=storage)
        ser = ts.serialize_cdr
    pts = pose_times()
    nan_idx = int(np.argmin(np.abs(pts - NAN_AT)))
    with writer:
        ci = writer.add_connection('/camera/image', img_type, typestore=ts)
        cp = writer.add_connection('/robot/pose', pose_type, typestore=ts)
        events = [(t, 'img', i) for i, t in enumerate(image_times())]
        events += [(t, 'pose', j) for j, t in enumerate(pts)]
        for t, what, i in sorted(events, key=lambda e: (e[0], e[1])):
            log_ns = (T0 * 10**9) + int(round(t * 1e9)) + 2_000_000  # received 2 ms later
            if what == 'pose':
                p, yaw = truth(t)
                q = Rotation.from_euler('z', yaw).as_quat()
                if i == nan_idx:
                    p = p * np.nan
                pos = T['geometry_msgs/msg/Point'](x=p[0], y=p[1], z=p[2])
                ori = T['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3])
                pose = T['geometry_msgs/msg/Pose'](position=pos, orientation=ori)
                if pose_kind == 'odom':
                    cov = np.zeros(36)
                    twist = T['geometry_msgs/msg/TwistWithCovariance'](
                        twist=T['geometry_msgs/msg/Twist'](
                            linear=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0),
                            angular=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)),
                        covariance=cov)
                    msg = T[pose_type](
                        header=header(t, 'odom'), child_frame_id='base_link',
                        pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=cov),
                        twist=twist)
                else:
                    msg = T[pose_type](header=header(t, 'map'), pose=pose)
                writer.write(cp, log_ns, ser(msg, pose_type))
                continue
            img = _image(i)
            if image_kind == 'compressed':
                data = cv2.imencode('.jpg', img)[1].tobytes()
                if i == BAD_IMAGE:
                    data = data[:len(data) // 2]  # truncated JPEG
                msg = T[img_type](header=header(t, 'cam'), format='jpeg',
                                  data=np.frombuffer(data, np.uint8))
            else:
                enc = 'rgb8' if i != BAD_IMAGE else 'yuv999'  # unsupported encoding
                msg = T[img_type](header=header(t, 'cam'), height=H, width=W, encoding=enc,
                                  is_bigendian=0, step=W * 3, data=img.reshape(-1))
            writer.write(ci, log_ns, ser(msg, img_type))
    return pts[nan_idx]


def expected_drops():
    """Reasons predicted from the stamps: outside [first, last] pose, or inside the gap."""
    pts = pose_times()
    gap_lo, gap_hi = pts[pts < GAP[0]].max(), pts[pts > GAP[1]].min()
    tol = 0.01  # PoseBuffer returns the end pose this close beyond either end
    out = Counter()
    for t in image_times():
        if t < pts[0] - tol or t > pts[-1] + tol:
            out['outside_pose_range'] += 1
        elif gap_lo < t < gap_hi:
            out['pose_gap'] += 1
    return out, gap_lo, gap_hi


def wrap(a):
    return math.atan2(math.sin(a), math.cos(a))


def check_kept(out_dir, summary, allowed_err_m=0.01):
    with open(os.path.join(out_dir, 'index.json')) as f:
        index = json.load(f)
    poses = np.asarray(index['poses'], dtype=np.float64)
    assert len(index['im_paths']) == len(poses) == summary['kept'] > 0
    stamps = (np.asarray(summary['stamps_ns'], dtype=np.int64) - T0 * 10**9) / 1e9
    errs, yerrs = [], []
    for t, v in zip(stamps, poses):
        p, yaw = truth(t)
        errs.append(np.linalg.norm(v[:3] - p))
        fwd = Rotation.from_quat(v[3:]).apply([1, 0, 0])
        yerrs.append(abs(wrap(math.atan2(fwd[1], fwd[0]) - yaw)))
    first = os.path.join(out_dir, index['im_prefix'], index['im_paths'][0])
    assert cv2.imread(first).shape == (H, W, 3)
    return max(errs), math.degrees(max(yerrs)), stamps


@pytest.mark.parametrize('storage,image_kind,pose_kind,ros1', [
    (StoragePlugin.MCAP, 'raw', 'pose', False),
    (StoragePlugin.SQLITE3, 'compressed', 'odom', False),
    (None, 'compressed', 'pose', True),
])
def test_all_frames_interpolated_and_drops_counted(tmp_path, storage, image_kind, pose_kind,
                                                   ros1):
    bag = str(tmp_path / ('in.bag' if ros1 else 'in_bag'))
    write_bag(bag, storage, image_kind, pose_kind, ros1)
    out = str(tmp_path / 'out')
    s = extract(bag, out, all_frames=True, max_gap_s=0.5, progress=False)
    exp, gap_lo, gap_hi = expected_drops()
    bad_reason = 'decode_error' if image_kind == 'compressed' else 'unsupported_encoding'
    exp[bad_reason] += 1
    assert s['dropped'] == dict(exp), s
    assert s['images_read'] == len(image_times())
    assert s['kept'] == len(image_times()) - sum(exp.values())
    assert s['poses_dropped'] == {'nan_pose': 1}
    assert s['poses_read'] == len(pose_times())
    err_m, err_deg, stamps = check_kept(out, s)
    assert err_m < 0.01 and err_deg < 0.5, (err_m, err_deg)
    # The run crossed yaw = ±180°, and no kept frame lies in the gap or outside the poses.
    assert (stamps > (math.pi / 2) / OMEGA + 0.5).any()
    assert not ((stamps > gap_lo) & (stamps < gap_hi)).any()
    assert stamps.min() >= pose_times()[0] - 0.01 and stamps.max() <= pose_times()[-1] + 0.01


def test_keyframes_and_extrinsic_cli(tmp_path):
    bag = str(tmp_path / 'in_bag')
    write_bag(bag, StoragePlugin.MCAP, 'compressed', 'pose')
    out = str(tmp_path / 'kf')
    ext = ['0.1', '0.0', '0.2', '0', '0', '0.7071067811865476', '0.7071067811865476']
    cmd = [sys.executable, '-m', 'vpr_ros.training.data.extract_bag', bag, '--out', out,
           '--min-distance', '0.5', '--min-angle', '0', '--max-interval', '0',
           '--extrinsic', *ext, '--format', 'jpg', '--no-progress']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'kept' in r.stdout and 'not_keyframe' in r.stdout
    with open(os.path.join(out, 'extract_summary.json')) as f:
        s = json.load(f)
    with open(os.path.join(out, 'index.json')) as f:
        index = json.load(f)
    poses = np.asarray(index['poses'])
    assert s['dropped']['not_keyframe'] > 0 and 10 < s['kept'] < 40
    assert all(p.endswith('.jpg') for p in index['im_paths'])
    # Keyframes are >= 0.5 m apart (camera positions; the extrinsic is a rigid offset).
    steps = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1)
    assert steps.min() >= 0.5 - 1e-6
    # Camera pose = base pose ∘ extrinsic: check against the analytic base pose.
    t = (s['stamps_ns'][3] - T0 * 10**9) / 1e9
    p, yaw = truth(t)
    q = Rotation.from_euler('z', yaw).as_quat()
    cp, cq = compose_extrinsic(p, q, [float(x) for x in ext])
    assert np.linalg.norm(poses[3, :3] - cp) < 0.01
    assert (Rotation.from_quat(poses[3, 3:]).inv() * Rotation.from_quat(cq)).magnitude() < 0.01
    fwd = Rotation.from_quat(poses[3, 3:]).apply([1, 0, 0])  # camera looks 90° left of travel
    assert abs(wrap(math.atan2(fwd[1], fwd[0]) - yaw - math.pi / 2)) < 0.01


def test_compose_extrinsic_identity_and_offset():
    p, q = np.array([1.0, 2.0, 0.0]), Rotation.from_euler('z', 90, degrees=True).as_quat()
    cp, cq = compose_extrinsic(p, q, None)
    assert np.allclose(cp, p) and np.allclose(cq, q)
    cp, cq = compose_extrinsic(p, q, [1, 0, 0, 0, 0, 0, 1])
    assert np.allclose(cp, [1.0, 3.0, 0.0])  # 1 m forward of a base facing +y


def test_missing_bag_cli(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'vpr_ros.training.data.extract_bag',
                        str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'does not exist' in r.stderr


def test_frames_are_decoded_as_the_node_decodes_them():
    """The extractor uses the node's msg_convert: same pixels, same refusals (issue 9)."""
    T = get_typestore(Stores.ROS2_HUMBLE).types
    hdr = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=0),
                                   frame_id='cam')
    bgr = cv2.resize(_image(3), (64, 48))
    jpeg = cv2.imencode('.jpg', bgr)[1].tobytes()

    def compressed(data: bytes):
        return T['sensor_msgs/msg/CompressedImage'](header=hdr, format='jpeg',
                                                    data=np.frombuffer(data, np.uint8))

    np.testing.assert_array_equal(_decode(compressed(jpeg)),
                                  any_image_from_msg(compressed(jpeg))[0])
    # A JPEG cut in half with an end marker appended: the node refuses it, so does extraction
    # (rosbags-image decoded it with grey blocks in its lower half).
    with pytest.raises(ValueError, match='^decode_error'):
        _decode(compressed(jpeg[:len(jpeg) // 2] + b'\xff\xd9'))
    # 16-bit colour: the node's one 16 -> 8 bit scaling, written as BGR.
    rgb16 = (np.arange(48 * 64 * 3, dtype=np.uint16).reshape(48, 64, 3) * 41)
    raw = T['sensor_msgs/msg/Image'](header=hdr, height=48, width=64, encoding='rgb16',
                                     is_bigendian=0, step=64 * 6,
                                     data=rgb16.view(np.uint8).reshape(-1))
    np.testing.assert_array_equal(_decode(raw), to_8bit(rgb16)[:, :, ::-1])
    with pytest.raises(ValueError, match='^unsupported_encoding'):
        raw.encoding = '32FC1'
        _decode(raw)
