"""
Verification cost (issue 13): features on a shrunk frame, computed only when needed, first-only.

Real photos (test/image_sequences.py) upscaled to 640x480, the node's frame size, a real
encoder and a real map: the checks are on what the detector and verifier do, counted, not on
time (the bench measures time: bench/bench_core.py, bench/bench_verify.py).
"""
import os
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from vpr_ros.core.detector import DetectorConfig, LoopDetector  # noqa: E402
from vpr_ros.core.errors import VPRError  # noqa: E402
from vpr_ros.core.verification import GeometricVerifier  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402

S = 1_000_000_000


def _big(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (640, 480), interpolation=cv2.INTER_LINEAR)


def test_max_side_features_are_the_shrunk_frames_in_full_pixels(seq):
    img = _big(seq.frames[3])
    capped = GeometricVerifier(max_side=320).extract(img)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (320, 240), interpolation=cv2.INTER_AREA)
    ref = GeometricVerifier().extract(small)
    assert capped.image_size == (480, 640)
    assert len(capped) == len(ref) > 100
    np.testing.assert_allclose(capped.keypoints, (ref.keypoints + 0.5) * 2 - 0.5, atol=1e-4)
    np.testing.assert_array_equal(capped.descriptors, ref.descriptors)
    # A frame already under the cap is left as it is.
    assert len(GeometricVerifier(max_side=320).extract(seq.frames[3])) == len(
        GeometricVerifier().extract(seq.frames[3]))
    with pytest.raises(VPRError):
        GeometricVerifier(max_side=8)
    with pytest.raises(VPRError):
        DetectorConfig(gv_max_side=-1).validate()


def test_capped_verification_keeps_the_decision(seq):
    """Revisit pairs at 640x480 verify with the cap as without; unrelated pairs fail both."""
    full, capped = GeometricVerifier(), GeometricVerifier(max_side=320)
    i, j = next(iter(seq.revisit_of.items()))
    far = (j + len(seq) // 2) % len(seq)
    for ver in (full, capped):
        fi, fj, ff = (ver.extract(_big(seq.frames[x])) for x in (i, j, far))
        assert ver.verify(fi, fj).ok
        assert not ver.verify(fi, ff).ok


def _counting(det: LoopDetector) -> dict:
    calls = {'extract': 0, 'verify': 0}
    ext, ver = det.verifier.extract, det.verifier.verify

    def extract(*a, **kw):
        calls['extract'] += 1
        return ext(*a, **kw)

    def verify(*a, **kw):
        calls['verify'] += 1
        return ver(*a, **kw)

    det.verifier.extract, det.verifier.verify = extract, verify
    return calls


def test_features_only_for_keyframes_and_candidates(encoder, seq):
    """A frame that is neither a keyframe nor has a candidate costs no feature work."""
    det = LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint),
                       DetectorConfig(kf_max_interval_s=0.0, kf_novelty_threshold=0.0))
    calls = _counting(det)
    frame = _big(seq.frames[0])
    r0 = det.process(frame, 100 * S, pose=seq.pose(0))
    assert r0.is_keyframe and calls == {'extract': 1, 'verify': 0}
    # Same pose, 1 s later: no keyframe (distance/angle), the only keyframe is excluded.
    r1 = det.process(frame, 101 * S, pose=seq.pose(0))
    assert not r1.is_keyframe and not r1.candidates
    assert calls == {'extract': 1, 'verify': 0}


def _revisit_map(encoder, seq, first_only: bool):
    """Build a detector whose map holds the first pass; return it and a revisit frame index."""
    det = LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint),
                       DetectorConfig(gv_first_only=first_only, score_threshold=0.5,
                                      kf_min_distance_m=0.01))
    i = max(seq.revisit_of)
    for k in range(seq.revisit_of[i] + 3):
        det.process(_big(seq.frames[k]), int(seq.stamps_ns[k]), pose=seq.pose(k))
    return det, i


def test_first_only_stops_at_the_first_accepted(encoder, seq):
    results = {}
    for first_only in (False, True):
        det, i = _revisit_map(encoder, seq, first_only)
        calls = _counting(det)
        # Far in time: nothing excluded; the first-pass frames of this place are candidates.
        r = det.process(_big(seq.frames[i]), int(seq.stamps_ns[i]) + 1000 * S, pose=seq.pose(i))
        results[first_only] = (r, dict(calls))
    r_all, c_all = results[False]
    r_one, c_one = results[True]
    assert len(r_all.candidates) >= 2 and c_all['verify'] >= len(r_all.candidates)
    assert len(r_one.candidates) == 1 and c_one['verify'] == 1
    # The one kept is the best-scoring verified candidate of the full run.
    assert r_one.candidates[0].match_id == r_all.candidates[0].match_id
    assert r_one.candidates[0].inliers >= 15
