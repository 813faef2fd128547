"""
Trajectory error as SLAM papers report it, computed with `evo` (an optional tool dependency).

* ATE (absolute trajectory error): RMSE of the translation between estimate and ground truth
  at the same stamps, after aligning the estimate to ground truth with the best rigid motion
  (Umeyama, SE(3), no scale): `evo_ape tum gt.txt est.txt -a`.
* RPE (relative pose error): RMSE of the translation error of the motion over every pair of
  poses `rpe_delta_m` metres apart along the path: `evo_rpe ... -d 10 -u m`. It measures local
  drift, which loop closures change little; ATE is what they are for.

Poses are 7-vectors [tx, ty, tz, qx, qy, qz, qw] with integer-nanosecond stamps; the estimate is
compared at its own stamps with the ground-truth pose nearest in time (within `max_dt_s`).
"""
import numpy as np

RPE_DELTA_M = 10.0


def _trajectory(stamps_ns: np.ndarray, poses: np.ndarray):
    from evo.core.trajectory import PoseTrajectory3D
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 7)
    return PoseTrajectory3D(positions_xyz=poses[:, :3],
                            orientations_quat_wxyz=poses[:, [6, 3, 4, 5]],
                            timestamps=np.asarray(stamps_ns, dtype=np.float64) * 1e-9)


def _associated(ref_stamps, ref_poses, est_stamps, est_poses, max_dt_s: float):
    from evo.core import sync
    ref, est = sync.associate_trajectories(_trajectory(ref_stamps, ref_poses),
                                           _trajectory(est_stamps, est_poses),
                                           max_diff=max_dt_s)
    if ref.num_poses < 3:
        raise ValueError(f'only {ref.num_poses} poses of the estimate have ground truth')
    return ref, est


def trajectory_errors(ref_stamps_ns, ref_poses, est_stamps_ns, est_poses,
                      rpe_delta_m: float = RPE_DELTA_M, max_dt_s: float = 0.02) -> dict:
    """{'ate_m', 'ate_max_m', 'rpe_m', 'n'}: ATE after SE(3) alignment and RPE over delta m."""
    import copy

    from evo.core import metrics
    from evo.core.units import Unit

    ref, est = _associated(ref_stamps_ns, ref_poses, est_stamps_ns, est_poses, max_dt_s)
    aligned = copy.deepcopy(est)
    aligned.align(ref, correct_scale=False)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, aligned))
    out = {'ate_m': float(ape.get_statistic(metrics.StatisticsType.rmse)),
           'ate_max_m': float(ape.get_statistic(metrics.StatisticsType.max)),
           'n': int(ref.num_poses), 'rpe_m': float('nan')}
    if ref.path_length > 2 * rpe_delta_m:
        rpe = metrics.RPE(metrics.PoseRelation.translation_part, delta=rpe_delta_m,
                          delta_unit=Unit.meters, all_pairs=True)
        rpe.process_data((ref, est))
        out['rpe_m'] = float(rpe.get_statistic(metrics.StatisticsType.rmse))
    return out


def poses_at(stamps_ns: np.ndarray, poses: np.ndarray, at_ns: np.ndarray) -> np.ndarray:
    """Rows of `poses` at the stamps nearest `at_ns` (the estimate's stamps)."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    i = np.clip(np.searchsorted(stamps_ns, at_ns), 1, len(stamps_ns) - 1)
    i -= (at_ns - stamps_ns[i - 1]) < (stamps_ns[i] - at_ns)
    return np.asarray(poses)[i]


def planar_to_pose7(xyyaw: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) planar poses -> (N, 7) pose vectors (z given or 0, yaw-only quaternion)."""
    xyyaw = np.asarray(xyyaw, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(xyyaw), 7))
    out[:, :2] = xyyaw[:, :2]
    out[:, 2] = 0.0 if z is None else z
    out[:, 5] = np.sin(xyyaw[:, 2] / 2)
    out[:, 6] = np.cos(xyyaw[:, 2] / 2)
    return out
