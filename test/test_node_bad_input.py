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

from image_sequences import make_sequence  # noqa: E402
from ros_fixtures import Client, NodeProcess, rows  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 10**9
POSE_GAP = range(40, 50)  # wall-B frames published without any pose


@pytest.fixture(scope='module')
def seq():
    return make_sequence()


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
    idx = {round(int(t) / 1e9, 6): i for i, t in enumerate(seq.stamps_ns)}
    best = {}
    for m in run['client'].matches:
        r = rows(m)
        key = round(float(r[0, 0]), 6)
        if key in idx:
            best[idx[key]] = idx.get(round(float(r[0, 1]), 6))
    revisit = sorted(seq.revisits)
    hits = [i for i in revisit if best.get(i) in seq.revisits[i]]
    assert len(hits) >= 0.75 * len(revisit), (hits, best)
    assert all(run['good'][i][1] >= 0 or run['good'][i][2] == 0 for i in run['good'])


def test_pose_gap_frames_were_processed_without_pose(run) -> None:
    for i in POSE_GAP:
        assert run['good'][i][3] >= 0  # processed (not refused), just without a pose
