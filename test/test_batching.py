"""
The node worker's batches, without a graph: queue, stamp order, counts, drop accounting.

Real encoder, real map, real detector, real intake: a batch of queued frames must give every
frame the result it gets one by one (keyframes, candidates, scores), in stamp order, with each
refused frame reported in its place, while the descriptors come from one forward.
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
from vpr_ros.core.msg_convert import stamp_ns  # noqa: E402
from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.ros.batching import PrefetchEncoder, run_batch  # noqa: E402
from vpr_ros.ros.frame_intake import FrameIntake, Refused  # noqa: E402
from vpr_ros.ros.worker import DropOldestQueue  # noqa: E402

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
    """The node's check / finish / on_error around one detector, recording the order."""

    def __init__(self, encoder, batched: bool) -> None:
        self.prefetch = PrefetchEncoder(encoder)
        enc = self.prefetch if batched else encoder
        self.det = LoopDetector(enc, PlaceMap(encoder.dim, encoder.fingerprint),
                                DetectorConfig())
        self.intake = FrameIntake(1 << 22, stamp_window_s=0.0)
        self.results: dict[int, object] = {}
        self.order: list[tuple[str, int]] = []

    def check(self, item):
        return self.intake.check(item[0], lambda stamp: (None, ''))

    def finish(self, item, c) -> None:
        res = self.prefetch.charge(self.det.process(c.image, c.stamp, c.encoding), c.image)
        self.results[c.stamp] = res
        self.order.append(('done', c.stamp))

    def on_error(self, item, err) -> bool:
        assert isinstance(err, Refused), err
        self.order.append((err.key, stamp_ns(item[0].header)))
        return True

    def run(self, items) -> bool:
        return run_batch(items, lambda it: stamp_ns(it[0].header), self.check, self.finish,
                         self.on_error, self.prefetch)


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
    alone, batched = _Worker(encoder, False), _Worker(encoder, True)
    for m in msgs:
        assert alone.run([(m, 0.0)])
    rng = random.Random(0)
    accepted_per_batch, k = [], 0
    while k < len(msgs):
        n = rng.choice((1, 2, 3, 5))
        chunk = [(m, 0.0) for m in msgs[k:k + n]]
        rng.shuffle(chunk)  # arrival order is not stamp order
        assert batched.run(chunk)
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
    assert batched.prefetch.batches == len(multi)
    assert batched.prefetch.batched_frames == sum(multi)
    assert alone.prefetch.batches == 0 and alone.prefetch.batched_frames == 0
    # a batched frame's core time includes its share of the batch forward
    assert all(r.t_embed_s > 1e-4 for r in batched.results.values())


def test_a_frame_the_batch_cannot_embed_gets_its_own_forward(encoder, seq) -> None:
    pre = PrefetchEncoder(encoder)
    good = seq.frames[0]
    bad = np.zeros((20, 30), np.uint8)  # 2-D, declared rgb8: the encoder refuses it
    pre.prefetch([(good, 'rgb8'), (bad, 'rgb8')])
    assert pre.batches == 0  # the batch failed as a whole
    np.testing.assert_allclose(pre.embed_one(good), encoder.embed_one(good), atol=1e-5)
    with pytest.raises(ImageError):
        pre.embed_one(bad)
    assert pre.batched_frames == 0


def test_descriptors_are_served_by_identity_and_forgotten(encoder, seq) -> None:
    pre = PrefetchEncoder(encoder)
    a, b = seq.frames[0], seq.frames[5]
    pre.prefetch([(a, 'rgb8'), (b, 'rgb8')])
    assert pre.batches == 1
    copy = a.copy()  # same pixels, another image: its own forward
    np.testing.assert_allclose(pre.embed_one(copy), encoder.embed_one(a), atol=1e-5)
    assert pre.batched_frames == 0
    np.testing.assert_allclose(pre.embed_one(b), encoder.embed_one(b), atol=1e-4)
    assert pre.batched_frames == 1
    pre.clear()
    pre.embed_one(a)  # cleared: a forward of its own, not counted
    assert pre.batched_frames == 1 and pre.dim == encoder.dim


def test_on_error_false_stops_the_batch(encoder, seq) -> None:
    w = _Worker(encoder, True)
    msgs = [(_msg(np.zeros((4, 4, 3), np.uint8), (10 + k) * S), 0.0) for k in range(3)]
    seen = []
    assert not run_batch(msgs, lambda it: stamp_ns(it[0].header), w.check, w.finish,
                         lambda item, err: seen.append(err) or False, w.prefetch)
    assert len(seen) == 1


def test_live_verification_parameters_rebuild_the_verifier(encoder) -> None:
    from vpr_ros.ros.param_updates import apply_config
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
