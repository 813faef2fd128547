"""
Drifting odometry for simulated traverses: noisy planar increments, integrated like a robot's.

A wheel (or visual) odometry measures how far the robot moved since the last sample, in its own
frame, and adds these increments up. Its errors therefore grow with the distance driven: a
scale error stretches every step, a yaw-rate bias turns the whole trajectory slowly, a turn
scale error over- or under-counts every corner, and a random walk adds up on top. This module
applies exactly those errors to the ground-truth increments (x, y, yaw on the ground plane) and
integrates them, so the odometry's ATE grows with distance as a real robot's does, and the
graph back-end (vpr_ros/tools/pose_graph.py) has something to correct.

`OdomNoise()` (all zero) reproduces ground truth exactly (the writer then copies the pose
bit for bit). `WHEEL_ODOMETRY` is the documented profile of `make demo`'s SLAM traverse; the
`odom_drift` level of the simulator (SimParams, `vpr-sim --odom-drift`) scales it.
"""
from dataclasses import dataclass, fields

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.fov import yaw_from_quaternion


@dataclass(frozen=True)
class OdomNoise:
    """Errors of integrated odometry (all 0: exact); the random parts are seeded per traverse."""

    scale_error: float = 0.0              # distance reported (1 + e) times the true one
    turn_scale_error: float = 0.0         # yaw increments reported (1 + e) times the true ones
    yaw_rate_bias_dps: float = 0.0        # deg/s added to the yaw rate (gyro bias, wheel radii)
    xy_noise_m_per_sqrt_m: float = 0.0    # random walk on each increment's x and y
    yaw_noise_deg_per_sqrt_m: float = 0.0  # random walk on each increment's yaw

    def scaled(self, level: float) -> 'OdomNoise':
        """Every error times `level` (0: exact odometry, 1: this profile)."""
        return OdomNoise(**{f.name: getattr(self, f.name) * float(level) for f in fields(self)})

    @property
    def exact(self) -> bool:
        return all(getattr(self, f.name) == 0.0 for f in fields(self))


# Wheel odometry without a gyro on garden paths: 3 % scale error, 3 % turn error, a heading bias
# of 0.15 deg/s and a random walk of 0.02 m and 0.3 deg per sqrt(m). Its ATE after SE(3)
# alignment is about 1.5 % of the distance driven (measured over 3 seeds: 'loop' 77 m 1.1-1.4 m,
# 'laps' 168 m 2.4-2.7 m, 'revisits' 264 m 4.2-4.4 m); unaligned, the end point is off by
# 2-10 % of the distance ('revisits': 17 m after 264 m; 'loop': 7-8 m after 77 m of corners).
WHEEL_ODOMETRY = OdomNoise(scale_error=0.03, turn_scale_error=0.03, yaw_rate_bias_dps=0.15,
                           xy_noise_m_per_sqrt_m=0.02, yaw_noise_deg_per_sqrt_m=0.3)


def planar(pose7) -> tuple[float, float, float]:
    """(x, y, yaw) of a pose 7-vector on the ground plane (yaw of its +x axis)."""
    p = np.asarray(pose7, dtype=np.float64)
    return float(p[0]), float(p[1]), yaw_from_quaternion(p[3:7])


class DriftingOdometry:
    """
    Integrates noisy increments of a ground-truth trajectory, one pose sample at a time.

    `step(stamp_ns, pose7)` returns the odometry pose at that sample: x, y and yaw integrated
    from the noisy increments, z, roll and pitch as in ground truth (a ground robot's odometry
    knows its height and attitude well; the planar errors are what a back-end corrects). It
    starts at the first ground-truth pose, so odometry and ground truth share their origin.
    """

    def __init__(self, noise: OdomNoise, seed: int = 0) -> None:
        self.noise = noise
        self.rng = np.random.default_rng([int(seed), 31])
        self._last: tuple[int, tuple[float, float, float]] | None = None
        self._state = np.zeros(3)  # integrated x, y, yaw

    def step(self, stamp_ns: int, pose7) -> np.ndarray:
        p = np.asarray(pose7, dtype=np.float64)
        gt = planar(p)
        if self._last is None:
            self._state = np.array(gt)
        else:
            dt = (int(stamp_ns) - self._last[0]) * 1e-9
            self._state = self._integrate(self._state, self._last[1], gt, dt)
        self._last = (int(stamp_ns), gt)
        x, y, yaw = self._state
        out = p.copy()
        out[0], out[1] = x, y
        out[3:7] = (Rotation.from_euler('z', yaw - gt[2]) * Rotation.from_quat(p[3:7])).as_quat()
        return out

    def _integrate(self, state: np.ndarray, prev, cur, dt: float) -> np.ndarray:
        """Add the noisy version of the increment prev -> cur (in prev's frame) to `state`."""
        n = self.noise
        c, s = np.cos(prev[2]), np.sin(prev[2])
        dxw, dyw = cur[0] - prev[0], cur[1] - prev[1]
        dx, dy = c * dxw + s * dyw, -s * dxw + c * dyw
        dyaw = (cur[2] - prev[2] + np.pi) % (2 * np.pi) - np.pi
        dist = np.hypot(dx, dy)
        walk = self.rng.standard_normal(3) * np.sqrt(dist)
        dx = dx * (1 + n.scale_error) + walk[0] * n.xy_noise_m_per_sqrt_m
        dy = dy * (1 + n.scale_error) + walk[1] * n.xy_noise_m_per_sqrt_m
        dyaw = (dyaw * (1 + n.turn_scale_error) + np.radians(n.yaw_rate_bias_dps) * dt
                + walk[2] * np.radians(n.yaw_noise_deg_per_sqrt_m))
        c, s = np.cos(state[2]), np.sin(state[2])
        return np.array([state[0] + c * dx - s * dy, state[1] + s * dx + c * dy,
                         state[2] + dyaw])
