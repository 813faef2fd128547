"""
Hostile inputs for node tests: frames other encodings, size-patched JPEGs, decompression bombs.

Shared by test_node_torture.py and test_node_bad_input.py, so both send the same bytes.
"""
import struct
import zlib

import cv2
import numpy as np


def exotic_image(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Encode the frame as a camera with another encoding would send it."""
    if encoding == 'mono16':
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    if encoding == 'bgra8':
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    mosaic = np.empty(rgb.shape[:2], np.uint8)  # bayer_rggb8
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def patch_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    """Rewrite the frame size in a JPEG's SOF header (the pixels stay what they were)."""
    for marker in (b'\xff\xc0', b'\xff\xc2', b'\xff\xc1'):
        at = data.find(marker)
        if at >= 0:
            return data[:at + 5] + struct.pack('>HH', height, width) + data[at + 9:]
    raise AssertionError('no SOF marker')


def jpeg_bomb() -> bytes:
    """Make a tiny JPEG (~600 bytes) whose header declares 16000x16000 (768 MB decoded)."""
    ok, data = cv2.imencode('.jpg', np.full((16, 16), 128, np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    out = patch_jpeg_size(data.tobytes(), 16000, 16000)
    assert len(out) < 1000
    return out


def png_declaring(height: int, width: int) -> bytes:
    """Make a PNG (signature, IHDR with a correct CRC, one IDAT) declaring height x width."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
            + chunk(b'IDAT', zlib.compress(b'\x00' * 4096)) + chunk(b'IEND', b''))


def bit_flip(data: bytes, seed: int, n: int = 8) -> bytes:
    """Flip n bits in the entropy-coded part (after the headers) of a JPEG."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    start = data.find(b'\xff\xda') + 20
    for pos in rng.integers(start, len(buf) - 2, n):
        buf[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)
