"""
The loop detector's configuration: every field is one node parameter of the same name.

Kept apart from the detector so the node's parameter table, the evaluation and the benchmarks
can build and compare configurations without the detector's state. `rule()` is the decision
rule (vpr_ros/core/decision.py) these fields describe, `make_verifier()` the verifier.
"""
from dataclasses import dataclass
import math

import numpy as np

from vpr_ros.core.decision import DecisionRule
from vpr_ros.core.errors import VPRError
from vpr_ros.core.keyframe import (
    DEFAULT_INTERVAL_NO_POSE_S,
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_MIN_ANGLE_DEG,
    DEFAULT_MIN_DISTANCE_M,
    DEFAULT_NOVELTY_THRESHOLD,
    DEFAULT_RESET_BACK_S,
    DEFAULT_STILL_SIMILARITY,
)
from vpr_ros.core.verification import GeometricVerifier

# With the default ImageNet MobileNetV2 + GeM encoder all descriptors are non-negative (ReLU
# features), so even unrelated scenes have a cosine similarity of 0.55-0.77, while two views of
# one place score above 0.9 (measured on test/image_sequences.py). 0.8 separates the two;
# 0.5 would accept every frame. A fine-tuned (and whitened) model spreads scores more and may
# want a lower threshold.
DEFAULT_SCORE_THRESHOLD = 0.8


@dataclass
class DetectorConfig:
    """
    Detection parameters; each maps to one node parameter of the same name.

    `temporal_consistency` n > 1 accepts a candidate only when each of the previous n-1 queries
    had a candidate near it: within `temporal_tolerance_ids` keyframe ids or, when > 0,
    `temporal_tolerance_s` seconds of its stamp. `kf_*` are the KeyframePolicy thresholds;
    `reset_back_s` is how far a stamp must jump back to start a new sequence. The defaults are
    what the node ships (config/vpr.yaml): its parameter table reads them from here.
    """

    top_k: int = 5
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    exclusion_s: float = 30.0
    exclusion_n: int = 0
    temporal_consistency: int = 0
    temporal_tolerance_ids: int = 5
    temporal_tolerance_s: float = 0.0
    # On, as the node ships it: on the demo garden it took the precision of published loop
    # closures from 0.33 to 0.96 at the same recall, for ~7 ms more per frame.
    geometric_verification: bool = True
    gv_feature: str = 'orb'
    gv_n_features: int = 500
    gv_ratio: float = 0.8
    gv_min_inliers: int = 15
    # Measured in vpr_ros/core/verification.py's docstring (look-alikes vs true revisits).
    gv_min_inlier_ratio: float = 0.5
    gv_min_spread: float = 0.2
    # Frames with nothing in them are neither matched nor stored (vpr_ros/core/degenerate.py:
    # 0 of 222 real corridor and 0 of 545 simulated demo frames rejected).
    degenerate_gate: bool = True
    gv_ransac_threshold_px: float = 3.0
    gv_method: str = 'fundamental'
    gv_camera_matrix: list | None = None
    # Features are found on the frame shrunk to this longer side (0: full frame): ORB 500 at
    # 640x480 cost as much as the CNN; at 320x240 (where the ratio/spread defaults were
    # measured) a seventh of it (bench/bench_verify.py, issue 13).
    gv_max_side: int = 320
    # ... and smaller frames are enlarged to it (ORB finds little in 160x120: corridor true
    # pairs reaching 15 inliers went from 2 to 29 of 111, vpr_ros/core/verification.py).
    gv_min_side: int = 320
    # Local contrast equalised (CLAHE clip limit; 0: off) before features are found: dusk, fog
    # and snow frames verify where they did not (measured in verification.py's class doc).
    gv_clahe_clip: float = 0.0
    # Verify candidates best first and stop at the first accepted: /vpr/matches carries the best
    # accepted candidate only (the rule's `best_only`). On a revisiting route every frame has
    # about four candidates above the threshold; verifying them all took features and
    # verification from 5.0 to 12.8 ms a frame at one thread (bench/bench_core.py --passes 2);
    # the best row is the same either way. Off: every candidate above the threshold is
    # verified and listed (more loop factors per frame, most of them lower-ranked near-misses).
    gv_first_only: bool = True
    # Sequence evidence and distinctiveness (vpr_ros/core/sequence.py): when the single-frame
    # rule accepts nothing, the best-supported of `sequence_candidates` searched keyframes is
    # accepted at a margin of at least `confidence_threshold` (calibrated; its history aligned
    # by distance driven) or `confidence_threshold_time` (aligned by time: no poses), unless
    # verification vetoes it: it saw `gv_veto_matches` ratio-test matches or more and they
    # disagree.
    sequence_evidence: bool = True
    confidence_threshold: float = 0.1
    confidence_threshold_time: float = 0.3
    sequence_length_m: float = 10.0
    sequence_length_s: float = 15.0
    sequence_candidates: int = 20
    gv_veto_matches: int = 20
    # Verify every candidate any rule could use, whatever was accepted already: the evidence a
    # replay needs to be decided later at other thresholds (training/eval/loop_replay.py).
    record_evidence: bool = False
    kf_min_distance_m: float = DEFAULT_MIN_DISTANCE_M
    kf_min_angle_deg: float = DEFAULT_MIN_ANGLE_DEG
    kf_max_interval_s: float = DEFAULT_MAX_INTERVAL_S
    kf_novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD
    kf_interval_no_pose_s: float = DEFAULT_INTERVAL_NO_POSE_S
    kf_still_similarity: float = DEFAULT_STILL_SIMILARITY
    reset_back_s: float = DEFAULT_RESET_BACK_S

    def validate(self) -> None:
        """Raise VPRError naming the first bad field, so a bad config fails at start-up."""
        if not 0.0 <= self.gv_min_inlier_ratio <= 1.0 or not 0.0 <= self.gv_min_spread <= 1.0:
            raise VPRError('gv_min_inlier_ratio and gv_min_spread must be in [0, 1], got '
                           f'{self.gv_min_inlier_ratio}, {self.gv_min_spread}')
        if self.top_k < 1:
            raise VPRError(f'top_k must be >= 1, got {self.top_k}')
        if not -1.0 <= self.score_threshold <= 1.0:
            raise VPRError(f'score_threshold must be in [-1, 1], got {self.score_threshold}')
        if self.exclusion_s < 0 or self.exclusion_n < 0:
            raise VPRError('exclusion_s and exclusion_n must be >= 0')
        if self.temporal_consistency < 0:
            raise VPRError(f'temporal_consistency must be >= 0, got {self.temporal_consistency}')
        if self.temporal_tolerance_ids < 0 or self.temporal_tolerance_s < 0:
            raise VPRError('temporal_tolerance_ids and temporal_tolerance_s must be >= 0')
        if self.reset_back_s < 0:
            raise VPRError(f'reset_back_s must be >= 0, got {self.reset_back_s}')
        if not (math.isfinite(self.gv_clahe_clip) and self.gv_clahe_clip >= 0):
            raise VPRError(f'gv_clahe_clip must be >= 0 (0: off), got {self.gv_clahe_clip}')
        if self.gv_max_side < 0 or 0 < self.gv_max_side < 32:
            raise VPRError(f'gv_max_side must be 0 or >= 32, got {self.gv_max_side}')
        if (self.sequence_length_m <= 0 or self.sequence_length_s <= 0
                or self.sequence_candidates < 1):
            raise VPRError('sequence_length_m, sequence_length_s must be > 0 and '
                           'sequence_candidates >= 1')

    def rule(self) -> DecisionRule:
        """Return the decision rule these fields describe (vpr_ros/core/decision.py)."""
        def margin(value: float) -> float | None:  # +inf: that kind of sequence is off
            on = self.sequence_evidence and float(value) != math.inf
            return float(value) if on else None
        return DecisionRule(float(self.score_threshold),
                            int(self.gv_min_inliers) if self.geometric_verification else None,
                            margin(self.confidence_threshold),
                            margin(self.confidence_threshold_time),
                            best_only=bool(self.gv_first_only))

    def make_verifier(self) -> GeometricVerifier:
        """
        Build the GeometricVerifier these gv_* fields describe.

        It accepts from one inlier: it judges the geometry (ratio, spread), and how many inliers
        make a loop is the decision rule's `gv_min_inliers` (the same accept/reject either way,
        so that a replay verified once can be decided at any calibrated inlier count).
        """
        K = None if self.gv_camera_matrix is None else np.asarray(
            self.gv_camera_matrix, dtype=np.float64).reshape(3, 3)
        return GeometricVerifier(self.gv_feature, self.gv_n_features, self.gv_ratio,
                                 1, self.gv_ransac_threshold_px,
                                 self.gv_method, K, min_inlier_ratio=self.gv_min_inlier_ratio,
                                 min_spread=self.gv_min_spread, max_side=self.gv_max_side,
                                 min_side=min(self.gv_min_side, self.gv_max_side or
                                              self.gv_min_side),
                                 clahe_clip=self.gv_clahe_clip)
