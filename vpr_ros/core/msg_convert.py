"""
ROS message → numpy, without importing rclpy, so the conversions are testable without a ROS graph.

Duck-typed on the fields of `sensor_msgs/Image`, `sensor_msgs/CompressedImage`,
`geometry_msgs/PoseStamped`, `nav_msgs/Odometry` (and `PoseWithCovarianceStamped`): rclpy
messages and rosbags messages both work, so the node and `vpr-extract-bag` decode alike. Raw
conversion goes through rosbags-image, since cv_bridge is not available from PyPI; JPEG through
simplejpeg (libjpeg-turbo, strict), PNG through OpenCV. Everything a camera driver or a hostile
publisher can get wrong (unknown encoding, short data, zero size, truncated JPEG, a header
declaring a giant image) raises `ImageError` with a message naming what is wrong, so the node
counts it and carries on instead of dying on one bad frame.
"""
import struct
from typing import NamedTuple

import numpy as np
from rosbags.image import ImageError as RosbagsImageError
from rosbags.image.image import convert_color, to_cvtype
import simplejpeg

from vpr_ros.core.bitdepth import to_8bit
from vpr_ros.core.errors import ImageError, PoseError, VPRError

# Encodings the core takes as they are (see preprocess.to_rgb); others are converted to rgb8.
CORE_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
_JPEG_SOI = b'\xff\xd8'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
#: Largest image accepted by default: 4096x4096, above any camera a robot runs VPR on; the
#: node passes its max_image_pixels parameter.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Decoded bytes allowed per pixel of the limit: 4 (an 8-bit RGBA image at the pixel limit),
#: so the default bounds a decoded frame at 64 MiB. A 4096x4096 16-bit RGBA PNG declares
#: 128 MiB and used to cost +706 MB decoded (issue 20 #6); 16-bit colour fits up to 8 Mpixels.
BYTES_PER_PIXEL_BUDGET = 4
# PNG colour type -> channels OpenCV decodes it to (IMREAD_ANYCOLOR: gray, BGR, BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


class StampedPose(NamedTuple):
    """A pose as read from a message: not validated yet (the pose buffer counts bad ones)."""

    stamp_ns: int
    frame_id: str
    position: np.ndarray    # (3,) float64
    quaternion: np.ndarray  # (4,) float64, xyzw (scipy order)


def stamp_ns(header) -> int:
    """Integer nanoseconds of a std_msgs/Header (or a builtin_interfaces/Time)."""
    t = getattr(header, 'stamp', header)
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def stamp_s(ns: int) -> float:
    """Float seconds of an integer-nanosecond stamp: the unit of `/vpr/matches`."""
    return int(ns) / 1e9


def _buffer(data) -> memoryview:
    """Zero-copy bytes view of a message's data (array.array, bytes, list or numpy)."""
    if isinstance(data, (list, tuple)):
        data = bytes(data)
    try:
        return memoryview(data).cast('B')
    except TypeError:
        return memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast('B')


def _check_pixels(w: int, h: int, max_pixels: int, what: str,
                  bytes_per_pixel: int = 1) -> None:
    """
    Refuse a declared size before any buffer of that size exists (decompression bombs).

    Pixels against `max_pixels`, and decoded bytes (`bytes_per_pixel`: channels x bytes per
    sample, as the header declares them) against BYTES_PER_PIXEL_BUDGET x `max_pixels`.
    """
    if w <= 0 or h <= 0:
        raise ImageError(f'{what} has zero size ({w}x{h})')
    if max_pixels and w * h > max_pixels:
        raise ImageError(f'{what} of {w}x{h} = {w * h} pixels is over the limit of '
                         f'{max_pixels} (max_image_pixels)')
    limit = BYTES_PER_PIXEL_BUDGET * max_pixels
    if max_pixels and w * h * bytes_per_pixel > limit:
        raise ImageError(f'{what} of {w}x{h} at {bytes_per_pixel} bytes a pixel decodes to '
                         f'{w * h * bytes_per_pixel} bytes, over the limit of {limit} '
                         f'({BYTES_PER_PIXEL_BUDGET} bytes x max_image_pixels)')


def image_from_msg(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """
    sensor_msgs/Image → (array, encoding) with the encoding one the core takes.

    Rows are read with the message's `step`, so padded rows (common on GigE cameras) work; the
    result is a view of the message's buffer when no conversion is needed (no copy on the hot
    path). Bayer, YUV and 16-bit colour images are converted to rgb8 (mono16 is kept; 16-bit
    colour goes through `bitdepth.to_8bit`, the scaling mono16 gets in preprocessing). Images
    over `max_pixels` (0: no limit) are refused before anything is converted.
    """
    enc = str(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    _check_pixels(w, h, max_pixels, 'image')
    try:
        _, _, typestr, nchan = to_cvtype(enc)
    except RosbagsImageError:
        raise ImageError(f'unsupported image encoding {enc!r}') from None
    _check_pixels(w, h, max_pixels, f'{enc} image', nchan * np.dtype(typestr).itemsize)
    if enc.startswith(('8', '16', '32', '64')):  # OpenCV type strings like 32FC1: not a camera
        raise ImageError(f'unsupported image encoding {enc!r} (not a camera image)')
    dtype = np.dtype(typestr)
    row_bytes = w * nchan * dtype.itemsize
    if enc in ('nv12', 'nv21'):
        h_data = h + h // 2  # Y plane then interleaved UV at half height
    else:
        h_data = h
    if step < row_bytes:
        raise ImageError(f'image step {step} is smaller than a row ({row_bytes} bytes, '
                         f'{w} px {enc})')
    buf = _buffer(msg.data)
    need = step * (h_data - 1) + row_bytes
    if len(buf) < need:
        raise ImageError(f'image data truncated: {len(buf)} bytes for {w}x{h} {enc} '
                         f'(step {step}) needs {need}')
    if step % dtype.itemsize:
        raise ImageError(f'image step {step} is not a multiple of the pixel size')
    shape = (h_data, w) if nchan == 1 else (h_data, w, nchan)
    strides = (step, nchan * dtype.itemsize, dtype.itemsize)[:len(shape)]
    img = np.ndarray(shape=shape, dtype=dtype, buffer=buf, strides=strides)
    if dtype.itemsize > 1 and bool(msg.is_bigendian) == np.little_endian:  # foreign order
        img = img.byteswap()
    if enc in CORE_ENCODINGS:
        return img, enc
    if dtype == np.uint16 and enc.endswith('16'):  # rgb16, bayer_rggb16, ...: one scaling
        img, enc = to_8bit(img), enc[:-2] + '8'
        if enc in CORE_ENCODINGS:
            return img, enc
    try:
        return np.ascontiguousarray(convert_color(np.ascontiguousarray(img), enc, 'rgb8')), 'rgb8'
    except Exception as err:  # cv2.error and rosbags' errors: both mean 'cannot convert'
        raise ImageError(f'cannot convert {enc!r} image to rgb8: {err}') from None


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) declared in a PNG's IHDR chunk, read without decoding anything."""
    if len(data) < 24 or data[12:16] != b'IHDR':
        raise ImageError(f'PNG data has no IHDR header ({len(data)} bytes)')
    w, h = struct.unpack('>II', data[16:24])
    return int(w), int(h)


def png_bytes_per_pixel(data: bytes) -> int:
    """Bytes a pixel of a PNG decodes to (OpenCV, any depth), from its IHDR bit depth and type."""
    if len(data) < 26 or data[25] not in _PNG_CHANNELS:
        raise ImageError('PNG header declares no known colour type')
    return _PNG_CHANNELS[data[25]] * (2 if data[24] == 16 else 1)


def _decode_jpeg(buf: memoryview, max_pixels: int) -> tuple[np.ndarray, str]:
    """
    JPEG → (bgr8 | mono8) with its size checked first and libjpeg's warnings as errors.

    libjpeg fills what it cannot decode with flat blocks and only warns ('premature end of data
    segment'): a JPEG cut short with an end marker appended decodes to a half-flat picture that
    would be stored as a keyframe. simplejpeg's strict mode (libjpeg-turbo) turns the warning
    into an error; OpenCV and Pillow cannot.
    """
    try:
        h, w, colour, _ = simplejpeg.decode_jpeg_header(buf)
    except ValueError as err:
        raise ImageError(f'JPEG header unreadable ({len(buf)} bytes): {err}') from None
    if colour not in ('Gray', 'YCbCr', 'RGB'):
        raise ImageError(f'JPEG colour space {colour!r} is not a camera image')
    gray = colour == 'Gray'
    _check_pixels(int(w), int(h), max_pixels, 'JPEG image', 1 if gray else 3)
    try:
        img = simplejpeg.decode_jpeg(buf, colorspace='GRAY' if gray else 'BGR', strict=True)
    except ValueError as err:
        raise ImageError(f'JPEG data corrupt or truncated ({len(buf)} bytes): {err}') from None
    return (img[:, :, 0], 'mono8') if gray else (img, 'bgr8')


def compressed_from_msg(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """
    sensor_msgs/CompressedImage (JPEG or PNG) → (array, 'bgr8' | 'bgra8' | 'mono8' | 'mono16').

    The size the header declares is checked against `max_pixels` (0: no limit) before decoding,
    so a few hundred bytes declaring 16000x16000 cost no memory. A JPEG whose entropy data is
    incomplete is refused (see `_decode_jpeg`); so is a PNG that libpng cannot finish.
    """
    import cv2  # imported here: only compressed input needs the decoder

    buf = _buffer(msg.data)
    if len(buf) == 0:
        raise ImageError('compressed image has no data')
    head = bytes(buf[:8])
    if head.startswith(_JPEG_SOI):
        return _decode_jpeg(buf, max_pixels)
    if not head.startswith(_PNG_MAGIC):
        fmt = str(getattr(msg, 'format', ''))
        raise ImageError(f'compressed image is neither JPEG nor PNG (format {fmt!r})')
    head = bytes(buf[:26])
    w, h = png_size(head)
    _check_pixels(w, h, max_pixels, 'PNG image', png_bytes_per_pixel(head))
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if img is None or img.size == 0:
        raise ImageError(f'compressed image could not be decoded ({len(buf)} bytes)')
    if img.ndim == 2:
        return img, ('mono16' if img.dtype == np.uint16 else 'mono8')
    img = to_8bit(img)
    if img.shape[2] == 4:
        return img, 'bgra8'
    return img, 'bgr8'


def any_image_from_msg(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Image or CompressedImage (told apart by the `format` field, as rosbags-image does)."""
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return compressed_from_msg(msg, max_pixels)
    return image_from_msg(msg, max_pixels)


def pose_from_msg(msg) -> StampedPose:
    """
    PoseStamped, PoseWithCovarianceStamped or Odometry → StampedPose (not validated).

    Raises PoseError only for a message that has no pose at all; NaN values and zero quaternions
    pass through, because the pose buffer refuses and counts those in one place.
    """
    pose = getattr(msg, 'pose', None)
    if pose is None:
        raise PoseError(f'{type(msg).__name__} has no pose field')
    if hasattr(pose, 'pose'):  # Odometry.pose and PoseWithCovarianceStamped.pose: with covariance
        pose = pose.pose
    p, q = pose.position, pose.orientation
    return StampedPose(stamp_ns(msg.header), str(msg.header.frame_id),
                       np.array([p.x, p.y, p.z], dtype=np.float64),
                       np.array([q.x, q.y, q.z, q.w], dtype=np.float64))


# Depth images registered to the colour camera (REP-118): 16UC1 in mm or 32FC1 in m.
_DEPTH_DTYPES = {'16uc1': np.uint16, 'mono16': np.uint16, '32fc1': np.float32}


def depth_from_msg(msg) -> np.ndarray:
    """HxW depth of a sensor_msgs/Image: 16UC1 (mm) or 32FC1 (m), per REP-118; VPRError else."""
    enc = str(msg.encoding).lower()
    if enc not in _DEPTH_DTYPES:
        raise VPRError(f'depth encoding {msg.encoding!r} is not 16UC1 or 32FC1')
    dt = np.dtype(_DEPTH_DTYPES[enc]).newbyteorder('>' if msg.is_bigendian else '<')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = bytes(msg.data)
    if h <= 0 or w <= 0 or step < w * dt.itemsize or len(data) < h * step:
        raise VPRError(f'depth image {w}x{h} (step {step}) with {len(data)} bytes')
    rows = np.frombuffer(data, np.uint8, count=h * step).reshape(h, step)
    return rows[:, :w * dt.itemsize].copy().view(dt).reshape(h, w).astype(dt.newbyteorder('='))
