"""
The SLAM section's numbers and figure: trajectory errors per back-end, the loops, one PNG.

`evaluate` scores each back-end's final path against ground truth beside the odometry at the
same stamps (trajectory_error.py, evo), scores the node's loops as the demo does (ψ > 0.5 at
ground truth: loop_eval.py), and draws demo_slam.png: ground truth, odometry and the corrected
trajectory with the node's loops (true green, false red) on the left; the run with injected
false loops (dashed) on the right.
"""
import os

import numpy as np

from vpr_ros.tools.trajectory_error import poses_at, trajectory_errors


def _errors(gt_stamps, gt, odom_stamps, odom, path) -> dict:
    from vpr_ros.tools.slam_demo import path_arrays
    stamps, est = path_arrays(path)
    odom_at = poses_at(odom_stamps, odom, stamps)
    e_odom = trajectory_errors(gt_stamps, gt, stamps, odom_at)
    e_graph = trajectory_errors(gt_stamps, gt, stamps, est)
    return {'stamps': stamps, 'est': est, 'odom': odom_at, 'nodes': int(len(stamps)),
            'ate_odometry_m': e_odom['ate_m'], 'ate_m': e_graph['ate_m'],
            'rpe_odometry_m': e_odom['rpe_m'], 'rpe_m': e_graph['rpe_m']}


def evaluate(bag: str, gt_topic: str, odom_topic: str, paths: dict, rows: np.ndarray,
             status: np.ndarray, exclusion_s: float, injected: list, out: str) -> dict:
    """Return the `slam` summary (and write OUT/demo_slam.png)."""
    from vpr_ros.sim.writers import read_bag_poses
    from vpr_ros.tools.loop_eval import evaluate_loops, GroundTruth
    gt_stamps, gt = read_bag_poses(bag, gt_topic)
    odom_stamps, odom = read_bag_poses(bag, odom_topic)
    runs = {name: _errors(gt_stamps, gt, odom_stamps, odom, path)
            for name, path in paths.items() if len(path.poses) >= 3}
    truth = GroundTruth(gt_stamps, gt)
    query_ns = np.round(status[:, 0] * 1e9).astype(np.int64) if len(status) else np.zeros(0)
    evaluation, psi = evaluate_loops(truth, query_ns, rows, exclusion_s)
    base = runs.get('loops')
    summary = {
        'ate_odometry_m': base['ate_odometry_m'] if base else None,
        'ate_with_loops_m': base['ate_m'] if base else None,
        'rpe_odometry_m': base['rpe_odometry_m'] if base else None,
        'rpe_with_loops_m': base['rpe_m'] if base else None,
        'n_loop_factors': None, 'n_loop_rows': int(len(rows)),
        'ate_with_false_loops_m': runs['false_loops']['ate_m'] if 'false_loops' in runs else None,
        'n_false_loops': len(injected),
        'ate_position_only_m': (runs['position_only']['ate_m'] if 'position_only' in runs
                                else None),
        'loop_queries': evaluation.n_published, 'loop_precision': evaluation.precision_best,
        'loop_recall': evaluation.recall, 'loop_possible': evaluation.n_possible,
        'path_length_m': float(np.linalg.norm(np.diff(gt[:, :2], axis=0), axis=1).sum()),
        'ate_definition': 'RMSE of position after SE(3) Umeyama alignment (evo_ape -a), at the '
                          'graph nodes; RPE: translation over 10 m (evo_rpe -d 10 -u m)',
    }
    if base and summary['ate_odometry_m']:
        summary['ratio_with_loops'] = summary['ate_with_loops_m'] / summary['ate_odometry_m']
        if summary['ate_with_false_loops_m'] is not None:
            summary['ratio_with_false_loops'] = (summary['ate_with_false_loops_m']
                                                 / summary['ate_odometry_m'])
    png = os.path.join(out, '..', 'demo_slam.png')
    plot_slam(os.path.normpath(png), truth, gt, runs, rows, psi, injected, summary)
    summary['png'] = os.path.normpath(png)
    return summary


def plot_slam(path: str, truth, gt: np.ndarray, runs: dict, rows: np.ndarray, psi: np.ndarray,
              injected: list, summary: dict) -> None:
    """Ground truth, odometry, corrected paths, loops: two panels side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 7))
    left, right = axes
    for ax in axes:
        ax.plot(gt[:, 0], gt[:, 1], '-', color='0.2', lw=1.2, label='ground truth')
    if 'loops' in runs:
        r = runs['loops']
        left.plot(r['odom'][:, 0], r['odom'][:, 1], '-', color='tab:orange', lw=1,
                  label=f'odometry (ATE {r["ate_odometry_m"]:.2f} m)')
        _loops(left, truth, rows, psi)
        left.plot(r['est'][:, 0], r['est'][:, 1], '-', color='tab:blue', lw=1.2,
                  label=f'with the node\'s loops (ATE {r["ate_m"]:.2f} m)')
    if 'position_only' in runs:
        r = runs['position_only']
        left.plot(r['est'][:, 0], r['est'][:, 1], ':', color='tab:purple', lw=1,
                  label=f'loops as position only (ATE {r["ate_m"]:.2f} m)')
    if 'false_loops' in runs:
        r = runs['false_loops']
        for k, o in enumerate(injected):
            a, b = truth.at(np.array([o.query_ns, o.match_ns]))
            right.plot([a[0], b[0]], [a[1], b[1]], '--', color='tab:red', lw=1.5,
                       label=f'{len(injected)} false loops injected' if k == 0 else None)
        right.plot(r['odom'][:, 0], r['odom'][:, 1], '-', color='tab:orange', lw=1,
                   label='odometry')
        right.plot(r['est'][:, 0], r['est'][:, 1], '-', color='tab:blue', lw=1.2,
                   label=f'with loops + false loops (ATE {r["ate_m"]:.2f} m)')
    left.set_title(f'vpr_node loops in a pose graph ({summary["path_length_m"]:.0f} m, '
                   f'{summary["n_loop_rows"]} loop rows, precision '
                   f'{summary["loop_precision"]:.2f})')
    right.set_title('robust kernel vs injected false loop closures')
    for ax in axes:
        ax.set_aspect('equal')
        ax.set_xlabel('x [m]')
        ax.set_ylabel('y [m]')
        ax.legend(loc='upper right', fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _loops(ax, truth, rows: np.ndarray, psi: np.ndarray) -> None:
    """Draw a line between the ground-truth ends of every loop row (true green, false red)."""
    if not len(rows):
        return
    to_ns = np.round(rows[:, :2] * 1e9).astype(np.int64)
    q, m = truth.at(to_ns[:, 0]), truth.at(to_ns[:, 1])
    good = np.nan_to_num(psi, nan=0.0) > 0.5
    for sel, colour, name in ((good, 'tab:green', 'true'), (~good, 'tab:red', 'false')):
        for a, b in zip(q[sel], m[sel]):
            ax.plot([a[0], b[0]], [a[1], b[1]], '-', color=colour, lw=0.8, alpha=0.6)
        ax.plot([], [], '-', color=colour, label=f'{name} loop rows ({int(sel.sum())})')
