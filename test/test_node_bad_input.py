"""
Bad input never stops vpr_node: each kind is refused, counted, and good frames still match.

The good sequence is streamed with, interleaved: images with an unknown encoding, truncated
data and zero size (raw node); truncated JPEGs, garbage and empty data (compressed node, whose
good frames alternate JPEG and PNG); NaN poses, image stamps going backwards, and a stretch where
the pose topic stops (both nodes).
"""
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile_inputs import jpeg_bomb, patch_jpeg_size, png_declaring  # noqa: E402
from ros_fixtures import Client, diag_values, NodeProcess, revisit_hits  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 10**9
POSE_GAP = range(40, 50)  # wall-B frames published without any pose


def _bad_raw(client: Client, seq, i: int, stamp: int) -> str:
    """Publish bad frame number i % 4 (or nothing); return the counter it must raise."""
    img = seq.frames[i]
    kind = i % 4
    if kind == 0:
        msg = client.image_msg(img, stamp, encoding='no_such_encoding')
        key = 'bad_encoding'
    elif kind == 1:
        msg = client.image_msg(img, stamp)
        msg.data = bytes(msg.data)[:len(msg.data) // 2]
        key = 'bad_image_data'
    elif kind == 2:
        msg = client.image_msg(np.zeros((0, 0, 3), np.uint8), stamp)
        key = 'bad_image_data'
    else:
        msg = client.image_msg(img, stamp, encoding='32FC1')
        key = 'bad_encoding'
    return msg, key


def _bad_compressed(client: Client, seq, i: int, stamp: int) -> str:
    msg = client.jpeg_msg(seq.frames[i], stamp)
    data = bytes(msg.data)
    kind = i % 4
    if kind == 0:
        msg.data = data[:len(data) // 2]
    elif kind == 1:
        msg.data = data[:-100]
    elif kind == 2:
        msg.data = b'\x00garbage' * 50
    else:
        msg.data = b''
    return msg, 'bad_image_data'


def _run(seq, tmp, name: str, transport: str) -> dict:
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CompressedImage, Image

    topic, pose_topic = f'/{name}/image', f'/{name}/pose'
    node = NodeProcess(tmp, name, {'camera_topic': topic, 'pose_topic': pose_topic,
                                   'pose_type': 'PoseStamped', 'qos': 'reliable',
                                   'image_transport': transport, 'map_dir': ''})
    client = None
    try:
        node.wait_ready()
        client = Client(f'client_{name}', node)
        img_type = CompressedImage if transport == 'compressed' else Image
        img_topic = topic + ('/compressed' if transport == 'compressed' else '')
        client.wait_connected([(img_type, img_topic), (PoseStamped, pose_topic)])
        img_pub = client.publisher(img_type, img_topic)
        pose_pub = client.publisher(PoseStamped, pose_topic)
        expect = {k: 0 for k in ('bad_encoding', 'bad_image_data', 'bad_pose',
                                 'image_stamp_backwards')}
        good: dict[int, np.ndarray] = {}
        t_start = time.time()
        for i in range(len(seq)):
            stamp = int(seq.stamps_ns[i])
            if i not in POSE_GAP:
                pose_pub.publish(client.pose_msg('PoseStamped', stamp, seq.poses[i]))
            if transport == 'compressed':
                msg = client.jpeg_msg(seq.frames[i], stamp, '.png' if i % 2 else '.jpg')
            else:
                msg = client.image_msg(seq.frames[i], stamp)
            img_pub.publish(msg)
            good[i] = client.wait_status(stamp)
            if i % 3 == 1:  # a bad image, between this good frame and the next
                bad_stamp = stamp + S // 2
                make = _bad_compressed if transport == 'compressed' else _bad_raw
                msg, key = make(client, seq, i, bad_stamp)
                img_pub.publish(msg)
                s = client.wait_status(bad_stamp)
                assert s[3] == -1, (i, key, s)  # refused frames: candidates -1
                expect[key] += 1
            if i % 5 == 2 and i not in POSE_GAP:  # NaN pose after the good one: refused
                pose_pub.publish(client.pose_msg('PoseStamped', stamp + S // 4,
                                                 [np.nan, 0, 0, 0, 0, 0, 1]))
                expect['bad_pose'] += 1
            if i % 9 == 4:  # an image stamped before the previous one: processed, counted
                back = stamp - S // 3
                img_pub.publish(client.image_msg(seq.frames[i], back) if transport == 'raw'
                                else client.jpeg_msg(seq.frames[i], back))
                s = client.wait_status(back)
                assert s[3] == 0 and s[1] == -1  # a late frame: no candidates, not stored
                expect['image_stamp_backwards'] += 1
        diag = client.latest_diag(after=time.time() + 0.2)
        alive = node.proc.poll() is None
        return dict(node=node, client=client, good=good, expect=expect, diag=diag,
                    alive=alive, t_start=t_start, log=node.log())
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()


@pytest.fixture(scope='module', params=['raw', 'compressed'])
def run(request, seq, tmp_path_factory):
    return _run(seq, str(tmp_path_factory.mktemp('bad')), f'vpr_bad_{request.param}',
                request.param)


def test_node_survives_and_counts_every_bad_input(run) -> None:
    assert run['alive'], run['log']
    d = run['diag']
    for key, n in run['expect'].items():
        assert int(d[key]) == n, (key, n, d)
    assert sum(run['expect'].values()) > 40 and run['expect']['bad_image_data'] > 10
    assert int(d['no_pose']) >= len(POSE_GAP)
    assert int(d['processing_errors']) == 0, run['log']
    assert 'image refused' in run['log'] and 'has no pose' in run['log']


def test_good_frames_still_find_the_revisit(run, seq) -> None:
    hits, best = revisit_hits(run['client'].matches, seq)
    assert len(hits) >= 0.75 * len(seq.revisits), (hits, best)
    assert all(run['good'][i][1] >= 0 or run['good'][i][2] == 0 for i in run['good'])


def test_pose_gap_frames_were_processed_without_pose(run) -> None:
    for i in POSE_GAP:
        assert run['good'][i][3] >= 0  # processed (not refused), just without a pose


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process, KiB."""
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise AssertionError('no VmHWM')


def test_decompression_bombs_are_refused_without_decoding(seq, tmp_path) -> None:
    """
    Refuse decompression bombs from their header (issue 11 #3); peak memory stays put.

    A ~600-byte JPEG declaring 16000x16000 (768 MB decoded) and PNGs declaring 100000x100000
    are refused as bad_image_data under the default max_image_pixels, without decoding.
    """
    from sensor_msgs.msg import CompressedImage

    name = 'vpr_bombs'
    node = NodeProcess(str(tmp_path), name, {'pose_type': 'none', 'qos': 'reliable',
                                             'image_transport': 'compressed', 'map_dir': ''})
    client = None
    try:
        node.wait_ready()
        client = Client(f'client_{name}', node)
        topic = node.topic('camera/image_raw/compressed')
        client.wait_connected([(CompressedImage, topic)])
        pub = client.publisher(CompressedImage, topic)
        for i in range(3):  # warm up: the encoder's first frames allocate what it keeps
            pub.publish(client.jpeg_msg(seq.frames[i], int(seq.stamps_ns[i])))
            assert client.wait_status(int(seq.stamps_ns[i]))[3] >= 0
        before = _vm_hwm_kib(node.proc.pid)
        big_jpeg = bytes(client.jpeg_msg(seq.frames[3], 0).data)
        bombs = [('jpeg', jpeg_bomb()), ('png', png_declaring(100000, 100000)),
                 ('jpeg', patch_jpeg_size(big_jpeg, 30000, 30000))] * 3
        stamp = int(seq.stamps_ns[3])
        for fmt, data in bombs:
            stamp += S // 10
            msg = client.jpeg_msg(seq.frames[3], stamp)
            msg.format, msg.data = fmt, data
            t0 = time.monotonic()
            pub.publish(msg)
            assert client.wait_status(stamp)[3] == -1
            assert time.monotonic() - t0 < 5.0  # decoding 16000x16000 took 4.9 s on its own
        pub.publish(client.jpeg_msg(seq.frames[4], int(seq.stamps_ns[4])))
        assert client.wait_status(int(seq.stamps_ns[4]))[3] >= 0  # still working
        grown_mib = (_vm_hwm_kib(node.proc.pid) - before) / 1024
        assert grown_mib < 100, f'peak RSS grew by {grown_mib:.0f} MiB while bombs arrived'
        diag = client.wait_for(
            lambda: next((v for v in (diag_values(m) for m in client.diags[-2:])
                          if v.get('bad_image_data') == str(len(bombs))), None),
            what=f'bad_image_data == {len(bombs)}')
        assert diag['processing_errors'] == '0', diag
        assert 'max_image_pixels' in node.log(), node.log()
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()


def test_stamp_jumps_vouched_for_by_poses_are_followed(seq, tmp_path) -> None:
    """
    Follow a clock jump the pose stream shares, even when the image arrives before its pose.

    Issue 11 #7 refuses stamps that agree with neither the recent frames nor the poses; a bag
    that restarts (poses and images jump back together) or a stretch the robot was off (both
    jump ahead) must still be processed. The image is published before its pose here, so the
    node has to wait for the pose before judging the stamp.
    """
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image

    name = 'vpr_stamp_jumps'
    node = NodeProcess(str(tmp_path), name, {'pose_type': 'PoseStamped', 'qos': 'reliable',
                                             'map_dir': '', 'pose_wait_s': 1.0})
    client = None
    try:
        node.wait_ready()
        client = Client(f'client_{name}', node)
        img_topic, pose_topic = node.topic('camera/image_raw'), node.topic('pose')
        client.wait_connected([(Image, img_topic), (PoseStamped, pose_topic)])
        img_pub = client.publisher(Image, img_topic)
        pose_pub = client.publisher(PoseStamped, pose_topic)
        base = 1_700_000_000 * S  # real epoch stamps: an hour back stays positive
        plan = [(0, 0), (1, S), (2, 2 * S), (3, 600 * S), (4, 601 * S),  # robot off 10 min
                (5, -3600 * S), (6, -3599 * S),  # the bag restarted an hour earlier
                (7, 10 * 365 * 86400 * S)]  # an image alone, 10 years ahead: refused
        rows_ = []
        for i, offset in plan:
            stamp = base + offset
            img_pub.publish(client.image_msg(seq.frames[i], stamp))
            if i != 7:
                pose_pub.publish(client.pose_msg('PoseStamped', stamp, seq.poses[i]))
            rows_.append(client.wait_status(stamp))
        assert all(r[3] >= 0 for r in rows_[:7]), rows_
        assert rows_[7][3] == -1 and rows_[7][1] == -1
        diag = client.wait_for(
            lambda: next((v for v in (diag_values(m) for m in client.diags[-2:])
                          if v.get('image_stamp_implausible') == '1'), None),
            what='image_stamp_implausible == 1')
        assert diag['pose_time_reset'] == '1' and diag['processing_errors'] == '0', diag
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
