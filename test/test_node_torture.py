"""
Torture: every kind of hostile input of issue 11, interleaved with a revisiting sequence.

A raw node and a compressed node each get the whole image sequence (test/image_sequences.py),
and after every good frame one hostile item, cycling through the kinds: unknown and OpenCV-type
encodings, short data, a step smaller than a row, zero, huge and 1-pixel sizes, a frame over
max_image_pixels, NaN/inf/zero-quaternion poses, stamps a little back (a late frame), far back,
at the epoch, years ahead and duplicated (raw node); truncated, garbage, empty,
cut-with-end-marker, bit-flipped and size-patched JPEGs, PNGs declaring 100000x100000 and a
629-byte JPEG declaring 16000x16000 (compressed node). Some good frames arrive as mono16,
bgra8 and bayer_rggb8.

Every frame is paced on its /vpr/status row (a refused frame gets one too, candidates -1), so the
run is deterministic: afterwards each bad-input counter must equal what was sent of its kind
(nothing uncounted, nothing counted twice, no processing_errors), the node is still up, no
refused frame became a keyframe, and the good frames still find the revisit. Bounded: ~70 good
and ~70 hostile items per node.
"""
import os
import sys
import time

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile_inputs import bit_flip, exotic_image, jpeg_bomb, patch_jpeg_size, png_declaring  # noqa: E402
from image_sequences import make_sequence  # noqa: E402
from ros_fixtures import Client, NodeProcess, revisit_hits, rows  # noqa: E402

from vpr_ros.core.errors import ImageError  # noqa: E402
from vpr_ros.core.msg_convert import compressed_from_msg  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 10**9
YEAR_NS = 365 * 86400 * S
MAX_PIXELS = 240 * 320  # the node's max_image_pixels: the sequence's frames exactly
COUNTERS = ('bad_encoding', 'bad_image_data', 'bad_pose', 'pose_out_of_order', 'pose_time_reset',
            'image_stamp_backwards', 'image_stamp_duplicate', 'image_stamp_implausible',
            'no_pose', 'processing_errors')
RAW_KINDS = ('unknown_encoding', 'nan_pose', 'short_data', 'stamp_years_ahead', 'tiny_step',
             'inf_pose', 'zero_size', 'stamp_duplicate', 'huge_size', 'zero_quaternion',
             'one_row', 'stamp_far_back', 'one_column', 'stamp_backwards', 'opencv_encoding',
             'over_max_pixels', 'stamp_epoch')
COMPRESSED_KINDS = ('truncated_half', 'garbage', 'cut_with_end_marker', 'bit_flipped',
                    'size_patched_huge', 'empty', 'png_huge', 'jpeg_bomb', 'truncated_tail',
                    'size_patched_small', 'png_cut')
EXOTIC = {36: 'mono16', 40: 'bgra8', 44: 'bayer_rggb8', 48: 'mono16', 52: 'bgra8',
          56: 'bayer_rggb8'}  # wall-B frames (neither first pass nor revisit)


@pytest.fixture(scope='module')
def seq():
    return make_sequence(start_s=1_700_000_000.0)  # real epoch stamps: 3 years ahead fits


# ------------------------------------------------------------------------ hostile items
def local_verdict(msg) -> str | None:
    """Say what the node must count for a compressed frame: the core's decoding decides."""
    try:
        compressed_from_msg(msg, MAX_PIXELS)
    except ImageError:
        return 'bad_image_data'
    return None


def raw_item(client: Client, kind: str, rgb: np.ndarray, stamp: int):
    """(message or None, pose message or None, stamp, expected counter) of a raw-node kind."""
    from sensor_msgs.msg import Image

    key = 'bad_image_data'
    if kind.endswith(('_pose', '_quaternion')):
        vec = {'nan_pose': [np.nan, 0, 0, 0, 0, 0, 1], 'inf_pose': [0, np.inf, 0, 0, 0, 0, 1],
               'zero_quaternion': [1, 2, 0, 0, 0, 0, 0]}[kind]
        return None, client.pose_msg('PoseStamped', stamp + S // 4, vec), None, 'bad_pose'
    if kind.startswith('stamp_'):
        stamp, key = {'stamp_years_ahead': (stamp + 3 * YEAR_NS, 'image_stamp_implausible'),
                      'stamp_far_back': (stamp - 3600 * S, 'image_stamp_implausible'),
                      'stamp_epoch': (7, 'image_stamp_implausible'),
                      'stamp_duplicate': (stamp, 'image_stamp_duplicate'),
                      'stamp_backwards': (stamp - S // 3, 'image_stamp_backwards')}[kind]
        return client.image_msg(rgb, stamp), None, stamp, key
    stamp += S // 2
    if kind in ('unknown_encoding', 'opencv_encoding'):
        enc = 'no_such_encoding' if kind == 'unknown_encoding' else '32FC1'
        return client.image_msg(rgb, stamp, encoding=enc), None, stamp, 'bad_encoding'
    if kind == 'one_row':
        return client.image_msg(np.ascontiguousarray(rgb[:1]), stamp), None, stamp, key
    if kind == 'one_column':
        return client.image_msg(np.ascontiguousarray(rgb[:, :1]), stamp), None, stamp, key
    if kind == 'zero_size':
        return client.image_msg(np.zeros((0, 0, 3), np.uint8), stamp), None, stamp, key
    if kind == 'over_max_pixels':
        big = cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_LINEAR)
        return client.image_msg(big, stamp), None, stamp, key
    msg = client.image_msg(rgb, stamp)
    if kind == 'short_data':
        msg.data = bytes(msg.data)[:len(msg.data) // 3]
    elif kind == 'tiny_step':
        msg.step = 7
    elif kind == 'huge_size':
        msg = Image(height=100000, width=100000, encoding='rgb8', step=300000,
                    data=bytes(1024))
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, S)
    return msg, None, stamp, key


def compressed_item(client: Client, kind: str, rgb: np.ndarray, stamp: int, i: int):
    """(message, None, stamp, expected counter or None) of a compressed-node kind."""
    stamp += S // 2
    msg = client.jpeg_msg(rgb, stamp)
    data = bytes(msg.data)
    if kind == 'truncated_half':
        msg.data = data[:len(data) // 2]
    elif kind == 'truncated_tail':
        msg.data = data[:-100]
    elif kind == 'cut_with_end_marker':
        msg.data = data[:len(data) // 2] + b'\xff\xd9'
    elif kind == 'garbage':
        msg.data = bytes(np.random.default_rng(i).integers(0, 256, 5000, dtype=np.uint8))
    elif kind == 'empty':
        msg.data = b''
    elif kind == 'bit_flipped':
        msg.data = bit_flip(data, seed=i)
    elif kind == 'size_patched_huge':
        msg.data = patch_jpeg_size(data, 30000, 30000)
    elif kind == 'size_patched_small':
        msg.data = patch_jpeg_size(data, 24, 32)
    elif kind == 'jpeg_bomb':
        msg.data = jpeg_bomb()
    elif kind == 'png_huge':
        msg.format, msg.data = 'png', png_declaring(100000, 100000)
    elif kind == 'png_cut':
        png = bytes(client.jpeg_msg(rgb, stamp, '.png').data)
        msg.format, msg.data = 'png', png[:len(png) // 2]
    return msg, None, stamp, local_verdict(msg)


# ------------------------------------------------------------------------------- the run
def _send_frame(client: Client, pub, msg, stamp: int):
    """Publish an image and wait for its own status row (a duplicate stamp replaces the old)."""
    key = round(stamp / 1e9, 6)
    with client.lock:
        client.status.pop(key, None)
    pub.publish(msg)
    return client.wait_status(stamp)


def _wait_counters(client: Client, expect: dict[str, int], timeout: float = 30.0) -> dict:
    """Wait for a /diagnostics message whose counters are `expect`; fail showing the last."""
    seen = {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with client.lock:
            msgs = list(client.diags[-3:])
        for m in msgs:
            seen = {kv.key: kv.value for st in m.status for kv in st.values}
            if all(int(seen.get(k, -1)) == v for k, v in expect.items()):
                return seen
        time.sleep(0.1)
    wrong = {k: (seen.get(k), v) for k, v in expect.items() if int(seen.get(k, -1)) != v}
    raise AssertionError(f'counters (got, sent): {wrong}\n{client.target.log()[-4000:]}')


def _run(seq, tmp: str, transport: str) -> dict:
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CompressedImage, Image

    name = f'vpr_torture_{transport}'
    node = NodeProcess(tmp, name, {'pose_type': 'PoseStamped', 'qos': 'reliable',
                                   'image_transport': transport, 'map_dir': '',
                                   'max_image_pixels': MAX_PIXELS,
                                   'pose_max_gap_s': 2.0})  # poses 1 s apart: late frames posed
    client = None
    try:
        node.wait_ready()
        client = Client(f'client_{name}', node)
        compressed = transport == 'compressed'
        img_topic = node.topic('camera/image_raw' + ('/compressed' if compressed else ''))
        pose_topic = node.topic('pose')
        img_type = CompressedImage if compressed else Image
        client.wait_connected([(img_type, img_topic), (PoseStamped, pose_topic)])
        img_pub = client.publisher(img_type, img_topic)
        pose_pub = client.publisher(PoseStamped, pose_topic)
        expect = {k: 0 for k in COUNTERS}
        sent = {'frames': 0}
        good, refused, processed_bad = {}, [], []
        kinds = COMPRESSED_KINDS if compressed else RAW_KINDS
        t0 = time.monotonic()
        for i in range(len(seq)):
            stamp, rgb = int(seq.stamps_ns[i]), seq.frames[i]
            pose_pub.publish(client.pose_msg('PoseStamped', stamp, seq.poses[i]))
            if compressed:
                msg = client.jpeg_msg(rgb, stamp, '.png' if i % 2 else '.jpg')
            elif i in EXOTIC:
                msg = client.image_msg(exotic_image(rgb, EXOTIC[i]), stamp, EXOTIC[i])
            else:
                msg = client.image_msg(rgb, stamp)
            good[i] = _send_frame(client, img_pub, msg, stamp)
            sent['frames'] += 1
            if i == 0:
                continue
            kind = kinds[(i - 1) % len(kinds)]
            make = compressed_item if compressed else raw_item
            msg, pose_msg, bad_stamp, key = (make(client, kind, rgb, stamp, i) if compressed
                                             else make(client, kind, rgb, stamp))
            if key is not None:
                expect[key] += 1
            if pose_msg is not None:
                pose_pub.publish(pose_msg)
                continue
            row = _send_frame(client, img_pub, msg, bad_stamp)
            sent['frames'] += 1
            if key is None:  # a damaged JPEG the decoder still reads: a frame after the
                expect['no_pose'] += 1  # newest pose, processed without one
            if key is None or key == 'image_stamp_backwards':
                processed_bad.append((kind, bad_stamp, row))
            else:
                assert row[3] == -1 and row[1] == -1, (kind, row)
                refused.append((kind, bad_stamp))
        diag = _wait_counters(client, {**expect, 'frames_received': sent['frames'],
                                       'frames_dropped': 0})
        return dict(node=node, client=client, good=good, expect=expect, diag=diag,
                    refused=refused, processed_bad=processed_bad, kinds=kinds,
                    alive=node.proc.poll() is None, seconds=time.monotonic() - t0,
                    log=node.log())
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()


@pytest.fixture(scope='module', params=['raw', 'compressed'])
def run(request, seq, tmp_path_factory):
    return _run(seq, str(tmp_path_factory.mktemp('torture')), request.param)


def test_node_stays_up_and_counts_each_kind_exactly(run) -> None:
    assert run['alive'], run['log']
    e = run['expect']
    # every kind was sent several times; the raw node saw every bad-input counter move
    assert e['bad_image_data'] >= 12 and e['processing_errors'] == 0
    if 'nan_pose' in run['kinds']:
        assert min(e[k] for k in ('bad_encoding', 'bad_pose', 'image_stamp_backwards',
                                  'image_stamp_duplicate', 'image_stamp_implausible')) >= 3
    assert 'Traceback' not in run['log']
    print(f"torture {run['kinds'][0]}: {run['seconds']:.1f} s, sent {e}")


def test_refused_frames_never_become_keyframes_or_candidates(run) -> None:
    bad_stamps = {round(s / 1e9, 6) for _, s in run['refused']}
    bad_stamps |= {round(s / 1e9, 6) for k, s, _ in run['processed_bad']
                   if k == 'stamp_backwards'}
    for m in run['client'].matches:
        for r in rows(m):
            assert round(float(r[1]), 6) not in bad_stamps, r
    for kind, _, row in run['processed_bad']:
        if kind == 'stamp_backwards':  # a late frame: processed, skipped, not stored
            assert row[3] == 0 and row[1] == -1, row


def test_good_frames_still_find_the_revisit(run, seq) -> None:
    hits, best = revisit_hits(run['client'].matches, seq)
    assert len(hits) >= 0.75 * len(seq.revisits), (hits, best)
    assert all(row[3] >= 0 for row in run['good'].values())  # every good frame processed
    for i, enc in EXOTIC.items():
        assert run['good'][i][3] >= 0, (i, enc)
