"""
16-bit → 8-bit pixels: one conversion for the node, verification, bag extraction and training.

A mono16 camera has to look the same to the network whichever path its pictures take (live
messages, PNGs extracted from a bag, a TB-Places folder), or a model trained offline sees other
pixels than the node embeds. Every place that needs 8-bit pixels from 16-bit ones calls `to_8bit`.
"""
import numpy as np


def to_8bit(image: np.ndarray) -> np.ndarray:
    """
    uint16 → uint8 by the fixed full-range scale 65535 → 255 (round(v / 257)); uint8 unchanged.

    Why this scaling: it is fixed, so a scene's descriptor does not depend on what else is in
    the frame (a per-image max stretch, which training used, makes a lamp entering the view
    darken everything else, and the network saw other pixels offline than live); it is the
    nearest 8-bit level of the full-range value v·255/65535 (`>> 8` and rosbags-image's
    truncation are floors, up to one level darker); and it inverts the usual 8 → 16 bit expansion
    exactly (v·257 → v), so a mono8 picture stored as mono16 gives back the same pixels. A 12-bit
    sensor in a 16-bit container looks dark this way, as in every ROS viewer: scale it in the
    driver if that matters.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    if a.dtype != np.uint16:
        raise TypeError(f'to_8bit needs uint8 or uint16 pixels, got {a.dtype}')
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
