"""
LoopDetector with the issue-12 parts: degenerate-frame gate, intrinsics, relative pose.

The pose accuracy runs on the simulated garden loop (known camera poses and intrinsics), the
same images the demo plays to the node.
"""
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import make_sequence, sim_day_loop  # noqa: E402

from vpr_ros.core.detector import DetectorConfig, LoopDetector  # noqa: E402
from vpr_ros.core.pose_buffer import Pose  # noqa: E402
from vpr_ros.core.relative_pose import (  # noqa: E402
    direction_error_deg,
    Intrinsics,
    relative_from_poses,
    rotation_error_deg,
)
from vpr_ros.map.place_map import PlaceMap  # noqa: E402

S = 1_000_000_000


def _detector(encoder, **kw) -> LoopDetector:
    return LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint), DetectorConfig(**kw))


def _blank(kind: str, rng) -> np.ndarray:
    noise = rng.normal(0, 2.0, (240, 320))
    base = {'lens_cap': 4.0, 'wall': 150.0}[kind]
    return np.repeat(np.clip(base + noise, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def test_degenerate_frames_are_neither_matched_nor_stored(encoder):
    seq = make_sequence()
    rng = np.random.default_rng(0)
    det = _detector(encoder, geometric_verification=True)
    for i in range(3):
        det.process(seq.frames[i], int(seq.stamps_ns[i]), pose=seq.pose(i))
    before = (len(det.place_map), det.counters['frames'], det.counters['keyframes'])
    last = int(seq.stamps_ns[2])
    for k, kind in enumerate(['lens_cap', 'wall', 'lens_cap']):
        r = det.process(_blank(kind, rng), last + (k + 10) * S)  # no pose: would be keyframes
        assert r.keyframe_reason.startswith('degenerate: ') and not r.is_keyframe
        assert r.query_id == -1 and r.candidates == []
    assert (len(det.place_map), det.counters['frames'], det.counters['keyframes']) == before
    assert det.counters['degenerate'] == 3
    assert det.degenerate_reasons == {'underexposed': 2, 'low_contrast': 1}
    # they left no stamp behind: the next real frame is not "out of order"
    r = det.process(seq.frames[3], int(seq.stamps_ns[3]), pose=seq.pose(3))
    assert not r.keyframe_reason.startswith(('degenerate', 'skipped'))
    assert det.counters['frames'] == before[1] + 1
    # with the gate off, a blank frame is embedded and may become a keyframe (the old behaviour)
    off = _detector(encoder, degenerate_gate=False, geometric_verification=False)
    r = off.process(_blank('wall', rng), S)
    assert r.is_keyframe and len(off.place_map) == 1


def _sim_frames():
    """Day loop of the demo's simulated set: frames, stamps, camera poses, intrinsics."""
    files, stamps, poses, k = sim_day_loop()
    return files, stamps, poses, Intrinsics(k['fx'], k['fy'], k['cx'], k['cy'])


def test_relative_pose_of_verified_loops_on_the_simulated_garden(encoder):
    """Rotation and translation direction of verified candidates against the known poses."""
    from vpr_ros.core.fov import fov_overlap, yaw_from_quaternion
    files, stamps, poses, cam = _sim_frames()
    yaw = yaw_from_quaternion(poses[:, 3:])
    det = _detector(encoder, geometric_verification=True)
    det.set_intrinsics(cam)
    rot, dirs, n_false = [], [], 0
    # the start of the loop and its revisit at the end (every 2nd frame, original stamps)
    for i in list(range(0, 100, 2)) + list(range(220, len(files), 2)):
        img = cv2.cvtColor(cv2.imread(files[i]), cv2.COLOR_BGR2RGB)
        r = det.process(img, stamps[i], 'rgb8', Pose.from_vector(stamps[i], poses[i]))
        for c in r.candidates:
            rp = c.relative_pose
            assert rp is not None and rp.ok and 0 < rp.inliers <= c.inliers
            j = stamps.index(c.match_stamp_ns)
            if fov_overlap(poses[i, :2], yaw[i], poses[j, :2], yaw[j]) <= 0.5:
                n_false += 1  # not the same place by psi: its pose means nothing
                continue
            q_true, t_true = relative_from_poses(poses[i], poses[j])
            rot.append(rotation_error_deg(rp.quaternion, q_true))
            if np.linalg.norm(t_true) > 0.5:
                dirs.append(direction_error_deg(rp.translation, t_true))
    print(f'{len(rot)} verified true loops (psi > 0.5), {n_false} other candidates: rotation '
          f'error median {np.median(rot):.2f} deg, p90 {np.percentile(rot, 90):.2f}, max '
          f'{np.max(rot):.2f}; translation direction (baseline > 0.5 m, {len(dirs)}): median '
          f'{np.median(dirs):.1f} deg, p90 {np.percentile(dirs, 90):.1f}')
    assert len(rot) >= 10 and det.counters['degenerate'] == 0
    assert np.median(rot) < 1.0 and np.percentile(rot, 90) < 2.0
    assert np.median(dirs) < 10.0
    # without intrinsics: verified the old way, no pose
    plain = _detector(encoder, geometric_verification=True)
    img = cv2.cvtColor(cv2.imread(files[0]), cv2.COLOR_BGR2RGB)
    assert plain.process(img, stamps[0]).candidates == []
    assert plain.intrinsics is None
