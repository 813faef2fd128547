"""
The node worker's batches, without a graph: queue, stamp order, refusals in place, one forward.

Real encoder, real map, real detector, real intake. The node (vpr_ros/ros/node.py, `_process`)
takes the waiting frames checked in stamp order (`FrameIntake.take`), embeds the accepted ones in
one forward (`Encoder.embed_frames`) and hands each descriptor to `LoopDetector.process`: every
frame must get the result it gets one by one (keyframes, candidates, scores), with each refused
frame reported in its place.
"""
import os
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from test_frame_intake import _image as _msg  # noqa: E402  (a duck-typed sensor_msgs/Image)

from vpr_ros.core.detector import DetectorConfig, LoopDetector  # noqa: E402
from vpr_ros.core.errors import ImageError  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.ros.frame_intake import Checked, DropOldestQueue, FrameIntake, Refused  # noqa: E402

S = 10**9


def test_queue_takes_waiting_frames_oldest_first_and_counts_drops() -> None:
    q = DropOldestQueue(4)
    assert [q.put(k) for k in range(6)] == [False] * 4 + [True] * 2
    assert q.dropped == 2 and len(q) == 4
    assert q.get_many(3, 0.01) == [2, 3, 4]  # the rest stays for the next batch
    assert q.get_many(3, 0.01) == [5] and q.get_many(3, 0.01) == []
    for k in range(4):
        q.put(k)
    assert q.resize(2) == 2 and q.dropped == 4 and q.get_many(8, 0.01) == [2, 3]
    q.put('a')
    assert q.put('b') is False and q.put('c') is True and q.dropped == 5  # holds 2 now
    assert q.resize(1) == 1 and q.get_many(1, 0.01) == ['c']
    with pytest.raises(ValueError):
        q.resize(0)
    q.close()
    assert q.get_many(4, 5.0) == []  # closed and empty: at once


class _Worker:
    """The node's `_process` without the node: intake, one forward, detector per frame."""

    def __init__(self, encoder, max_batch: int) -> None:
        self.encoder = encoder
        self.det = LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint),
                                DetectorConfig())
        self.intake = FrameIntake(1 << 22, stamp_window_s=0.0, max_batch=max_batch,
                                  use_poses=False)
        self.results: dict[int, object] = {}
        self.order: list[tuple[str, int]] = []
        self.batches = self.batched_frames = 0

    def run(self, msgs) -> None:
        for m in msgs:
            self.intake.queue.put((m, 0.0))
        batch = self.intake.take(len(msgs), 0.01)
        ok = [(i, c) for i, (_, c) in enumerate(batch) if isinstance(c, Checked)]
        descs = {}
        if len(ok) > 1:
            got = self.encoder.embed_frames([(c.image, c.encoding) for _, c in ok])
            descs = {i: d for (i, _), d in zip(ok, got) if d[0] is not None}
            self.batches += 1
            self.batched_frames += len(descs)
        for i, (item, c) in enumerate(batch):
            if not isinstance(c, Checked):
                assert isinstance(c, Refused), c
                self.order.append((c.key, c_stamp(item)))
                continue
            d, share = descs.get(i, (None, 0.0))
            self.results[c.stamp] = self.det.process(c.image, c.stamp, c.encoding,
                                                     descriptor=d, embed_s=share)
            self.order.append(('done', c.stamp))


def c_stamp(item) -> int:
    st = item[0].header.stamp
    return st.sec * S + st.nanosec


def _same(a, b) -> None:
    assert (a.query_id, a.is_keyframe, a.keyframe_reason) == \
        (b.query_id, b.is_keyframe, b.keyframe_reason)
    assert [(c.match_id, c.inliers) for c in a.candidates] == \
        [(c.match_id, c.inliers) for c in b.candidates]
    np.testing.assert_allclose([c.score for c in a.candidates],
                               [c.score for c in b.candidates], atol=1e-4)


def test_batches_give_each_frame_its_one_by_one_result(encoder, seq) -> None:
    stamps = [int(t) for t in seq.stamps_ns]
    msgs = [_msg(f, t) for f, t in zip(seq.frames, stamps)]
    tiny = len(msgs) // 2  # a refused frame inside a batch: reported in its place
    msgs[tiny] = _msg(np.zeros((4, 4, 3), np.uint8), stamps[tiny])
    alone, batched = _Worker(encoder, 1), _Worker(encoder, 8)
    for m in msgs:
        alone.run([m])
    rng = random.Random(0)
    accepted_per_batch, k = [], 0
    while k < len(msgs):
        n = rng.choice((1, 2, 3, 5))
        chunk = msgs[k:k + n]
        rng.shuffle(chunk)  # arrival order is not stamp order
        batched.run(chunk)
        accepted_per_batch.append(sum(1 for j in range(k, min(k + n, len(msgs)))
                                      if j != tiny))
        k += n
    assert batched.order == alone.order  # stamp order, the refusal in its place
    assert ('bad_image_data', stamps[tiny]) in batched.order
    assert sorted(batched.results) == sorted(alone.results) == \
        [t for t in stamps if t != stamps[tiny]]
    for t in alone.results:
        _same(batched.results[t], alone.results[t])
    assert sum(r.is_keyframe for r in alone.results.values()) > 3
    assert any(r.candidates for r in alone.results.values()), 'the revisit must match'
    multi = [n for n in accepted_per_batch if n > 1]  # a lone accepted frame: its own forward
    assert len(multi) > 3
    assert batched.batches == len(multi) and batched.batched_frames == sum(multi)
    assert alone.batches == 0 and alone.batched_frames == 0
    # a batched frame's core time includes its share of the batch forward
    assert all(r.t_embed_s > 1e-4 for r in batched.results.values())


def test_a_frame_the_batch_cannot_embed_gets_its_own_forward(encoder, seq) -> None:
    good = seq.frames[0]
    bad = np.zeros((20, 30), np.uint8)  # 2-D, declared rgb8: the encoder refuses it
    other = seq.frames[3][..., ::-1].copy()
    got = encoder.embed_frames([(good, 'rgb8'), (other, 'bgr8'), (bad, 'rgb8')])
    assert got[0][0] is None and got[2][0] is None  # the rgb8 forward failed as a whole
    np.testing.assert_allclose(got[1][0], encoder.embed_one(other, 'bgr8'), atol=1e-4)
    assert got[1][1] > 0
    with pytest.raises(ImageError):
        encoder.embed_one(bad)


def test_a_given_descriptor_is_what_the_detector_uses(encoder, seq) -> None:
    det = LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint), DetectorConfig())
    img, t = seq.frames[0], int(seq.stamps_ns[0])
    desc = encoder.embed_one(seq.frames[7])
    res = det.process(img, t, descriptor=desc, embed_s=0.25)
    assert res.is_keyframe and res.t_embed_s >= 0.25 and res.t_total_s >= 0.25
    # the map re-normalises what it stores
    np.testing.assert_allclose(det.place_map.descriptor(res.query_id), desc, atol=1e-6)


def test_live_verification_parameters_rebuild_the_verifier(encoder) -> None:
    from vpr_ros.ros.detector_config import apply_config
    from vpr_ros.ros.params import ParamError, Params
    det = LoopDetector(encoder, PlaceMap(encoder.dim, encoder.fingerprint), DetectorConfig())
    first = det.verifier
    assert first.max_side == 320
    apply_config(det, Params({'gv_first_only': True}).detector_config())
    assert det.verifier is first and det.config.gv_first_only  # read at every frame
    apply_config(det, Params({'gv_max_side': 640}).detector_config())
    assert det.verifier is not first and det.verifier.max_side == 640
    with pytest.raises(ParamError, match="'gv_max_side'"):
        Params({'gv_max_side': 16})
    with pytest.raises(ParamError, match="'max_batch'"):
        Params({'max_batch': 0})
