"""
``vpr-extract-bag``: turn a recorded bag into a TB-Places-style training/evaluation folder.

Robots record images and odometry as bags, while training and ``vpr-eval`` read TB-Places-style
folders (images + a JSON index of 7-vector poses). This tool bridges the two with the same pose
interpolation (:class:`vpr_ros.core.pose_buffer.PoseBuffer`) and keyframe sampling
(:class:`vpr_ros.core.keyframe.KeyframePolicy`)
the live node uses, so a map built offline matches what
the node would have stored. rosbag2 (sqlite3, mcap) and ROS 1 bags are read through
``rosbags.highlevel.AnyReader``; images and poses are decoded by
:mod:`vpr_ros.core.msg_convert`, the node's own conversion (same encodings accepted, same
16-bit scaling, same refusal of truncated or oversized images).

Nothing in a bag may crash the extraction: undecodable images, NaN poses, frames outside the
pose range or across a pose gap are dropped and counted per reason in the summary.
"""
import argparse
from collections import Counter
import json
import os
from pathlib import Path
import sys
import time
from typing import Optional, Sequence

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import get_typestore, Stores
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from vpr_ros.core.atomic_io import write_atomic
from vpr_ros.core.bitdepth import to_8bit
from vpr_ros.core.errors import ImageError
from vpr_ros.core.keyframe import KeyframePolicy
from vpr_ros.core.msg_convert import any_image_from_msg, DEFAULT_MAX_PIXELS, pose_from_msg
from vpr_ros.core.msg_convert import stamp_ns as header_stamp_ns
from vpr_ros.core.pose_buffer import Pose, PoseBuffer
from vpr_ros.core.tbplaces import write_index

IMAGE_TYPES = {'sensor_msgs/msg/Image': 'raw', 'sensor_msgs/msg/CompressedImage': 'compressed'}
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'nav_msgs/msg/Odometry',
              'geometry_msgs/msg/PoseWithCovarianceStamped')


def _decode(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """
    Image ready for cv2.imwrite (BGR, or grey at its own depth), or ValueError('reason: ...').

    Decoded by the node's msg_convert, so a frame the node would refuse is dropped here too.
    """
    try:
        img, enc = any_image_from_msg(msg, max_pixels)
    except ImageError as exc:
        text = str(exc)
        reason = 'unsupported_encoding' if 'encoding' in text else 'decode_error'
        raise ValueError(f'{reason}: {text}') from exc
    if enc in ('mono8', 'mono16', 'bgr8'):
        return np.ascontiguousarray(img)
    if enc == 'bgra8':
        return np.ascontiguousarray(img[:, :, :3])
    return np.ascontiguousarray(img[:, :, 2::-1])  # rgb8 / rgba8 -> bgr


def _auto_topic(connections, wanted: Sequence[str], given: Optional[str], what: str):
    """Pick the topic's connections; without a name, the single topic of a wanted type."""
    if given:
        conns = [c for c in connections if c.topic == given]
        if not conns:
            raise SystemExit(f'{what} topic {given!r} not in the bag; topics: '
                             f'{sorted({c.topic for c in connections})}')
        if conns[0].msgtype not in wanted:
            raise SystemExit(f'{what} topic {given!r} has type {conns[0].msgtype}, '
                             f'expected one of {list(wanted)}')
        return conns
    topics = sorted({c.topic for c in connections if c.msgtype in wanted})
    if len(topics) != 1:
        raise SystemExit(f'cannot choose the {what} topic automatically among {topics}; '
                         f'pass --{what}-topic')
    return [c for c in connections if c.topic == topics[0]]


def compose_extrinsic(position: np.ndarray, quaternion: np.ndarray,
                      extrinsic: Optional[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """
    Camera pose = base pose ∘ extrinsic (camera in base frame), so the index holds camera poses.

    ψ labels and evaluation need where the *camera* looked, not where the base was.
    """
    if extrinsic is None:
        return position, quaternion
    e = np.asarray(extrinsic, dtype=np.float64)
    r_base = Rotation.from_quat(quaternion)
    r_cam = r_base * Rotation.from_quat(e[3:7])
    return position + r_base.apply(e[:3]), r_cam.as_quat()


def _check_options(image_format: str, extrinsic: Optional[Sequence[float]]
                   ) -> tuple[str, Optional[list[float]]]:
    """File extension and the extrinsic as 7 floats; ValueError naming what is wrong."""
    image_format = image_format.lower().lstrip('.')
    if image_format not in ('png', 'jpg', 'jpeg'):
        raise ValueError(f'image_format must be png or jpg, not {image_format!r}')
    if extrinsic is not None:
        e = np.asarray(extrinsic, dtype=np.float64).ravel()
        if e.size != 7:
            raise ValueError('extrinsic needs 7 numbers: tx ty tz qx qy qz qw')
        if not np.all(np.isfinite(e)) or np.linalg.norm(e[3:]) < 1e-9:
            raise ValueError('extrinsic must be finite with a non-zero quaternion')
        extrinsic = e.tolist()
    return ('png' if image_format == 'png' else 'jpg'), extrinsic


def _read_poses(reader, pose_conns, max_gap_s: float) -> tuple[PoseBuffer, int, int, Counter]:
    """
    Every pose of the topic, sorted by header stamp, in a buffer large enough for all of them.

    Poses are read before images: a bag orders by receive time, and images may arrive before
    the pose that brackets them. Returns (buffer, poses read, poses used, dropped per reason).
    """
    dropped: Counter = Counter()
    raw = []
    for conn, _, data in reader.messages(connections=pose_conns):
        try:
            p = pose_from_msg(reader.deserialize(data, conn.msgtype))
            raw.append((p.stamp_ns, p.position, p.quaternion))
        except Exception:  # noqa: BLE001 - a corrupt message is a dropped pose
            dropped['deserialize_error'] += 1
    raw.sort(key=lambda p: p[0])
    buffer = PoseBuffer(max_gap_s=max_gap_s, capacity=max(len(raw), 2) + 1)
    n_used = sum(bool(buffer.add(st, pos, quat)) for st, pos, quat in raw)
    for key in ('nan_pose', 'zero_quaternion', 'duplicate', 'out_of_order'):
        if buffer.counters.get(key):
            dropped[key] += buffer.counters[key]
    return buffer, len(raw), n_used, dropped


class _Frames:
    """Kept frames (file names, camera poses, stamps) and dropped ones per reason."""

    def __init__(self, out: Path, ext: str, jpeg_quality: int) -> None:
        self.out, self.ext, self.quality = out, ext, int(jpeg_quality)
        self.im_paths: list[str] = []
        self.poses: list[list[float]] = []
        self.stamps: list[int] = []
        self.dropped: Counter = Counter()

    def write(self, img: np.ndarray, stamp: int, position, quaternion) -> bool:
        """Write the image file and keep the frame; False (counted) when it cannot be written."""
        name = f'{len(self.im_paths):06d}.{self.ext}'
        params = []
        if self.ext == 'jpg':
            img = to_8bit(img)  # JPEG holds 8 bits: the node's 16 -> 8 bit scaling
            params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        if not cv2.imwrite(str(self.out / 'images' / name), img, params):
            self.dropped['write_error'] += 1
            return False
        self.im_paths.append(name)
        self.poses.append([*map(float, position), *map(float, quaternion)])
        self.stamps.append(stamp)
        return True


def _extract_images(reader, img_conns, buffer: PoseBuffer, policy: Optional[KeyframePolicy],
                    frames: _Frames, extrinsic, progress: bool) -> int:
    """Pose every image at its header stamp, sample keyframes, write them; returns images read."""
    dropped = frames.dropped
    total = sum(c.msgcount for c in img_conns)
    bar = tqdm(reader.messages(connections=img_conns), total=total, unit='img',
               desc='extract', disable=not progress)
    n_images = 0
    for conn, _, data in bar:
        n_images += 1
        try:
            msg = reader.deserialize(data, conn.msgtype)
        except Exception:  # noqa: BLE001
            dropped['deserialize_error'] += 1
            continue
        stamp = header_stamp_ns(msg.header)
        gaps_before = buffer.counters.get('gap', 0)
        pose = buffer.pose_at(stamp)
        if pose is None:
            gap = buffer.counters.get('gap', 0) > gaps_before
            dropped['pose_gap' if gap else 'outside_pose_range'] += 1
            continue
        position, quaternion = compose_extrinsic(np.asarray(pose.position),
                                                 np.asarray(pose.quaternion), extrinsic)
        cam_pose = Pose(stamp, position, quaternion)
        if policy is not None and not policy.decide(stamp, cam_pose, None).is_keyframe:
            dropped['not_keyframe'] += 1
            continue
        try:
            img = _decode(msg)
        except ValueError as exc:
            dropped[str(exc).split(':', 1)[0]] += 1
            continue
        if frames.write(img, stamp, position, quaternion) and policy is not None:
            policy.accept(stamp, cam_pose)
    bar.close()
    return n_images


def extract(bag: str, out_dir: str, image_topic: Optional[str] = None,
            pose_topic: Optional[str] = None, max_gap_s: float = 0.5,
            min_distance_m: float = 0.5, min_angle_deg: float = 15.0,
            max_interval_s: float = 5.0, all_frames: bool = False,
            extrinsic: Optional[Sequence[float]] = None, image_format: str = 'png',
            jpeg_quality: int = 95, progress: bool = True) -> dict:
    """
    Extract keyframes with interpolated camera poses from ``bag`` into ``out_dir``.

    Returns the summary: counts kept and dropped per reason, also written to
    ``out_dir/extract_summary.json``.
    """
    t0 = time.monotonic()
    ext, extrinsic = _check_options(image_format, extrinsic)
    out = Path(out_dir)
    (out / 'images').mkdir(parents=True, exist_ok=True)
    frames = _Frames(out, ext, jpeg_quality)
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        img_conns = _auto_topic(reader.connections, tuple(IMAGE_TYPES), image_topic, 'image')
        pose_conns = _auto_topic(reader.connections, POSE_TYPES, pose_topic, 'pose')
        buffer, n_poses, n_poses_used, pose_dropped = _read_poses(reader, pose_conns, max_gap_s)
        policy = None if all_frames else KeyframePolicy(
            min_distance_m=min_distance_m, min_angle_deg=min_angle_deg,
            max_interval_s=max_interval_s, novelty_threshold=None)
        n_images = _extract_images(reader, img_conns, buffer, policy, frames, extrinsic,
                                   progress)
        topics = {'image': img_conns[0].topic, 'image_type': img_conns[0].msgtype,
                  'pose': pose_conns[0].topic, 'pose_type': pose_conns[0].msgtype}
    index_path = str(out / 'index.json')
    write_index(index_path, 'images/', frames.im_paths,
                np.asarray(frames.poses, dtype=np.float64).reshape(-1, 7))
    dropped = frames.dropped
    summary = {
        'bag': str(bag), 'out_dir': str(out), 'index': index_path, **topics,
        'images_read': n_images, 'kept': len(frames.im_paths),
        'dropped': dict(sorted(dropped.items())), 'dropped_total': int(sum(dropped.values())),
        'poses_read': n_poses, 'poses_used': n_poses_used,
        'poses_dropped': dict(sorted(pose_dropped.items())),
        'stamps_ns': frames.stamps, 'all_frames': all_frames, 'extrinsic': list(extrinsic or []),
        'seconds': round(time.monotonic() - t0, 3),
    }
    write_atomic(str(out / 'extract_summary.json'), json.dumps(summary, indent=1).encode())
    return summary


def format_summary(s: dict) -> str:
    """Human summary so a user sees at once why frames went missing."""
    lines = [f'{s["bag"]}: {s["images_read"]} images on {s["image"]} ({s["image_type"]}), '
             f'{s["poses_read"]} poses on {s["pose"]} ({s["pose_type"]})',
             f'kept {s["kept"]} frames -> {s["index"]}',
             f'dropped {s["dropped_total"]} frames:']
    lines += [f'  {k:<22} {v}' for k, v in s['dropped'].items()] or ['  (none)']
    if s['poses_dropped']:
        lines.append('dropped poses:')
        lines += [f'  {k:<22} {v}' for k, v in s['poses_dropped'].items()]
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vpr-extract-bag', description=__doc__.split('\n')[0])
    p.add_argument('bag', help='rosbag2 folder (sqlite3 or mcap) or ROS 1 .bag file')
    p.add_argument('--out', required=True, help='output folder (images/ + index.json)')
    p.add_argument('--image-topic', help='Image or CompressedImage topic (auto if only one)')
    p.add_argument('--pose-topic', help='PoseStamped or Odometry topic (auto if only one)')
    p.add_argument('--max-gap', type=float, default=0.5,
                   help='drop frames between poses further apart than this (s)')
    p.add_argument('--min-distance', type=float, default=0.5, help='keyframe distance (m)')
    p.add_argument('--min-angle', type=float, default=15.0, help='keyframe rotation (deg)')
    p.add_argument('--max-interval', type=float, default=5.0, help='keyframe max interval (s)')
    p.add_argument('--all-frames', action='store_true', help='keep every posed frame')
    p.add_argument('--extrinsic', type=float, nargs=7, metavar=('TX', 'TY', 'TZ', 'QX', 'QY',
                                                                'QZ', 'QW'),
                   help="camera_link pose in the pose's child frame (REP-103: +x forward, "
                   'not the optical frame); image pose = pose ∘ extrinsic')
    p.add_argument('--format', default='png', choices=('png', 'jpg'), help='image file format')
    p.add_argument('--no-progress', action='store_true')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.exists(args.bag):
        print(f'vpr-extract-bag: {args.bag} does not exist', file=sys.stderr)
        return 2
    try:
        s = extract(args.bag, args.out, args.image_topic, args.pose_topic, args.max_gap,
                    args.min_distance, args.min_angle, args.max_interval, args.all_frames,
                    args.extrinsic, args.format, progress=not args.no_progress)
    except (ValueError, OSError) as exc:
        print(f'vpr-extract-bag: {exc}', file=sys.stderr)
        return 1
    print(format_summary(s))
    return 0 if s['kept'] else 1


if __name__ == '__main__':
    sys.exit(main())

