"""msg_convert turns rclpy and rosbags messages into the arrays the core takes, or says why not."""
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import cv2
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.core.errors import ImageError, PoseError
from vpr_ros.core.msg_convert import (
    any_image_from_msg,
    compressed_from_msg,
    image_from_msg,
    pose_from_msg,
    stamp_ns,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def image_msg(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1).view(np.uint8) if arr.dtype != np.uint8 else arr.reshape(h, -1)
    if bigendian:
        rows = arr.astype(arr.dtype.newbyteorder('>')).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                step=rows.shape[1])
    msg.data = rows.tobytes()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 345
    return msg


@pytest.mark.parametrize('encoding,arr', [
    ('rgb8', RGB), ('bgr8', RGB[..., ::-1].copy()), ('mono8', RGB[..., 0].copy()),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ('bgra8', np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
    ('mono16', RNG.integers(0, 65536, (6, 5), dtype=np.uint16)),
])
@pytest.mark.parametrize('pad', [0, 4])
def test_raw_encodings_pass_through_with_step_padding(encoding, arr, pad) -> None:
    img, enc = image_from_msg(image_msg(arr, encoding, pad))
    assert enc == encoding
    np.testing.assert_array_equal(img, arr)


def test_big_endian_mono16_is_swapped() -> None:
    arr = np.array([[1, 256], [513, 65535]], np.uint16)
    img, _ = image_from_msg(image_msg(arr, 'mono16', bigendian=True))
    np.testing.assert_array_equal(img, arr)


def test_bayer_and_rgb16_become_rgb8() -> None:
    img, enc = image_from_msg(image_msg(RNG.integers(0, 256, (6, 8), dtype=np.uint8),
                                        'bayer_rggb8'))
    assert enc == 'rgb8' and img.shape == (6, 8, 3) and img.dtype == np.uint8
    img, enc = image_from_msg(image_msg((RGB.astype(np.uint16) * 257), 'rgb16'))
    assert enc == 'rgb8'
    np.testing.assert_allclose(img.astype(int), RGB.astype(int), atol=1)


def test_rosbags_messages_work_too() -> None:
    ts = get_typestore(Stores.ROS2_HUMBLE)
    img_t, hdr_t, time_t = (ts.types[n] for n in ('sensor_msgs/msg/Image', 'std_msgs/msg/Header',
                                                   'builtin_interfaces/msg/Time'))
    msg = img_t(header=hdr_t(stamp=time_t(sec=3, nanosec=7), frame_id='cam'), height=6, width=5,
                encoding='rgb8', is_bigendian=0, step=15, data=RGB.reshape(-1))
    img, enc = any_image_from_msg(msg)
    np.testing.assert_array_equal(img, RGB)
    assert stamp_ns(msg.header) == 3_000_000_007


@pytest.mark.parametrize('mutate,words', [
    (lambda m: setattr(m, 'encoding', 'no_such_encoding'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'encoding', '32FC1'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'data', bytes(m.data)[:40]), 'truncated'),
    (lambda m: (setattr(m, 'height', 0), setattr(m, 'width', 0)), 'zero size'),
    (lambda m: setattr(m, 'step', 4), 'step'),
])
def test_bad_raw_images_raise_image_error(mutate, words) -> None:
    msg = image_msg(RGB, 'rgb8')
    mutate(msg)
    with pytest.raises(ImageError, match=words):
        image_from_msg(msg)


def compressed(arr_bgr: np.ndarray, ext: str) -> CompressedImage:
    ok, data = cv2.imencode(ext, arr_bgr)
    assert ok
    msg = CompressedImage(format=ext[1:])
    msg.data = data.tobytes()
    return msg


def test_jpeg_and_png_decode() -> None:
    big = cv2.resize(RGB[..., ::-1], (64, 48), interpolation=cv2.INTER_NEAREST)
    img, enc = compressed_from_msg(compressed(big, '.png'))
    assert enc == 'bgr8'
    np.testing.assert_array_equal(img, big)
    img, enc = any_image_from_msg(compressed(big, '.jpg'))
    assert enc == 'bgr8' and img.shape == (48, 64, 3)
    img, enc = compressed_from_msg(compressed(big[..., 0].copy(), '.png'))
    assert enc == 'mono8' and img.shape == (48, 64)
    img, enc = compressed_from_msg(compressed((big[..., 0].astype(np.uint16) * 257), '.png'))
    assert enc == 'mono16' and img.dtype == np.uint16


@pytest.mark.parametrize('cut', [0.5, 0.98])
@pytest.mark.parametrize('ext', ['.jpg', '.png'])
def test_truncated_compressed_images_raise(cut, ext) -> None:
    big = cv2.resize(RGB, (64, 48))
    msg = compressed(big, ext)
    data = bytes(msg.data)
    msg.data = data[:int(len(data) * cut)]
    with pytest.raises(ImageError):
        compressed_from_msg(msg)


def test_empty_and_garbage_compressed_images_raise() -> None:
    with pytest.raises(ImageError, match='no data'):
        compressed_from_msg(CompressedImage(format='jpeg'))
    msg = CompressedImage(format='jpeg')
    msg.data = b'not an image at all'
    with pytest.raises(ImageError, match='neither JPEG nor PNG'):
        compressed_from_msg(msg)


def test_pose_from_pose_stamped_and_odometry() -> None:
    ps = PoseStamped()
    ps.header.stamp.sec, ps.header.stamp.nanosec = 5, 10
    ps.header.frame_id = 'map'
    ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = 1.0, 2.0, 3.0
    ps.pose.orientation.z, ps.pose.orientation.w = 0.6, 0.8
    p = pose_from_msg(ps)
    assert p.stamp_ns == 5_000_000_010 and p.frame_id == 'map'
    np.testing.assert_array_equal(p.position, [1, 2, 3])
    np.testing.assert_array_equal(p.quaternion, [0, 0, 0.6, 0.8])
    od = Odometry()
    od.header = ps.header
    od.pose.pose = ps.pose
    od.pose.pose.position.x = float('nan')
    q = pose_from_msg(od)  # NaN passes through: the pose buffer refuses and counts it
    assert np.isnan(q.position[0]) and q.frame_id == 'map'
    with pytest.raises(PoseError):
        pose_from_msg(Image())


# ----------------------------------------------------------------------------- bombs (issue 11 #3)
def _jpeg_declaring(w: int, h: int) -> bytes:
    """Encode a valid tiny grey JPEG, then patch its frame header to declare w x h."""
    ok, enc = cv2.imencode('.jpg', np.full((8, 8), 128, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    data = bytearray(enc.tobytes())
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', h, w)
    return bytes(data)


def _png_declaring(w: int, h: int) -> bytes:
    """Encode a tiny PNG, then make its IHDR (CRC kept valid) declare w x h."""
    data = bytearray(cv2.imencode('.png', np.zeros((4, 4), np.uint8))[1].tobytes())
    data[16:24] = struct.pack('>II', w, h)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _compressed_bytes(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


def test_jpeg_bomb_is_refused_from_its_header_fast() -> None:
    data = _jpeg_declaring(16000, 16000)
    assert len(data) < 1000  # a few hundred bytes declaring 256 Mpx (768 MB decoded)
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match='16000x16000.*over the limit'):
        compressed_from_msg(_compressed_bytes(data, 'jpeg'))
    assert time.perf_counter() - t0 < 0.05
    # The same file under the limit decodes: the refusal is the bound, not a broken file.
    img, enc = compressed_from_msg(_compressed_bytes(_jpeg_declaring(8, 8), 'jpeg'))
    assert enc == 'mono8' and img.shape == (8, 8)


def test_jpeg_bomb_allocates_nothing_big() -> None:
    """Peak memory (ru_maxrss of a fresh process) barely moves while the bomb is refused."""
    code = textwrap.dedent(f'''
        import resource, sys
        from sensor_msgs.msg import CompressedImage
        from vpr_ros.core.errors import ImageError
        from vpr_ros.core.msg_convert import any_image_from_msg
        msg = CompressedImage(format='jpeg')
        msg.data = {_jpeg_declaring(16000, 16000)!r}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            any_image_from_msg(msg)
            sys.exit('decoded')
        except ImageError:
            pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 20_000  # kB: far below the 768 MB a decode would take


def test_png_bomb_is_refused_from_its_header() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match='100000x100000.*over the limit'):
        compressed_from_msg(_compressed_bytes(_png_declaring(100000, 100000), 'png'))
    assert time.perf_counter() - t0 < 0.05
    with pytest.raises(ImageError, match='over the limit'):  # the bound is an argument
        compressed_from_msg(_compressed_bytes(_png_declaring(64, 64), 'png'), max_pixels=1000)


def test_jpeg_cut_in_half_with_an_end_marker_is_refused() -> None:
    big = cv2.resize(RGB, (320, 240))
    data = compressed(big, '.jpg').data
    data = bytes(data)
    msg = _compressed_bytes(data[:len(data) // 2] + b'\xff\xd9', 'jpeg')
    with pytest.raises(ImageError, match='corrupt or truncated'):
        compressed_from_msg(msg)
    img, _ = compressed_from_msg(_compressed_bytes(data, 'jpeg'))  # the whole file is fine
    assert img.shape == (240, 320, 3)


def test_raw_image_over_the_pixel_limit_is_refused() -> None:
    msg = Image(height=5000, width=5000, encoding='rgb8', step=15000)
    msg.data = bytes(16)  # the size check comes before anything reads the buffer
    with pytest.raises(ImageError, match='5000x5000.*over the limit'):
        image_from_msg(msg)
    ok = image_msg(RGB, 'rgb8')
    with pytest.raises(ImageError, match='over the limit'):
        any_image_from_msg(ok, max_pixels=29)
    assert any_image_from_msg(ok, max_pixels=30)[0].shape == RGB.shape
