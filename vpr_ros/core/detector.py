"""
Loop-closure detection on a stream of frames: the core the node's worker thread calls.

One `LoopDetector.process` call per frame: embed (or take the descriptor a batch computed) →
search the map (temporal exclusion window) and the prior maps → evidence per candidate
(temporal consistency, sequence support and margin: vpr_ros/core/sequence.py, geometric
verification where the rule could accept) → `decide` (vpr_ros/core/decision.py, the one rule
that evaluation and calibration call too) → keyframe decision → add the keyframe to the map.
The add comes last so a frame can never match itself or the frames just before it. Before all
of it, the degenerate-frame gate (`vpr_ros.core.degenerate`: lens cap, blank wall,
over/under-exposed, blurred) drops frames with nothing in them: neither matched nor stored,
counted ('degenerate' and per reason).
With intrinsics (`set_intrinsics`, e.g. from camera_info) verification uses the essential
matrix and each verified candidate carries its relative pose (metric with a depth image).
The detector holds no ROS types, so the node, bag tools and tests share it, and it adds almost
nothing to the encoder's own time (see bench/bench_core.py): local features are only computed
when verification is on.
"""
from collections import deque
from dataclasses import dataclass, field, replace
import logging
import time

import numpy as np

from vpr_ros.core.decision import (
    accepts,
    Candidate,
    decide,
    DecisionRule,
    frame_worth,
    worth_verifying,
)
from vpr_ros.core.degenerate import DegenerateGate, reason_key
from vpr_ros.core.errors import VPRError
from vpr_ros.core.keyframe import KeyframePolicy
from vpr_ros.core.loop_config import DetectorConfig
from vpr_ros.core.pose_buffer import Pose
from vpr_ros.core.relative_pose import Intrinsics
from vpr_ros.core.sequence import SequenceConfig, SequenceEvidence
from vpr_ros.core.verification import Features

_LOG = logging.getLogger(__name__)

REASON_SKIPPED_OLD = 'skipped_out_of_order'
COUNTER_KEYS = ('frames', 'keyframes', 'time_reset', 'skipped_out_of_order',
                'rejected_temporal', 'rejected_geometric', 'missing_features',
                'bad_features', 'degenerate')

@dataclass(frozen=True)
class FrameResult:
    """What one frame produced; timings in seconds for diagnostics and the benchmark."""

    stamp_ns: int
    query_id: int
    is_keyframe: bool
    keyframe_reason: str
    candidates: list[Candidate] = field(default_factory=list)
    pose: Pose | None = None
    t_embed_s: float = 0.0
    t_total_s: float = 0.0
    t_search_s: float = 0.0
    t_verify_s: float = 0.0
    t_add_s: float = 0.0
    # Every candidate the search returned, with its evidence (accepted or not), best first:
    # what the loop evaluation and calibration decide on (vpr_ros/core/decision.py).
    considered: list[Candidate] = field(default_factory=list)


def _record_pose(record) -> Pose | None:
    """Pose of a map record, None when it was stored without one (NaN vector)."""
    v = getattr(record, 'pose', None)
    if v is None:
        return None
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (7,) or not np.all(np.isfinite(v)):
        return None
    try:
        return Pose.from_vector(record.stamp_ns, v)
    except VPRError:
        return None


class LoopDetector:
    """
    Frame-by-frame place recognition against a growing PlaceMap.

    Not thread-safe: the node calls `process` from its single worker thread. A frame whose
    image the encoder refuses (ImageError) propagates the error and changes no state.
    """

    def __init__(self, encoder, place_map, config: DetectorConfig | None = None,
                 priors=None) -> None:
        self.config = config if config is not None else DetectorConfig()
        self.config.validate()
        self.encoder = encoder
        self.place_map = place_map
        c = self.config
        self.policy = KeyframePolicy(c.kf_min_distance_m, c.kf_min_angle_deg,
                                     c.kf_max_interval_s, c.kf_novelty_threshold,
                                     reset_back_s=c.reset_back_s,
                                     interval_no_pose_s=c.kf_interval_no_pose_s,
                                     still_similarity=c.kf_still_similarity)
        self.verifier = c.make_verifier() if c.geometric_verification else None
        self.gate = DegenerateGate() if c.degenerate_gate else None
        self.intrinsics: Intrinsics | None = None
        self.degenerate_reasons: dict[str, int] = {}
        self._depth: np.ndarray | None = None
        self.counters: dict[str, int] = {k: 0 for k in COUNTER_KEYS}
        self._tol_ns = int(c.temporal_tolerance_s * 1e9)
        self._reset_back_ns = int(c.reset_back_s * 1e9)
        self._history: deque = deque(maxlen=max(c.temporal_consistency - 1, 1))
        self._last_stamp_ns: int | None = None
        self._last_kf_desc: np.ndarray | None = None
        # Other maps searched read-only beside this one (vpr_ros/map/prior_maps.py): their
        # candidates go through the single-frame rule (no sequence evidence across maps).
        self.priors = priors
        self._prior_matches: dict[tuple[int, int], object] = {}
        self.sequence = SequenceEvidence(place_map, SequenceConfig(
            length_m=c.sequence_length_m, length_s=c.sequence_length_s,
            candidates=c.sequence_candidates))

    def set_intrinsics(self, intrinsics: Intrinsics | None) -> None:
        """Camera intrinsics for verification (essential matrix, relative pose); None: off."""
        self.intrinsics = intrinsics

    def _begin_frame(self, stamp_ns: int, image: np.ndarray, encoding: str,
                     depth: np.ndarray | None) -> tuple[str | None, bool]:
        """
        Decide whether a frame is skipped (late or degenerate, counted) and if it starts anew.

        Returns (reason to skip or None, new sequence). An image the core cannot read raises
        ImageError before any state changes.
        """
        new_sequence = False
        if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
            if self._last_stamp_ns - stamp_ns <= self._reset_back_ns:
                self._count(REASON_SKIPPED_OLD, f'frame stamp {stamp_ns} older than the '
                            f'previous {self._last_stamp_ns}, skipped')
                return REASON_SKIPPED_OLD, False
            new_sequence = True
        reason = self.gate(image, encoding) if self.gate is not None else None
        if reason:
            key = reason_key(reason)
            self.degenerate_reasons[key] = self.degenerate_reasons.get(key, 0) + 1
            self._count('degenerate', f'degenerate frame, not matched or stored: {reason}')
            return f'degenerate: {reason}', False
        self._depth = depth
        return None, new_sequence

    def reset(self) -> None:
        """Forget sequence state (after the map is reset): next frame is a first keyframe."""
        self.policy.reset()
        self._history.clear()
        self._last_stamp_ns = None
        self._last_kf_desc = None
        self.sequence.reset()

    def _count(self, key: str, detail: str) -> None:
        self.counters[key] += 1
        n = self.counters[key]
        if n == 1 or n % 100 == 0:
            _LOG.warning('loop detector: %s (%s, %d so far)', detail, key, n)

    def _near(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        """Whether two matches (id, stamp_ns) point at neighbouring keyframes."""
        if abs(a[0] - b[0]) <= self.config.temporal_tolerance_ids:
            return True
        return self._tol_ns > 0 and abs(a[1] - b[1]) <= self._tol_ns

    def _consistent(self, key: tuple[int, int]) -> bool:
        n = self.config.temporal_consistency
        if len(self._history) < n - 1:
            return False
        return all(any(self._near(key, prev) for prev in q) for q in self._history)

    def _verify(self, feats: Features, c: Candidate) -> Candidate:
        """Return `c` with its verification evidence (unverified: a bad or missing blob)."""
        try:
            blob = (self.place_map.blob(c.match_id) if not c.prior
                    else self.priors.blob(self._prior_matches[(c.prior, c.match_id)]))
            stored = None if blob is None else Features.from_bytes(blob)
        except (VPRError, ValueError) as err:  # a damaged map must not kill the frame
            self._count('bad_features', f'keyframe {c.match_id} has unreadable features: {err}')
            return c
        if stored is None:
            self._count('missing_features', f'keyframe {c.match_id} has no stored features')
            return c
        res = self.verifier.verify(feats, stored, self.intrinsics, self._depth)
        seen = res.inliers / res.inlier_ratio if res.inlier_ratio > 0 else 0.0
        return replace(c, inliers=int(res.inliers), verified=bool(res.ok),
                       relative_pose=res.pose if res.ok else None,
                       veto=not res.ok and seen >= self.config.gv_veto_matches)

    def _candidates(self, desc: np.ndarray, stamp_ns: int, pose: Pose | None, matches: list,
                    rule: DecisionRule) -> list[Candidate]:
        """
        Make the top_k matches candidates, with sequence evidence when the rule uses it.

        The sequence evidence looks further (vpr_ros/core/sequence.py): its best-supported
        keyframe joins the candidates, outside the top_k as `in_top_k` False (only the sequence
        rule sees it).
        """
        c = self.config
        cands = [Candidate(int(m.id), int(m.record.stamp_ns), float(m.score), -1,
                           _record_pose(m.record), session=int(m.record.session))
                 for m in matches[:c.top_k]] + self._prior_candidates(desc)
        if not rule.sequence_on or not len(self.place_map):
            return cands

        def search(vector: np.ndarray, k: int) -> list[int]:
            return [int(m.id) for m in self.place_map.search(
                vector, k, query_stamp_ns=stamp_ns, exclusion_s=c.exclusion_s,
                exclusion_n=c.exclusion_n)]
        scored, best = self.sequence.evaluate(
            desc, stamp_ns, None if pose is None else pose.position,
            [int(m.id) for m in matches], c.exclusion_s, search)
        by_id = {x.kid: x for x in scored}
        cands = [replace(x, sequence=by_id[x.match_id].sequence if x.match_id in by_id
                         else None) for x in cands]
        if best is None:
            return cands
        for i, x in enumerate(cands):
            if x.match_id == best.kid:
                cands[i] = replace(x, margin=best.margin, aligned_by=best.aligned_by)
                return cands
        record = self.place_map.record(best.kid)
        score = float(np.dot(desc, self.sequence.descriptor(best.kid)))
        return cands + [Candidate(best.kid, int(record.stamp_ns), score, -1,
                                  _record_pose(record), sequence=best.sequence,
                                  margin=best.margin, aligned_by=best.aligned_by,
                                  in_top_k=False,
                                  session=int(record.session))]

    def _prior_candidates(self, desc: np.ndarray) -> list[Candidate]:
        """Return the top_k keyframes of the prior maps, numbered 1.. in their given order."""
        self._prior_matches = {}
        if self.priors is None:
            return []
        out = []
        for m in self.priors.search(desc, self.config.top_k):
            k = self.priors.names.index(m.map_name) + 1
            self._prior_matches[(k, int(m.id))] = m
            out.append(Candidate(int(m.id), int(m.stamp_ns), float(m.score), -1,
                                 _record_pose(m.record), prior=k, session=int(m.session)))
        return out

    def _gather(self, image: np.ndarray, encoding: str, cands: list[Candidate],
                is_keyframe: bool) -> tuple[list[Candidate], Features | None]:
        """
        Evidence for each candidate: temporal consistency, then verification where it can pay.

        Verification runs, best first, on the candidates whose score and consistency the rule
        accepts (the rest are rejected whatever their geometry); with `gv_first_only` it stops at
        the first accepted one. Only when none is accepted is the sequence rule's candidate
        verified (a veto, and its relative pose). Local features are computed once, when a
        candidate is verified or the frame is a keyframe (they are stored with it).
        """
        c = self.config
        rule = c.rule()
        if c.temporal_consistency > 1:
            above = [x for x in cands if x.in_top_k and x.score >= rule.score_threshold]
            cands = [replace(x, consistent=self._consistent((x.match_id, x.match_stamp_ns)))
                     for x in cands]
            self.counters['rejected_temporal'] += sum(
                1 for x in cands if x.score >= rule.score_threshold and not x.consistent)
            self._history.append([(x.match_id, x.match_stamp_ns) for x in above])
        worth = [i for i, x in enumerate(cands) if worth_verifying(x, rule)]
        feats = None
        if self.verifier is not None and (worth or is_keyframe):
            feats = self.verifier.extract(image, encoding)
        if feats is None:
            return cands, None
        framed = False
        # the single-frame rule's candidates first, best score first (own map and prior maps
        # together: the first accepted is the best one); the sequence rule's only if asked
        for i in sorted(worth, key=lambda i: (not frame_worth(cands[i], rule), -cands[i].score)):
            if framed and not c.record_evidence and not frame_worth(cands[i], rule):
                continue  # the single-frame rule accepted one: the sequence rule is not asked
            cands[i] = self._verify(feats, cands[i])
            if accepts(cands[i], rule):
                framed = True
                if c.gv_first_only and not c.record_evidence:
                    break
            elif cands[i].verified is not None and frame_worth(cands[i], rule):
                self.counters['rejected_geometric'] += 1
        return cands, feats

    def process(self, image: np.ndarray, stamp_ns: int, encoding: str = 'rgb8',
                pose: Pose | None = None, frame_id: str = '',
                depth: np.ndarray | None = None, descriptor: np.ndarray | None = None,
                embed_s: float = 0.0) -> FrameResult:
        """
        Run one frame through the pipeline; see the module docstring for the order.

        A stamp more than `reset_back_s` older than the previous frame's starts a new sequence
        (counted 'time_reset': temporal history cleared, the frame becomes a keyframe); a
        smaller step back is a late frame and is skipped without embedding (counted), as is a
        degenerate frame. `depth` (registered to `image`) makes relative poses metric.
        `descriptor`: the frame's descriptor when the caller already computed it (a batch of
        queued frames in one forward), with `embed_s` the share of that forward's time.
        """
        t0 = time.perf_counter()
        c = self.config
        stamp_ns = int(stamp_ns)
        skip, new_sequence = self._begin_frame(stamp_ns, image, encoding, depth)
        if skip:  # late or degenerate: counted, no other state changed
            return FrameResult(stamp_ns, -1, False, skip, [], pose, 0.0, time.perf_counter() - t0)

        if descriptor is None:
            desc = self.encoder.embed_one(image, encoding)  # ImageError: no state touched
        else:
            desc, t0 = np.asarray(descriptor, dtype=np.float32), t0 - float(embed_s)
        t1 = time.perf_counter()
        if new_sequence:
            self._count('time_reset', f'stamp jumped back to {stamp_ns} from '
                        f'{self._last_stamp_ns}: new sequence')
            self._history.clear()
            self.sequence.new_sequence()
        self._last_stamp_ns = stamp_ns
        self.counters['frames'] += 1

        # The temporal exclusion is the map's alone (one definition).
        rule = c.rule()
        k = max(c.top_k, c.sequence_candidates) if rule.sequence_on else c.top_k
        matches = self.place_map.search(desc, k, query_stamp_ns=stamp_ns,
                                        exclusion_s=c.exclusion_s, exclusion_n=c.exclusion_n)
        cands = self._candidates(desc, stamp_ns, pose, matches, rule)
        t2 = time.perf_counter()

        if pose is None and self._last_kf_desc is not None:
            similarity = float(np.dot(desc, self._last_kf_desc))
        else:
            similarity = None
        decision = self.policy.decide(stamp_ns, pose, similarity)
        considered, feats = self._gather(image, encoding, cands, decision.is_keyframe)
        candidates = decide(considered, rule)
        t3 = time.perf_counter()

        query_id = -1
        if decision.is_keyframe:
            record = self.place_map.add(desc, stamp_ns, pose=None if pose is None
                                        else pose.vector(), frame_id=frame_id,
                                        blob=None if feats is None else feats.to_bytes())
            query_id = int(record.id)
            self.policy.accept(stamp_ns, pose)
            self._last_kf_desc = desc
            self.counters['keyframes'] += 1
        self.sequence.observe(desc, stamp_ns, None if pose is None else pose.position,
                              query_id if decision.is_keyframe else None)
        t4 = time.perf_counter()
        return FrameResult(stamp_ns, query_id, decision.is_keyframe, decision.reason,
                           candidates, pose, t1 - t0, t4 - t0, t2 - t1, t3 - t2, t4 - t3,
                           considered)
