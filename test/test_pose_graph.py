"""
The pose graph of the reference back-end (vpr_ros/tools/pose_graph.py), without ROS.

On drifting simulated traverses (test/slam_synthetic.py: the simulator's odometry drift model,
loops as a good place recognizer reports them) the graph must bring the ATE well below the
odometry's, keep it there with false loops thanks to the robust kernel (and lose it without),
and use the relative pose: with the sparse loops of a strict operating point, relative-pose
factors must beat "same place" factors. Also the frame conventions: the optical-frame relative
pose turned into the body frame equals the planar motion between the ground-truth poses.
"""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from slam_synthetic import drifting_traverse, false_loops, node_like_loops  # noqa: E402

from vpr_ros.core.fov import yaw_from_quaternion  # noqa: E402
from vpr_ros.core.relative_pose import relative_from_poses  # noqa: E402

pytest.importorskip('gtsam')
pytest.importorskip('evo')

from vpr_ros.tools.pose_graph import (  # noqa: E402
    _between,
    camera_motion,
    GraphConfig,
    LoopObservation,
    PoseGraph,
)
from vpr_ros.tools.trajectory_error import planar_to_pose7, trajectory_errors  # noqa: E402


def run_graph(tr, loops, config: GraphConfig | None = None) -> tuple[float, float, PoseGraph]:
    """Feed odometry (20 Hz) and each loop once its query stamp is covered; (ATE odom, graph)."""
    graph = PoseGraph(config)
    loops = sorted(loops, key=lambda o: o.query_ns)
    k = 0
    for stamp, pose in zip(tr.stamps_ns, tr.odom):
        graph.add_odometry(int(stamp), pose[0], pose[1], yaw_from_quaternion(pose[3:]), pose[2])
        while k < len(loops) and loops[k].query_ns <= stamp:
            graph.add_loop(loops[k])
            k += 1
        graph.update()
    stamps, z = np.array(graph.stamps), np.array(graph.z)
    odom = trajectory_errors(tr.stamps_ns, tr.gt, stamps, planar_to_pose7(np.array(graph.odom), z))
    est = trajectory_errors(tr.stamps_ns, tr.gt, stamps, planar_to_pose7(graph.estimate, z))
    return odom['ate_m'], est['ate_m'], graph


def sparse(loops: list, every: int) -> list:
    """Every `every`-th query's best row: the loops of a strict operating point."""
    firsts = {}
    for o in loops:
        firsts.setdefault(o.query_ns, o)
    return [firsts[q] for q in sorted(firsts)[::every]]


@pytest.fixture(scope='module')
def laps():
    tr = drifting_traverse('laps', 0)
    return tr, node_like_loops(tr, 0)


def test_loops_correct_the_drift_and_a_robust_kernel_survives_false_loops(laps) -> None:
    tr, loops = laps
    wrong = false_loops(tr, 5, 0, busy=tuple(o.query_ns for o in loops))
    ate_odom, ate, graph = run_graph(tr, loops)
    _, ate_false, _ = run_graph(tr, loops + wrong)
    _, ate_plain, _ = run_graph(tr, loops + wrong, GraphConfig(robust_kernel='none'))
    print(f'laps: ATE odometry {ate_odom:.2f} m, loops {ate:.3f}, + 5 false {ate_false:.3f}, '
          f'+ 5 false without a robust kernel {ate_plain:.2f}')
    assert ate_odom > 1.5
    assert ate <= 0.3 * ate_odom and ate_false <= 0.4 * ate_odom
    assert ate_plain > 2 * ate_false  # the kernel is what keeps the false loops out
    assert graph.counters['loop_factors'] == len(loops)
    assert graph.counters['loops_direction'] > 0.9 * len(loops)


@pytest.mark.parametrize('route,every', [('laps', 10), ('loop', 3)])
def test_relative_pose_factors_beat_same_place_factors(route: str, every: int) -> None:
    """With few loops, rotation and direction carry what "same place" cannot."""
    tr = drifting_traverse(route, 0)
    loops = sparse(node_like_loops(tr, 0), every)
    ate_odom, ate_pose, _ = run_graph(tr, loops)
    _, ate_place, graph = run_graph(tr, loops, GraphConfig(use_relative_pose=False))
    print(f'{route}, {len(loops)} loops: ATE odometry {ate_odom:.2f} m, relative-pose factors '
          f'{ate_pose:.3f}, same-place factors {ate_place:.3f}')
    assert graph.counters['loops_unposed'] == len(loops)
    assert ate_pose < 0.8 * ate_place < ate_odom


def test_unposed_loops_weak_beat_skipped(laps) -> None:
    """A loop without a relative pose: the weak "same place" factor, measured against none."""
    tr, loops = laps
    unposed = [LoopObservation(o.query_ns, o.match_ns) for o in sparse(loops, 5)]
    ate_odom, ate_weak, _ = run_graph(tr, unposed)
    _, ate_skip, graph = run_graph(tr, unposed, GraphConfig(unposed_loops='skip'))
    assert graph.counters['loops_skipped'] == len(unposed)
    assert ate_skip == pytest.approx(ate_odom, rel=1e-6)  # no factor: the odometry
    assert ate_weak < 0.5 * ate_odom


def test_metric_relative_poses(laps) -> None:
    """Depth makes the translation metric: a plain Pose2 between factor of it."""
    tr, loops = laps
    metric = []
    for o in sparse(loops, 5):
        i, j = (int(np.searchsorted(tr.stamps_ns, s)) for s in (o.query_ns, o.match_ns))
        q, t = relative_from_poses(tr.gt[i], tr.gt[j])
        metric.append(LoopObservation(o.query_ns, o.match_ns, q, t, True, o.parallax_deg))
    ate_odom, ate, graph = run_graph(tr, metric)
    assert graph.counters['loops_metric'] == len(metric)
    assert ate <= 0.3 * ate_odom


def test_optical_relative_pose_in_the_body_frame(laps) -> None:
    """camera_motion of a ground-truth optical relative pose = planar body motion."""
    tr, _ = laps
    for i, j in [(400, 20), (1500, 900), (3000, 100)]:
        q, t = relative_from_poses(tr.gt[i], tr.gt[j])
        yaw, t_xy = camera_motion(LoopObservation(0, 0, q, t))
        a = [*tr.gt[j, :2], yaw_from_quaternion(tr.gt[j, 3:])]
        b = [*tr.gt[i, :2], yaw_from_quaternion(tr.gt[i, 3:])]
        planar = _between(a, b)
        assert math.degrees(abs(yaw - planar[2])) < 0.5  # the camera's small pitch and roll
        assert np.allclose(t_xy, planar[:2], atol=0.05 * max(1.0, np.linalg.norm(planar[:2])))


def test_camera_mount_and_node_bookkeeping() -> None:
    """A camera yawed 90 deg on the body: the same body motion; odometry order is checked."""
    graph = PoseGraph(GraphConfig(camera_mount=(0.0, 0.0, 90.0)))
    assert graph.add_odometry(1, 0.0, 0.0, 0.0)
    assert not graph.add_odometry(1, 5.0, 0.0, 0.0)   # not after the newest: refused, counted
    assert graph.counters['odometry_out_of_order'] == 1
    assert not graph.add_odometry(2, 0.1, 0.0, 0.0)   # under node_distance_m: no node
    assert graph.add_odometry(3, 1.0, 0.0, 0.0)
    assert np.allclose(graph.odometry_at(2), [0.5, 0.0, 0.0])
    assert graph.odometry_at(4) is None and not graph.covers(4)
    # the body moved 1 m forward (+x); a camera looking left (+y) sees itself move to its right
    z, _ = graph._measurement(LoopObservation(3, 1, np.array([0, 0, 0, 1.0]),
                                              np.array([1.0, 0.0, 0.0]), True, 5.0),
                              np.zeros(3))[1:]
    assert np.allclose(z, [1.0, 0.0, 0.0], atol=1e-9)
