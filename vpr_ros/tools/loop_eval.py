"""
Score published loop closures against ground-truth poses, and draw the report a person reads.

A candidate (query stamp, match stamp) is correct when the two cameras' 2D field-of-view overlap
ψ (vpr_ros.core.fov, the same definition training uses) exceeds POSITIVE_PSI (0.5) at their
ground-truth poses. A query *could* close a loop when some earlier frame, outside the exclusion
window, is such a positive (found with vpr_ros.core.psi, the search labels use): recall is
counted over those queries.
"""
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.core.calibration import calibrate
from vpr_ros.core.fov import DEFAULT_FOV_DEG, DEFAULT_RADIUS_M, fov_overlap_many
from vpr_ros.core.metrics import average_precision, precision_recall_curve
from vpr_ros.core.pose_buffer import PoseBuffer
from vpr_ros.core.psi import overlap_pairs, planar, POSITIVE_PSI


@dataclass
class LoopEvaluation:
    """Everything the demo prints, writes as JSON and plots."""

    n_queries: int
    n_possible: int
    n_published: int
    n_best_correct: int
    precision_best: float
    precision_all: float
    recall: float
    average_precision: float
    pr_precision: list = field(default_factory=list)
    pr_recall: list = field(default_factory=list)
    pr_threshold: list = field(default_factory=list)
    # The lowest score threshold whose accepted best candidates keep precision >= target, and
    # the recall it keeps: what score_threshold this run suggests (None: no threshold did).
    target_precision: float = 0.95
    suggested_threshold: float | None = None
    recall_at_suggested: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class GroundTruth:
    """Ground-truth trajectory, interpolated at any stamp with the node's own pose buffer."""

    def __init__(self, stamps_ns: np.ndarray, poses: np.ndarray, max_gap_s: float = 2.0) -> None:
        order = np.argsort(stamps_ns)
        self.stamps_ns = np.asarray(stamps_ns, dtype=np.int64)[order]
        self.poses = np.asarray(poses, dtype=np.float64)[order]
        self._buffer = PoseBuffer(max_gap_s=max_gap_s, capacity=len(order) + 1)
        for stamp, pose in zip(self.stamps_ns, self.poses):
            self._buffer.add(int(stamp), pose[:3], pose[3:])

    def at(self, stamps_ns: np.ndarray) -> np.ndarray:
        """(N, 7) poses at the stamps; rows of NaN where the trajectory does not cover a stamp."""
        out = np.full((len(stamps_ns), 7), np.nan)
        for k, stamp in enumerate(stamps_ns):
            pose = self._buffer.pose_at(int(stamp))
            if pose is not None:
                out[k] = pose.vector()
        return out


def pair_psi(gt: GroundTruth, query_ns: np.ndarray, match_ns: np.ndarray,
             fov_deg: float = DEFAULT_FOV_DEG, radius: float = DEFAULT_RADIUS_M) -> np.ndarray:
    """ψ(query, match) at ground truth; NaN where either stamp has no ground truth."""
    if len(query_ns) == 0:
        return np.zeros(0)
    q, m = gt.at(query_ns), gt.at(match_ns)
    ok = ~(np.isnan(q).any(1) | np.isnan(m).any(1))
    psi = np.full(len(query_ns), np.nan)
    if ok.any():
        (q_xy, q_yaw), (m_xy, m_yaw) = planar(q[ok]), planar(m[ok])
        psi[ok] = fov_overlap_many(q_xy, q_yaw, m_xy, m_yaw, fov_deg, radius)
    return psi


def possible_loops(gt: GroundTruth, query_ns: np.ndarray, exclusion_s: float,
                   fov_deg: float = DEFAULT_FOV_DEG, radius: float = DEFAULT_RADIUS_M,
                   threshold: float = POSITIVE_PSI) -> np.ndarray:
    """Whether each query has an earlier ground-truth frame outside the window with ψ > τ."""
    query_ns = np.asarray(query_ns, dtype=np.int64)
    result = np.zeros(len(query_ns), dtype=bool)
    q = gt.at(query_ns)
    known = np.flatnonzero(~np.isnan(q).any(1))
    if len(known) == 0 or len(gt.poses) == 0:
        return result
    (q_xy, q_yaw), (g_xy, g_yaw) = planar(q[known]), planar(gt.poses)
    i, j, psi = overlap_pairs(q_xy, q_yaw, g_xy, g_yaw, fov_deg, radius)
    rows = known[i]
    earlier = gt.stamps_ns[j] < query_ns[rows] - int(exclusion_s * 1e9)
    result[rows[(psi > threshold) & earlier]] = True
    return result


def match_table(rows) -> np.ndarray:
    """
    /vpr/matches rows as a float (R, 5) array of the original columns (stamps, score, ids).

    The topic gained columns after the fifth (the contract in the README); scoring needs the
    first five, so readers of any width share this.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        rows = rows.reshape(-1, 5)
    if rows.shape[1] < 5:
        raise ValueError(f'/vpr/matches rows need 5 columns or more, got {rows.shape[1]}')
    return rows[:, :5]


def evaluate_loops(gt: GroundTruth, query_ns: np.ndarray, rows: np.ndarray, exclusion_s: float,
                   threshold: float = POSITIVE_PSI, fov_deg: float = DEFAULT_FOV_DEG,
                   radius: float = DEFAULT_RADIUS_M, target_precision: float = 0.95
                   ) -> tuple[LoopEvaluation, np.ndarray]:
    """
    Score the rows published on /vpr/matches against ground truth.

    `rows` is /vpr/matches as (R, C): query_stamp_s, match_stamp_s, score, match_id, query_id
    and the later columns, rows of one query best first. Returns the evaluation and ψ of every
    row.
    """
    rows = match_table(rows)
    to_ns = np.vectorize(lambda s: int(round(s * 1e9)), otypes=[np.int64])
    psi = pair_psi(gt, to_ns(rows[:, 0]) if len(rows) else np.zeros(0, np.int64),
                   to_ns(rows[:, 1]) if len(rows) else np.zeros(0, np.int64), fov_deg, radius)
    correct = np.nan_to_num(psi, nan=0.0) > threshold
    possible = possible_loops(gt, np.asarray(query_ns, dtype=np.int64), exclusion_s, fov_deg,
                              radius, threshold)
    # The best row of each query is the first one published for that query stamp.
    _, first = np.unique(rows[:, 0], return_index=True)
    best_correct = correct[first]
    query_stamps_s = np.asarray(query_ns, dtype=np.float64) / 1e9
    hit_stamps = set(np.round(rows[first][best_correct, 0], 6))
    recalled = np.array([round(s, 6) in hit_stamps for s in query_stamps_s]) & possible
    n_possible = int(possible.sum())
    pr_p, pr_r, pr_t = [], [], []
    ap = float('nan')
    suggested, recall_suggested = None, 0.0
    if len(first) and n_possible:
        # PR over the published best candidates, recall relative to every possible loop.
        prec, rec, thr = precision_recall_curve(rows[first, 2], best_correct)
        scale = best_correct.sum() / n_possible
        pr_p, pr_r, pr_t = prec.tolist(), (np.asarray(rec) * scale).tolist(), thr.tolist()
        ap = average_precision(rows[first, 2], best_correct) * float(scale)
        # The suggested threshold is the calibrated operating point (vpr_ros.core.calibration,
        # the mechanism of vpr-eval --loop and the model files): most recall at the target
        # precision, put midway to the next lower best-candidate score.
        index = {round(v, 6): k for k, v in enumerate(query_stamps_s)}
        scores, good = np.full(len(query_ns), np.nan), np.zeros(len(query_ns), bool)
        for r, ok in zip(rows[first], best_correct):
            k = index.get(round(r[0], 6))
            if k is not None:
                scores[k], good[k] = r[2], ok
        point = calibrate(scores, good, possible | good, target_precision=target_precision)
        if point.usable:
            suggested, recall_suggested = point.score_threshold, point.recall
    evaluation = LoopEvaluation(
        n_queries=len(query_ns), n_possible=n_possible, n_published=len(first),
        n_best_correct=int(best_correct.sum()),
        precision_best=float(best_correct.mean()) if len(first) else float('nan'),
        precision_all=float(correct.mean()) if len(rows) else float('nan'),
        recall=float(recalled.sum() / n_possible) if n_possible else float('nan'),
        average_precision=ap, pr_precision=pr_p, pr_recall=pr_r, pr_threshold=pr_t,
        target_precision=target_precision, suggested_threshold=suggested,
        recall_at_suggested=recall_suggested)
    return evaluation, psi


def plot_report(path: str, gt: GroundTruth, keyframe_xy: np.ndarray, rows: np.ndarray,
                psi: np.ndarray, evaluation: LoopEvaluation, title: str = 'vpr_ros demo',
                threshold: float = POSITIVE_PSI) -> None:
    """Trajectory with keyframes and true/false loop closures, beside the PR curve."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = match_table(rows)
    fig, (ax, ax_pr) = plt.subplots(1, 2, figsize=(14, 6.5),
                                    gridspec_kw={'width_ratios': [1.3, 1]})
    ax.plot(gt.poses[:, 0], gt.poses[:, 1], '-', color='0.75', lw=1, label='trajectory')
    if len(keyframe_xy):
        ax.plot(keyframe_xy[:, 0], keyframe_xy[:, 1], '.', color='tab:blue', ms=4,
                label=f'keyframes ({len(keyframe_xy)})')
    _, first = np.unique(rows[:, 0], return_index=True) if len(rows) else ([], [])
    to_ns = np.vectorize(lambda s: int(round(s * 1e9)), otypes=[np.int64])
    if len(first):
        q, m = gt.at(to_ns(rows[first, 0])), gt.at(to_ns(rows[first, 1]))
        good = np.nan_to_num(psi[first], nan=0.0) > threshold
        for sel, colour, name in ((good, 'tab:green', 'true'), (~good, 'tab:red', 'false')):
            for a, b in zip(q[sel], m[sel]):
                ax.plot([a[0], b[0]], [a[1], b[1]], '-', color=colour, lw=1.2, alpha=0.8)
            ax.plot([], [], '-', color=colour, label=f'{name} loop closures ({int(sel.sum())})')
    ax.set_aspect('equal')
    ax.set_xlabel('x [m]')
    ax.set_ylabel('y [m]')
    ax.set_title(title)
    ax.legend(loc='best', fontsize=8)
    if evaluation.pr_recall:
        ax_pr.plot(evaluation.pr_recall, evaluation.pr_precision, '-', color='tab:purple')
    ax_pr.set_xlim(0, 1)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.set_xlabel('recall (of queries that could close a loop)')
    ax_pr.set_ylabel('precision (best candidate per query)')
    ax_pr.set_title(f'P={evaluation.precision_best:.2f} R={evaluation.recall:.2f} '
                    f'AP={evaluation.average_precision:.2f}')
    ax_pr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
