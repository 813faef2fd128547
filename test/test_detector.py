"""LoopDetector end to end: real MobileNetV2 encoder, real FAISS map, real-photo sequences."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import make_sequence  # noqa: E402

from vpr_ros.core.detector import Candidate, DetectorConfig, FrameResult, LoopDetector  # noqa: E402
from vpr_ros.core.errors import ImageError, VPRError  # noqa: E402
from vpr_ros.core.verification import Features  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402

S = 1_000_000_000


@pytest.fixture(scope='module')
def glitch_seq():
    return make_sequence(glitch=True)


def _detector(encoder, **kw) -> LoopDetector:
    # These tests check the plain pipeline: verification only where a test asks for it (the
    # config's default is the node's, on).
    kw.setdefault('geometric_verification', False)
    return LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint), DetectorConfig(**kw))


def _run(det, seq, poses=True, n=None) -> list[FrameResult]:
    return [det.process(f, int(t), 'rgb8', seq.pose(i) if poses else None, frame_id='cam')
            for i, (f, t) in enumerate(zip(seq.frames[:n], seq.stamps_ns[:n]))]


def _correct(seq, i, cand: Candidate) -> bool:
    """Whether a candidate of frame i is a first-pass frame at the same place."""
    return i in seq.revisits and cand.match_stamp_ns in {int(seq.stamps_ns[j])
                                                         for j in seq.revisits[i]}


def _same_place(seq, i, cand: Candidate, min_overlap=0.01) -> bool:
    """Looser check for lower-ranked candidates: the two crops overlap at all (< 3.2 m apart)."""
    j = int(np.searchsorted(seq.stamps_ns, cand.match_stamp_ns))
    return seq.stamps_ns[j] == cand.match_stamp_ns and seq.overlap(i, j) >= min_overlap


def _check_revisit_found(seq, results, min_fraction=0.75):
    revisit = sorted(seq.revisits)
    hits = [i for i in revisit if results[i].candidates
            and _correct(seq, i, results[i].candidates[0])]
    assert len(hits) >= min_fraction * len(revisit), (hits, revisit)
    # every candidate of a revisit frame is at the same place, none elsewhere is accepted
    for i, r in enumerate(results):
        for c in r.candidates:
            assert _same_place(seq, i, c), (i, c)
    return hits


def test_finds_revisit_outside_exclusion(encoder, seq):
    det = _detector(encoder)
    results = _run(det, seq)
    hits = _check_revisit_found(seq, results)
    for r in results:
        scores = [c.score for c in r.candidates]
        assert scores == sorted(scores, reverse=True)
        for c in r.candidates:
            assert abs(c.match_stamp_ns - r.stamp_ns) > 30 * S
            assert c.score >= det.config.score_threshold and c.inliers == -1
            assert c.match_pose is not None  # the map stored the keyframe's pose
            assert np.linalg.norm(c.match_pose.position - r.pose.position) < 3.2
    # keyframes come from the pose policy (0.4 m per frame, 1 m threshold), added after search
    kf = [r for r in results if r.is_keyframe]
    assert results[0].keyframe_reason == 'first'
    assert {r.keyframe_reason for r in kf[1:]} <= {'distance', 'angle', 'interval'}
    assert len(det.place_map) == len(kf) and len(seq) / 4 < len(kf) < len(seq) / 2
    assert [r.query_id for r in kf] == [rec.id for rec in det.place_map.records()]
    assert all(r.query_id == -1 for r in results if not r.is_keyframe)
    assert all(r.t_total_s >= r.t_embed_s > 0 for r in results)
    assert det.counters['frames'] == len(seq) and len(hits) >= 9


def test_exclusion_window_matters(encoder, seq):
    # Without exclusion, consecutive frames (same place, seconds apart) match each other: the
    # window is what keeps the robot's own recent past out of the candidates.
    n = len(seq.first_pass)
    det = _detector(encoder, exclusion_s=0.0)
    results = _run(det, seq, n=n)
    recent = [(r.stamp_ns - c.match_stamp_ns) / S for r in results for c in r.candidates
              if r.stamp_ns - c.match_stamp_ns <= 30 * S]
    assert len(recent) > 20
    det = _detector(encoder, exclusion_s=0.0, exclusion_n=3)
    for r in _run(det, seq, n=n):
        if r.candidates:
            newest = [rec.id for rec in det.place_map.records()][-3 - int(r.is_keyframe):]
            newest = newest[:3]
            assert not {c.match_id for c in r.candidates} & set(newest)


def test_temporal_consistency_suppresses_isolated_match(encoder, glitch_seq):
    g = glitch_seq.glitch_index
    plain = _run(_detector(encoder), glitch_seq)
    # the glitch frame shows a first-pass place: a single-frame false loop closure
    assert plain[g].candidates
    far = abs(plain[g].candidates[0].match_pose.position - plain[g].pose.position)
    assert np.linalg.norm(far) > 3.0
    det = _detector(encoder, temporal_consistency=3, temporal_tolerance_ids=2)
    tc = _run(det, glitch_seq)
    assert not tc[g].candidates
    assert det.counters['rejected_temporal'] >= 1
    # the real revisit lasts many frames, so it survives (from its third frame on)
    revisit = sorted(glitch_seq.revisits)
    found = [i for i in revisit if tc[i].candidates]
    assert len(found) >= len(revisit) - 4
    assert all(_same_place(glitch_seq, i, c) for i in found for c in tc[i].candidates)
    assert not tc[revisit[0]].candidates and not tc[revisit[1]].candidates


def test_geometric_verification(encoder, seq):
    # A threshold of 0 lets every top-k keyframe through retrieval; verification must then
    # reject the wrong places and keep the revisit (every candidate listed and verified, not
    # only the best: gv_first_only off).
    loose = _run(_detector(encoder, score_threshold=0.0, gv_first_only=False), seq)
    wrong = sum(not _same_place(seq, i, c) for i, r in enumerate(loose) for c in r.candidates)
    assert wrong > 50
    det = _detector(encoder, score_threshold=0.0, geometric_verification=True,
                    gv_first_only=False)
    results = _run(det, seq)
    _check_revisit_found(seq, results)
    for r in results:
        for c in r.candidates:
            assert c.inliers >= det.config.gv_min_inliers
    assert det.counters['rejected_geometric'] > 50
    kf_id = results[0].query_id
    feats = Features.from_bytes(det.place_map.blob(kf_id))
    assert len(feats) > 100 and feats.image_size == (240, 320)


def test_without_poses_novelty_keyframes(encoder, seq):
    # frames 1 s apart: the pose-less interval (1 s) would key every one; novelty alone here
    det = _detector(encoder, kf_interval_no_pose_s=0.0)
    results = _run(det, seq, poses=False)
    kf = [r for r in results if r.is_keyframe]
    reasons = {r.keyframe_reason for r in kf}
    assert reasons <= {'first', 'novelty', 'interval'} and 'novelty' in reasons
    assert 3 < len(kf) < len(seq)
    assert all(r.pose is None for r in results)
    hits = [i for i in seq.revisits if results[i].candidates
            and _correct(seq, i, results[i].candidates[0])]
    assert len(hits) >= len(seq.revisits) // 2
    for i, r in enumerate(results):
        assert i in seq.revisits or not r.candidates
        assert all(c.match_pose is None for c in r.candidates)
    # at the default every second is a keyframe without a pose (sequence alignment by time)
    every = [r for r in _run(_detector(encoder), seq, poses=False) if r.is_keyframe]
    assert len(every) == len(seq) and {r.keyframe_reason for r in every} <= {'first', 'interval',
                                                                              'novelty'}


def test_without_poses_a_still_camera_keys_at_the_long_interval(encoder, seq):
    """One view for 21 s without odometry: a keyframe every 5 s, not every second."""
    rng = np.random.default_rng(0)
    frame = seq.frames[3].astype(np.float32)

    def noisy() -> np.ndarray:  # a still camera: the same view under fresh sensor noise
        return np.clip(frame + rng.normal(0.0, 2.0, frame.shape), 0, 255).astype(np.uint8)
    det = _detector(encoder)
    results = [det.process(noisy(), k * S, 'rgb8') for k in range(21)]
    assert [k for k, r in enumerate(results) if r.is_keyframe] == [0, 5, 10, 15, 20]
    assert {r.keyframe_reason for r in results if r.is_keyframe} == {'first', 'interval'}
    # with the guard off the camera keys every second again
    off = _detector(encoder, kf_still_similarity=0.0)
    assert sum(off.process(noisy(), k * S, 'rgb8').is_keyframe for k in range(6)) == 6


def test_stamps_going_backwards(encoder, seq):
    det = _detector(encoder, exclusion_s=5.0)
    f = seq.frames
    base = 1000 * S
    for k in range(6):
        det.process(f[k], base + k * S)
    n_map = len(det.place_map)
    # jitter: slightly older than the previous frame -> skipped, counted, nothing stored
    r = det.process(f[6], base + 5 * S - S // 2)
    assert r.keyframe_reason == 'skipped_out_of_order' and not r.is_keyframe
    assert r.query_id == -1 and not r.candidates
    assert det.counters['skipped_out_of_order'] == 1 and len(det.place_map) == n_map
    # a big jump back (a bag restarting): new sequence, the frame becomes a keyframe
    r = det.process(f[0], 10 * S)
    assert r.is_keyframe and r.keyframe_reason == 'time_reset'
    assert det.counters['time_reset'] == 1
    for k in range(1, 10):
        r = det.process(f[k], (10 + k) * S)
        for c in r.candidates:
            assert c.match_stamp_ns >= base  # only the old sequence, never its own recent past
    assert det.counters['frames'] == 16


def test_bad_images_leave_state_consistent(encoder, seq):
    det = _detector(encoder, geometric_verification=True)
    det.process(seq.frames[0], 1 * S)
    before = (dict(det.counters), len(det.place_map))
    bad = [np.zeros((0, 0, 3), np.uint8), np.zeros((240, 320, 2), np.uint8),
           np.zeros((240, 320, 3), np.float32), np.zeros((240, 320), np.uint8)]
    for k, img in enumerate(bad):
        with pytest.raises(ImageError):
            det.process(img, (100 + k) * S)  # later stamps: must not be remembered
    with pytest.raises(ImageError):
        det.process(seq.frames[1], 2 * S, encoding='yuv422')
    assert (det.counters, len(det.place_map)) == before
    r = det.process(seq.frames[1], 2 * S)  # earlier than the bad frames' stamps: fine
    assert r.keyframe_reason != 'skipped_out_of_order' and det.counters['frames'] == 2


def test_reset_and_config_validation(encoder, seq):
    det = _detector(encoder)
    det.process(seq.frames[0], S)
    det.place_map.reset()
    det.reset()
    r = det.process(seq.frames[1], 2 * S)
    assert r.is_keyframe and r.keyframe_reason == 'first'
    for kw in [dict(top_k=0), dict(score_threshold=1.5), dict(exclusion_s=-1),
               dict(temporal_consistency=-1), dict(temporal_tolerance_ids=-1)]:
        with pytest.raises(VPRError):
            _detector(encoder, **kw)
    with pytest.raises(VPRError):
        _detector(encoder, geometric_verification=True, gv_method='essential')
