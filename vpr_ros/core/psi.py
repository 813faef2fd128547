"""
ψ neighbour search: which camera pairs overlap, and by how much, without looking at n² pairs.

Labels (`vpr-labels`), evaluation hits (`vpr-eval`, training's validation) and the demo's
ground truth (`vpr_ros.tools.loop_eval`) all ask the same question, so it is answered here once,
with one positive threshold and one set of command-line options for θ and r.

Only pairs whose sectors can overlap are computed: each sector fits in a circle of radius ρ
(`fov.enclosing_circle`, ρ = r/√2 for θ = 90°), so a KD-tree ball query of 2ρ around those
circle centres finds every candidate, and ψ is computed exactly (`fov.fov_overlap_many`) on
chunks of candidate pairs: never a loop over n² pairs, memory bounded by the chunk size.
"""
import argparse
import sys

import numpy as np
from scipy.spatial import cKDTree

from vpr_ros.core.errors import VPRError
from vpr_ros.core.fov import (
    DEFAULT_FOV_DEG,
    DEFAULT_RADIUS_M,
    enclosing_circle,
    fov_overlap_many,
    WEAK_RADIUS_M,
    yaw_from_quaternion,
)

#: A pair is a positive (same place) when ψ is above this: the GCL paper's definition, used by
#: labels, pair sampling, evaluation hits and the demo's ground truth.
POSITIVE_PSI = 0.5
#: ψ at or below this is numerically zero (touching sectors), not a soft negative.
MIN_PSI = 1e-6
#: Candidate pairs per vectorised chunk: about 1 kB of temporaries per pair.
DEFAULT_CHUNK = 200_000


def planar(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xy (N,2), yaw (N,)) of N×7 poses: what the FoV sectors need."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 7)
    if len(poses) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    return poses[:, :2].copy(), np.asarray(yaw_from_quaternion(poses[:, 3:]), dtype=np.float64)


def _centres(xy: np.ndarray, yaw: np.ndarray, offset: float) -> np.ndarray:
    return xy + offset * np.stack([np.cos(yaw), np.sin(yaw)], axis=1)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but ψ works without it
        return None
    return tqdm(total=total, desc=desc, unit='pair', unit_scale=True, file=sys.stderr)


def _checked(xy_rows, yaw_rows, xy_cols, yaw_cols):
    xy_r = np.asarray(xy_rows, dtype=np.float64).reshape(-1, 2)
    yaw_r = np.asarray(yaw_rows, dtype=np.float64).reshape(-1)
    within = xy_cols is None
    xy_c = xy_r if within else np.asarray(xy_cols, dtype=np.float64).reshape(-1, 2)
    yaw_c = yaw_r if within else np.asarray(yaw_cols, dtype=np.float64).reshape(-1)
    if len(xy_r) != len(yaw_r) or len(xy_c) != len(yaw_c):
        raise VPRError('positions and headings have different lengths')
    for name, a in (('positions', xy_r), ('headings', yaw_r), ('positions', xy_c),
                    ('headings', yaw_c)):
        if not np.all(np.isfinite(a)):
            raise VPRError(f'{name} contain NaN/inf: cannot label those images')
    return xy_r, yaw_r, xy_c, yaw_c, within


def overlap_pairs(xy_rows: np.ndarray, yaw_rows: np.ndarray, xy_cols: np.ndarray | None = None,
                  yaw_cols: np.ndarray | None = None, fov_deg: float = DEFAULT_FOV_DEG,
                  radius: float = DEFAULT_RADIUS_M, chunk: int = DEFAULT_CHUNK,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    (i, j, ψ) for every pair with ψ > MIN_PSI; i < j within one set, or rows × cols when given.

    Headings in radians. Returns int64 i, j and float64 ψ, sorted by (i, j).
    """
    xy_r, yaw_r, xy_c, yaw_c, within = _checked(xy_rows, yaw_rows, xy_cols, yaw_cols)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(xy_r) == 0 or len(xy_c) == 0:
        return empty
    chunk = max(int(chunk), 1)
    offset, rho = enclosing_circle(fov_deg, radius)
    c_r = _centres(xy_r, yaw_r, offset)
    tree = cKDTree(c_r if within else _centres(xy_c, yaw_c, offset))
    reach = 2.0 * rho * (1.0 + 1e-9)
    # Candidate counts per row first, so chunks hold about `chunk` pairs and the bar is exact.
    counts = tree.query_ball_point(c_r, reach, return_length=True).astype(np.int64)
    if within:
        counts = np.maximum(counts - 1, 0) // 2 + 1  # about half survive j > i (estimate)
    bar = _progress(int(counts.sum()), progress, 'ψ pairs')
    out_i, out_j, out_p = [], [], []
    cum = np.cumsum(counts)
    start, n = 0, len(c_r)
    while start < n:
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + chunk, side='right'))
        stop = min(max(stop, start + 1), n)
        res = tree.query_ball_point(c_r[start:stop], reach, return_sorted=False)
        lens = np.fromiter((len(x) for x in res), dtype=np.int64, count=len(res))
        j = np.fromiter((v for x in res for v in x), dtype=np.int64, count=int(lens.sum()))
        i = np.repeat(np.arange(start, stop, dtype=np.int64), lens)
        if within:
            keep = j > i
            i, j = i[keep], j[keep]
        for s in range(0, len(i), chunk):
            ii, jj = i[s:s + chunk], j[s:s + chunk]
            psi = fov_overlap_many(xy_r[ii], yaw_r[ii], xy_c[jj], yaw_c[jj], fov_deg, radius)
            pos = psi > MIN_PSI
            out_i.append(ii[pos])
            out_j.append(jj[pos])
            out_p.append(psi[pos])
        if bar is not None:
            bar.update(int(cum[stop - 1] - base))
        start = stop
    if bar is not None:
        bar.close()
    if not out_i:
        return empty
    i, j, p = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_p)
    order = np.lexsort((j, i))
    return i[order], j[order], p[order]


def positives(map_poses: np.ndarray, query_poses: np.ndarray,
              threshold: float = POSITIVE_PSI, fov_deg: float = DEFAULT_FOV_DEG,
              radius: float = DEFAULT_RADIUS_M) -> list[np.ndarray]:
    """Map images with ψ(query, map) > threshold, per query (sorted indices into the map)."""
    q_xy, q_yaw = planar(query_poses)
    m_xy, m_yaw = planar(map_poses)
    i, j, psi = overlap_pairs(q_xy, q_yaw, m_xy, m_yaw, fov_deg, radius)
    keep = psi > threshold
    i, j = i[keep], j[keep]
    bounds = np.searchsorted(i, np.arange(len(q_xy) + 1))
    return [j[bounds[k]:bounds[k + 1]] for k in range(len(q_xy))]


def add_fov_arguments(parser: argparse.ArgumentParser, radius: float | None = DEFAULT_RADIUS_M,
                      psi_threshold: bool = False) -> argparse._ArgumentGroup:
    """
    Add the θ / r (and optionally ψ threshold) options, the same in every command taking them.

    `radius=None` leaves the radius to the command (vpr-labels picks strong or weak by input).
    """
    g = parser.add_argument_group('field-of-view overlap ψ (GCL paper: strong θ 90°, r 3.5 m; '
                                  f'weak GPS + compass r {WEAK_RADIUS_M:g} m)')
    g.add_argument('--fov-deg', type=float, default=DEFAULT_FOV_DEG,
                   help=f'FoV sector angle θ in degrees (default {DEFAULT_FOV_DEG:g})')
    if radius is None:
        g.add_argument('--radius', type=float, default=None,
                       help=f'FoV sector radius r in m (default {DEFAULT_RADIUS_M:g} from poses, '
                            f'{WEAK_RADIUS_M:g} from GPS + compass)')
    else:
        g.add_argument('--radius', type=float, default=radius,
                       help=f'FoV sector radius r in m (default {radius:g})')
    if psi_threshold:
        g.add_argument('--psi-threshold', type=float, default=POSITIVE_PSI,
                       help=f'a pair is a positive when ψ > this (default {POSITIVE_PSI:g})')
    return g
