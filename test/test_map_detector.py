"""
Detector and map together: the temporal exclusion's one home, and garbage feature blobs.

The exclusion is the map's (the detector does not filter again); a garbage feature blob skips
that candidate's verification (counted) instead of killing the frame.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from vpr_ros.core.detector import DetectorConfig, LoopDetector  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402

S = 1_000_000_000


def test_exclusion_boundary_is_the_maps(encoder, seq) -> None:
    """
    Detector and map agree at the boundary: exactly exclusion_s away is excluded by both.

    They used to disagree (map `<`, detector `<=`): a direct map search returned a keyframe the
    detector then dropped. Now the map's rule is the only one and the detector adds none.
    """
    m = PlaceMap(encoder.dim, encoder.fingerprint)
    det = LoopDetector(encoder, m, DetectorConfig(exclusion_s=5.0, score_threshold=0.0,
                                                  geometric_verification=False))
    desc = encoder.embed_one(seq.frames[0], 'rgb8')
    outside = m.add(desc, 100 * S - 1)        # 5 s + 1 ns before the query: a candidate
    boundary = m.add(desc, 100 * S)           # exactly 5 s before: excluded
    inside = m.add(encoder.embed_one(seq.frames[1], 'rgb8'), 101 * S)
    direct = [x.id for x in m.search(desc, 5, 105 * S, exclusion_s=5.0)]
    r = det.process(seq.frames[0], 105 * S)
    ids = [c.match_id for c in r.candidates]
    assert ids == direct == [outside.id]
    assert boundary.id not in ids and inside.id not in ids


def test_garbage_feature_blob_skips_that_candidate(encoder, seq) -> None:
    m = PlaceMap(encoder.dim, encoder.fingerprint)
    # every candidate verified (not only until the first accepted), so each bad blob is read
    det = LoopDetector(encoder, m, DetectorConfig(score_threshold=0.0, exclusion_s=1.0,
                                                  geometric_verification=True,
                                                  gv_first_only=False))
    good = det.verifier.extract(seq.frames[0], 'rgb8').to_bytes()
    desc = encoder.embed_one(seq.frames[0], 'rgb8')
    for k, blob in enumerate([b'\x00garbage', good[:len(good) // 3], good, None,
                              b'\xff' * 4096]):
        m.add(desc, k * S, blob=blob)
    r = det.process(seq.frames[0], 1000 * S)  # must not raise
    assert det.counters['bad_features'] == 3 and det.counters['missing_features'] == 1
    assert [c.match_id for c in r.candidates] == [2] and r.candidates[0].inliers > 15
    assert det.counters['frames'] == 1
