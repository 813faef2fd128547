"""
2D field-of-view overlap ψ of two cameras on the ground plane (GCL paper, section 4.1).

Each camera sees a circular sector S centred at its (x, y), pointing along its heading (the yaw
of the pose's +x axis, REP-103), with opening angle θ and radius r. The graded similarity is
ψ = area(Si ∩ Sj) / area(Si). This is the one definition used by labels, evaluation and the demo,
so they cannot drift apart. It reproduces the paper's Fig. 4 numbers (θ = 90°, r = 50 m: 55.63 %
for one spot and 40° apart, 45.01 % for 25 m side by side with the same heading); an IoU would not.

The area is exact (no polygon approximation): Green's theorem turns the area of Si ∩ Sj into the
line integral ½∮(x dy − y dx) over the parts of ∂Si inside Sj plus the parts of ∂Sj inside Si.
Each boundary piece is cut at its crossings with the other sector's boundary and every sub-piece
is kept or dropped by testing its midpoint, all with fixed-size numpy arrays, so millions of pairs
run without a Python loop. Coordinates are taken relative to the centre of Si, which makes both
straight edges of Si contribute nothing (they pass through the origin) and keeps coincident edges
(identical or adjacent sectors) from being counted twice.
"""
import math

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.errors import VPRError

DEFAULT_FOV_DEG = 90.0
DEFAULT_RADIUS_M = 3.5
WEAK_RADIUS_M = 50.0

# Relative tolerance for the open-set test of Sj's boundary inside Si: a piece of ∂Sj lying on
# ∂Si (same circle, same edge line) must not be counted a second time.
_EPS = 1e-9


def yaw_from_quaternion(q: np.ndarray) -> np.ndarray | float:
    """
    Heading of the pose's +x axis on the x-y plane (radians), for one (4,) or many (N,4) xyzw.

    The +x axis is rotated and projected, rather than taking an Euler angle, so the heading stays
    right for a camera that is pitched or rolled (as long as it does not look straight down).
    """
    q = np.asarray(q, dtype=np.float64)
    single = q.ndim == 1
    fwd = Rotation.from_quat(np.atleast_2d(q)).apply([1.0, 0.0, 0.0])
    yaw = np.arctan2(fwd[:, 1], fwd[:, 0])
    return float(yaw[0]) if single else yaw


def enclosing_circle(fov_deg: float = DEFAULT_FOV_DEG,
                     radius: float = DEFAULT_RADIUS_M) -> tuple[float, float]:
    """
    (offset along the heading, radius) of a circle holding the whole sector.

    Two sectors can only overlap when their enclosing circles do, so a spatial pre-filter on the
    circle centres with distance 2·ρ is exact and, for θ = 90°, finds half the candidate pairs
    that a 2r search around the camera positions would.
    """
    _check(fov_deg, radius)
    half = math.radians(fov_deg) / 2.0
    if fov_deg <= 90.0:
        e = radius / (2.0 * math.cos(half))  # circumcircle of the centre and the two arc ends
        return e, e
    if fov_deg <= 180.0:
        return radius * math.cos(half), radius * math.sin(half)  # circle on the chord
    return 0.0, float(radius)


def fov_overlap(xy_i, yaw_i: float, xy_j, yaw_j: float, fov_deg: float = DEFAULT_FOV_DEG,
                radius: float = DEFAULT_RADIUS_M) -> float:
    """ψ = area(Si ∩ Sj) / area(Si) for one pair of cameras; headings in radians."""
    out = fov_overlap_many(np.asarray(xy_i, dtype=np.float64).reshape(1, 2),
                           np.asarray([yaw_i], dtype=np.float64),
                           np.asarray(xy_j, dtype=np.float64).reshape(1, 2),
                           np.asarray([yaw_j], dtype=np.float64), fov_deg, radius)
    return float(out[0])


def fov_overlap_many(xy_i: np.ndarray, yaw_i: np.ndarray, xy_j: np.ndarray, yaw_j: np.ndarray,
                     fov_deg: float = DEFAULT_FOV_DEG,
                     radius: float = DEFAULT_RADIUS_M) -> np.ndarray:
    """
    ψ for M pairs at once: xy (M,2), yaw (M,) radians → (M,) float64 in [0, 1].

    Callers chunk large pair lists (labels does); memory is about 1 kB per pair.
    """
    _check(fov_deg, radius)
    xy_i = np.asarray(xy_i, dtype=np.float64).reshape(-1, 2)
    xy_j = np.asarray(xy_j, dtype=np.float64).reshape(-1, 2)
    yaw_i = np.asarray(yaw_i, dtype=np.float64).reshape(-1)
    yaw_j = np.asarray(yaw_j, dtype=np.float64).reshape(-1)
    m = xy_i.shape[0]
    if not (xy_j.shape[0] == yaw_i.shape[0] == yaw_j.shape[0] == m):
        raise VPRError(f'fov_overlap_many: lengths differ ({m}, {xy_j.shape[0]}, '
                       f'{yaw_i.shape[0]}, {yaw_j.shape[0]})')
    if m == 0:
        return np.zeros(0)
    r = float(radius)
    half = math.radians(fov_deg) / 2.0
    c = xy_j - xy_i  # centre of Sj with the centre of Si at the origin
    a_lo, a_hi = yaw_i - half, yaw_i + half
    b_lo, b_hi = yaw_j - half, yaw_j + half
    zero = np.zeros_like(c)

    # Arc of Si inside the closed Sj.
    u_i, u_j = _unit(yaw_i), _unit(yaw_j)
    area = _arc_part(zero, a_lo, a_hi, r, c, b_lo, b_hi, u_j, half, strict=False)
    # Arc and both edges of Sj inside the open Si (closed/open keeps shared pieces counted once).
    area += _arc_part(c, b_lo, b_hi, r, zero, a_lo, a_hi, u_i, half, strict=True)
    tip_lo = c + r * _unit(b_lo)
    tip_hi = c + r * _unit(b_hi)
    area += _segment_part(c, tip_lo - c, r, a_lo, a_hi, u_i, half)  # centre → first arc end
    area += _segment_part(tip_hi, c - tip_hi, r, a_lo, a_hi, u_i, half)  # last arc end → centre
    psi = area / (half * r * r)
    psi[np.sum(c * c, axis=1) > (2.0 * r) ** 2] = 0.0
    return np.clip(psi, 0.0, 1.0)


def _check(fov_deg: float, radius: float) -> None:
    if not (0.0 < float(fov_deg) < 360.0) or not math.isfinite(fov_deg):
        raise VPRError(f'fov_deg must be in (0, 360), got {fov_deg}')
    if not (float(radius) > 0.0) or not math.isfinite(radius):
        raise VPRError(f'radius must be > 0, got {radius}')


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(p: np.ndarray, centre: np.ndarray, heading_u: np.ndarray, half: float, r: float,
            strict: bool) -> np.ndarray:
    """Point-in-sector test for p (M,K,2); strict shrinks the sector by a hair (open set)."""
    d = p - centre[:, None, :]
    dist2 = np.sum(d * d, axis=-1)
    # |angle to heading| <= half  ⇔  d·u(heading) >= |d|·cos(half): no arctan2 needed.
    along = d[..., 0] * heading_u[:, 0:1] + d[..., 1] * heading_u[:, 1:2]
    bound = np.sqrt(dist2) * math.cos(half)
    slack = _EPS * r
    if strict:
        return (dist2 < (r * r) * (1.0 - 4 * _EPS)) & (along > bound + slack)
    return (dist2 <= (r * r) * (1.0 + 4 * _EPS)) & (along >= bound - slack)


def _line_params_on_arc(centre: np.ndarray, r: float, lo: np.ndarray, hi: np.ndarray,
                        origin: np.ndarray, angle: np.ndarray) -> list[np.ndarray]:
    """Arc angles φ ∈ [lo, hi] where the arc crosses the line through origin along angle."""
    # cross(centre + r·u(φ) − origin, u(β)) = 0  ⇔  sin(β − φ) = −cross(centre − origin, u(β))/r
    k = -_cross(centre - origin, _unit(angle)) / r
    ok = np.abs(k) <= 1.0
    s = np.arcsin(np.clip(k, -1.0, 1.0))
    out = []
    for phi in (angle - s, angle - np.pi + s):
        out.append(np.where(ok, phi, np.nan))
    return out


def _circle_params_on_arc(centre: np.ndarray, r: float, other: np.ndarray) -> list[np.ndarray]:
    """Arc angles where a circle of radius r crosses an equal circle around other."""
    d = other - centre
    dist = np.hypot(d[:, 0], d[:, 1])
    ok = (dist > 0.0) & (dist <= 2.0 * r)
    g = np.arctan2(d[:, 1], d[:, 0])
    w = np.arccos(np.clip(dist / (2.0 * r), 0.0, 1.0))
    return [np.where(ok, g - w, np.nan), np.where(ok, g + w, np.nan)]


def _wrap_into(phi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Angle phi moved by whole turns into [lo, lo + 2π)."""
    return lo + np.mod(phi - lo, 2.0 * np.pi)


def _arc_part(centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, r: float,
              o_centre: np.ndarray, o_lo: np.ndarray, o_hi: np.ndarray, o_heading_u: np.ndarray,
              half: float, strict: bool) -> np.ndarray:
    """½∮(x dy − y dx) over the part of one sector's arc that lies in the other sector."""
    cuts = (_line_params_on_arc(centre, r, lo, hi, o_centre, o_lo)
            + _line_params_on_arc(centre, r, lo, hi, o_centre, o_hi)
            + _circle_params_on_arc(centre, r, o_centre))
    cuts = [_wrap_into(p, lo) for p in cuts]
    t = np.stack([lo, hi] + cuts, axis=1)
    t = np.where(np.isnan(t) | (t > hi[:, None]), lo[:, None], t)
    t.sort(axis=1)
    dt = np.diff(t, axis=1)
    mid = t[:, :-1] + 0.5 * dt
    pts = centre[:, None, :] + r * _unit(mid)
    keep = _inside(pts, o_centre, o_heading_u, half, r, strict) & (dt > 0.0)
    # ∫ (x dy − y dx) along the circle = r·cx·Δsin − r·cy·Δcos + r²·Δφ
    contrib = r * r * dt
    if np.any(centre):
        contrib = contrib + r * (centre[:, 0:1] * np.diff(np.sin(t), axis=1)
                                 - centre[:, 1:2] * np.diff(np.cos(t), axis=1))
    return 0.5 * np.sum(np.where(keep, contrib, 0.0), axis=1)


def _segment_part(p0: np.ndarray, d: np.ndarray, r: float, o_lo: np.ndarray, o_hi: np.ndarray,
                  o_heading_u: np.ndarray, half: float) -> np.ndarray:
    """
    ½∫(x dy − y dx) over the part of segment p0 + t·d (t ∈ [0, 1]) inside the open Si.

    Si is centred at the origin, so its edges are lines through the origin.
    """
    cuts = []
    for ang in (o_lo, o_hi):
        u = _unit(ang)
        den = _cross(d, u)
        with np.errstate(divide='ignore', invalid='ignore'):
            cuts.append(np.where(np.abs(den) > 1e-15, _cross(-p0, u) / den, np.nan))
    # |p0 + t d|² = r²
    a = np.sum(d * d, axis=1)
    b = 2.0 * np.sum(p0 * d, axis=1)
    cc = np.sum(p0 * p0, axis=1) - r * r
    disc = b * b - 4.0 * a * cc
    ok = (disc >= 0.0) & (a > 0.0)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    with np.errstate(divide='ignore', invalid='ignore'):
        cuts.append(np.where(ok, (-b - sq) / (2.0 * a), np.nan))
        cuts.append(np.where(ok, (-b + sq) / (2.0 * a), np.nan))
    m = p0.shape[0]
    t = np.stack([np.zeros(m), np.ones(m)] + cuts, axis=1)
    t = np.where(np.isnan(t), 0.0, np.clip(t, 0.0, 1.0))
    t.sort(axis=1)
    t0, t1 = t[:, :-1], t[:, 1:]
    mid = 0.5 * (t0 + t1)
    pts = p0[:, None, :] + mid[..., None] * d[:, None, :]
    keep = _inside(pts, np.zeros_like(p0), o_heading_u, half, r, strict=True) & (t1 > t0)
    contrib = _cross(p0, d)[:, None] * (t1 - t0)
    return 0.5 * np.sum(np.where(keep, contrib, 0.0), axis=1)
