"""
The loop decision: which of a frame's candidates are loop closures, from their evidence.

The detector gathers evidence for each candidate a search returned (its cosine score, whether
geometric verification found one consistent geometry and with how many inliers, whether the
recent queries agreed on the place); `decide` turns that evidence into the accepted candidates
under a `DecisionRule`. Everything that accepts or rejects a loop calls `decide`: the detector
(so the node and the demo), the loop evaluation (`vpr-eval --loop`, which replays frames through
the detector) and the calibration that fits the rule's thresholds (vpr_ros/core/calibration.py).
A change of the rule is therefore made once, here, and the calibrated point the node runs is
fitted by the code the node executes.

Verification is evidence, not a verdict on its own: the verifier says whether the matches obey
one epipolar geometry (ratio, spread) and how many inliers they have; how many inliers make a
loop is the rule's `min_inliers`, a calibrated number. So a replay that verified every candidate
once can be decided at any threshold pair exactly as the node would decide it.
"""
from dataclasses import dataclass, replace

from vpr_ros.core.pose_buffer import Pose
from vpr_ros.core.relative_pose import RelativePose


@dataclass(frozen=True)
class Candidate:
    """
    A map keyframe a query was matched to, with the evidence gathered for it.

    `inliers` is -1 and `verified` None when no verification ran (verification off, or the
    score was below the rule's threshold so it was not worth the cost). `verified` True means
    the matches obey one geometry (inlier ratio and spread); the inlier count is judged by the
    rule. `consistent` is False when temporal consistency is on and the recent queries did not
    match near this keyframe.
    """

    match_id: int
    match_stamp_ns: int
    score: float
    inliers: int
    match_pose: Pose | None
    # Query in the match camera's optical frame (vpr_ros/core/relative_pose.py); None when
    # verification is off or no intrinsics are known.
    relative_pose: RelativePose | None = None
    verified: bool | None = None
    consistent: bool = True
    # Sequence evidence (vpr_ros/core/sequence.py): the candidate's sequence score, and for the
    # best-supported candidate of the frame its margin over the best place elsewhere, and
    # how the query's history was aligned with the map: 'distance' (driven, from poses) or
    # 'time' (no poses). The two are different evidence with their own calibrated margin.
    sequence: float | None = None
    margin: float | None = None
    aligned_by: str = ''
    # Verification saw enough matches to judge and found them inconsistent: a veto.
    veto: bool = False
    # One of the search's top_k (the single-frame rule looks at these only).
    in_top_k: bool = True
    # Which rule accepted it: 'frame' (score and inliers) or 'sequence' (margin).
    accepted_by: str = ''
    # Where the keyframe is: 0 the node's own map, k >= 1 its k-th prior map; and its session.
    prior: int = 0
    session: int = -1


@dataclass(frozen=True)
class DecisionRule:
    """
    The thresholds a candidate must reach: cosine score and, with verification, inliers.

    `min_inliers` None: verification is not part of the rule (it is off). These are the two
    numbers an operating point calibrates (vpr_ros/core/calibration.py).
    """

    score_threshold: float
    min_inliers: int | None = None
    # Margin of sequence support a candidate needs when the single-frame rule accepts none,
    # for a history aligned by distance driven; None: no sequence rule.
    confidence_threshold: float | None = None
    # ... for a history aligned by time (no poses): frames spaced by time are weaker evidence
    # of the place than frames spaced by distance (a speed change shifts them), so it gets a
    # margin of its own (the built-in point: 0.177, set by a look-alike stretch of the real
    # corridor; 0.116 with poses). None: no sequence rule without poses.
    confidence_threshold_time: float | None = None
    # Only the best candidate the single-frame rule accepts (`gv_first_only`, the default): the
    # one a back-end needs, and a frame then verifies candidates only until one is accepted.
    best_only: bool = False

    @property
    def sequence_on(self) -> bool:
        """Whether the sequence rule can accept anything (sequence evidence worth gathering)."""
        return self.confidence_threshold is not None or self.confidence_threshold_time is not None

    def margin_needed(self, aligned_by: str) -> float | None:
        """Return the sequence rule's margin for a history aligned by `aligned_by` (None: off)."""
        return (self.confidence_threshold_time if aligned_by == 'time'
                else self.confidence_threshold)


def frame_worth(c: Candidate, rule: DecisionRule) -> bool:
    """Whether the single-frame rule accepts `c` if its geometry verifies."""
    return c.in_top_k and c.consistent and bool(c.score >= rule.score_threshold)


def worth_verifying(c: Candidate, rule: DecisionRule) -> bool:
    """Whether all but the geometry accepts `c`: only then is verification worth its cost."""
    return frame_worth(c, rule) or sequence_supported(c, rule)


def sequence_supported(c: Candidate, rule: DecisionRule) -> bool:
    """Whether the sequence rule accepts `c` unless verification vetoes it."""
    need = rule.margin_needed(c.aligned_by)
    return need is not None and c.margin is not None and c.margin >= need


def accepts(c: Candidate, rule: DecisionRule) -> bool:
    """Whether the single-frame rule accepts one candidate: score and verified inliers."""
    if not frame_worth(c, rule):
        return False
    return rule.min_inliers is None or (bool(c.verified) and c.inliers >= rule.min_inliers)


def decide(candidates, rule: DecisionRule) -> list[Candidate]:
    """
    Return the accepted candidates, best first, each marked with the rule that accepted it.

    The single-frame rule first (what the node has always accepted keeps being accepted;
    with `best_only` only the best-scoring of them);
    when it accepts none, the sequence rule: the best-supported candidate with a margin of at
    least `confidence_threshold`, unless verification vetoes it (it saw enough matches and
    they disagree). Where verification cannot see (night, blur: too few matches) the sequence
    and distinctiveness decide.
    """
    frame = [replace(c, accepted_by='frame') for c in candidates if accepts(c, rule)]
    if frame:
        return sorted(frame, key=lambda c: -c.score)[:1 if rule.best_only else None]
    return [replace(c, accepted_by='sequence') for c in candidates
            if sequence_supported(c, rule) and not c.veto]
