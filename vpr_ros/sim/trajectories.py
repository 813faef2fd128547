"""
Robot traverses on the garden's path graph: smooth 6DOF camera poses at camera rate.

A route is a list of path crossings ('SW', 'S', 'C', ...). The centre line through them gets
rounded corners (so heading changes smoothly), the camera drives it at constant speed with a
per-traverse lateral offset and height, a slow lateral wander and small pitch/roll/yaw wobble,
so a revisit passes the same spot with a similar heading but never the identical pose. Routes
that repeat an edge give single-session revisits; other traverses (other conditions, reversed
direction) give multi-session ones.
"""
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.sim.world import GardenWorld

CORNER_RADIUS_M = 2.0

# Named routes (crossings, in driving order). 'loop' drives the south-west block once and then
# its first edge again (a loop closure with the same heading); 'big' drives the outer ring,
# 'figure8' the two western blocks; together they cover every path of the garden. The SLAM
# traverses revisit places many times: 'laps' drives the south-west block three times, 'excursion'
# drives it once, leaves for the whole outer ring (~100 m never seen before) and comes back into
# it, 'revisits' (make demo's SLAM section) does both: two laps, the excursion, the way back.
ROUTES = {
    'loop': ['SW', 'S', 'C', 'W', 'SW', 'S', 'SE'],
    'loop_once': ['SW', 'S', 'C', 'W', 'SW', 'S'],
    'loop_reverse': ['S', 'SW', 'W', 'C', 'S', 'SW'],
    'east': ['S', 'SE', 'E', 'C', 'S', 'SW'],
    'big': ['SW', 'S', 'SE', 'E', 'NE', 'N', 'NW', 'W', 'SW', 'S'],
    'figure8': ['SW', 'S', 'C', 'N', 'NE', 'E', 'C', 'W', 'SW', 'S'],
    'laps': ['SW', 'S', 'C', 'W'] * 3 + ['SW', 'S'],
    'excursion': ['SW', 'S', 'C', 'W', 'SW', 'S', 'SE', 'E', 'NE', 'N', 'NW', 'W', 'SW', 'S',
                  'C'],
    'revisits': ['SW', 'S', 'C', 'W'] * 2 + ['SW', 'S', 'SE', 'E', 'NE', 'N', 'NW', 'W', 'SW',
                                             'S', 'C', 'W', 'SW'],
}


@dataclass(frozen=True)
class TraverseSpec:
    """How one traverse is driven (the condition it is rendered in is kept separately)."""

    route: tuple[str, ...] = tuple(ROUTES['loop'])
    speed_mps: float = 1.0
    rate_hz: float = 5.0
    height_m: float = 1.0
    lateral_m: float = 0.0        # + is left of the driving direction
    wander_m: float = 0.25        # amplitude of the slow lateral wander
    start_m: float = 2.0          # distance along the route where the traverse begins
    end_margin_m: float = 2.0     # stops this far before the route's end
    max_frames: int | None = None
    seed: int = 0


def route_nodes(spec_route, world: GardenWorld) -> np.ndarray:
    """Crossing names (or a named route) -> (K, 2) coordinates; checks every hop is a path."""
    names = ROUTES[spec_route] if isinstance(spec_route, str) else list(spec_route)
    edges = set(world.edges) | {(b, a) for a, b in world.edges}
    for a, b in zip(names[:-1], names[1:]):
        if (a, b) not in edges:
            raise ValueError(f'route hop {a}->{b} is not a garden path')
    return np.array([world.nodes[n] for n in names], dtype=np.float64)


def _centre_line(points: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Polyline with circular fillets at the corners, resampled every `step` metres."""
    out = [points[0]]
    for k in range(1, len(points) - 1):
        a, c, n = points[k - 1], points[k], points[k + 1]
        d0 = (c - a) / np.linalg.norm(c - a)
        d1 = (n - c) / np.linalg.norm(n - c)
        cross = d0[0] * d1[1] - d0[1] * d1[0]
        dot = float(np.clip(d0 @ d1, -1.0, 1.0))
        if abs(cross) < 1e-9 and dot > 0:   # straight on
            out.append(c)
            continue
        if dot < -0.999:                    # U-turn: turn on a half circle
            r = CORNER_RADIUS_M / 2
            left = np.array([-d0[1], d0[0]])
            centre = c + left * r
            ang = np.linspace(0, np.pi, 24)
            start = -left
            rot = np.stack([np.cos(ang), np.sin(ang)], 1)
            arc = centre + np.stack([start[0] * rot[:, 0] - start[1] * rot[:, 1],
                                     start[0] * rot[:, 1] + start[1] * rot[:, 0]], 1)
            out.extend(arc)
            continue
        turn = np.arccos(dot)
        r = CORNER_RADIUS_M
        t = r * np.tan(turn / 2)
        p0 = c - d0 * t
        side = np.sign(cross)
        centre = p0 + np.array([-d0[1], d0[0]]) * side * r
        a0 = np.arctan2(*(p0 - centre)[::-1])
        ang = a0 + side * np.linspace(0, turn, 16)
        out.extend(centre + r * np.stack([np.cos(ang), np.sin(ang)], 1))
    out.append(points[-1])
    pts = np.asarray(out)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    pts = pts[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    grid = np.arange(0.0, s[-1], step)
    return np.stack([np.interp(grid, s, pts[:, 0]), np.interp(grid, s, pts[:, 1])], 1)


def sample_traverse(spec: TraverseSpec, world: GardenWorld) -> tuple[np.ndarray, np.ndarray]:
    """
    (stamps_ns (N,) int64 from 0, poses (N,7) [tx,ty,tz,qx,qy,qz,qw]) of camera_link in world.

    Stamps are exact multiples of the camera period, so other topics at integer multiples of
    the rate land on the same stamps.
    """
    if spec.speed_mps <= 0 or spec.rate_hz <= 0:
        raise ValueError('speed and rate must be positive')
    line = _centre_line(route_nodes(spec.route, world))
    s_line = np.arange(len(line)) * 0.05
    length = s_line[-1] - spec.start_m - spec.end_margin_m
    if length <= 0:
        raise ValueError('route too short for the start and end margins')
    period_ns = int(round(1e9 / spec.rate_hz))
    n = int(length / spec.speed_mps * spec.rate_hz) + 1
    if spec.max_frames is not None:
        n = min(n, int(spec.max_frames))
    stamps = np.arange(n, dtype=np.int64) * period_ns
    s = spec.start_m + spec.speed_mps * stamps.astype(np.float64) * 1e-9
    return stamps, _poses_along(line, s_line, s, spec)


def _poses_along(line: np.ndarray, s_line: np.ndarray, s: np.ndarray,
                 spec: TraverseSpec) -> np.ndarray:
    x = np.interp(s, s_line, line[:, 0])
    y = np.interp(s, s_line, line[:, 1])
    # heading from a centred difference over 0.6 m: smooth through the fillets
    h = 0.3
    dx = np.interp(s + h, s_line, line[:, 0]) - np.interp(s - h, s_line, line[:, 0])
    dy = np.interp(s + h, s_line, line[:, 1]) - np.interp(s - h, s_line, line[:, 1])
    yaw = np.arctan2(dy, dx)
    rng = np.random.default_rng([int(spec.seed), 5])
    ph = rng.uniform(0, 2 * np.pi, size=6)
    # lateral wander over the distance driven (period ~ 17 m): the same place is revisited
    # at a different offset
    lat = spec.lateral_m + spec.wander_m * np.sin(s / 2.7 + ph[0])
    x = x - np.sin(yaw) * lat
    y = y + np.cos(yaw) * lat
    z = spec.height_m + 0.01 * np.sin(s * 3.1 + ph[1])
    yaw = yaw + np.radians(2.0) * np.sin(s / 1.9 + ph[2])
    pitch = np.radians(1.0) * np.sin(s * 1.7 + ph[3]) + np.radians(2.0)   # looks 2 deg down
    roll = np.radians(0.8) * np.sin(s * 2.3 + ph[4])
    q = Rotation.from_euler('ZYX', np.stack([yaw, pitch, roll], 1)).as_quat()
    return np.concatenate([np.stack([x, y, z], 1), q], axis=1)
