"""FoV overlap ψ: the paper's Fig. 4 values, edge cases, and agreement with polygon geometry."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import shapely

from vpr_ros.core.errors import VPRError
from vpr_ros.core.fov import enclosing_circle, fov_overlap, fov_overlap_many, yaw_from_quaternion

D = math.radians


def _sector(x: float, y: float, yaw: float, fov_deg: float, r: float, n: int = 4000):
    a = np.linspace(yaw - D(fov_deg) / 2, yaw + D(fov_deg) / 2, n)
    pts = np.concatenate([[[x, y]], np.stack([x + r * np.cos(a), y + r * np.sin(a)], 1)])
    return shapely.Polygon(pts)


def test_paper_fig4_values() -> None:
    # Fig. 4b: one spot, 40° apart -> 55.63 %
    assert fov_overlap((0, 0), 0.0, (0, 0), D(40), 90, 50) == pytest.approx(0.5563, abs=0.002)
    # Fig. 4c: 25 m apart side by side (perpendicular to the shared heading) -> 45.01 %
    for yaw in (0.0, D(90), D(-135)):
        side = 25.0 * np.array([-math.sin(yaw), math.cos(yaw)])
        assert fov_overlap((3, 4), yaw, (3, 4) + side, yaw, 90, 50) == pytest.approx(0.4501,
                                                                                     abs=0.002)
    # exact values (the paper's come from a polygon approximation)
    assert fov_overlap((0, 0), 0.0, (0, 0), D(40), 90, 50) == pytest.approx(50 / 90, abs=1e-12)


def test_edge_cases() -> None:
    assert fov_overlap((1, 2), 0.3, (1, 2), 0.3) == pytest.approx(1.0, abs=1e-12)
    assert fov_overlap((0, 0), 0.0, (0, 0), math.pi) == pytest.approx(0.0, abs=1e-12)
    assert fov_overlap((0, 0), 0.0, (0, 0), D(90)) == pytest.approx(0.0, abs=1e-12)  # touch
    assert fov_overlap((0, 0), 0.0, (7.01, 0), math.pi) == 0.0
    assert fov_overlap((0, 0), 0.0, (100, 0), 0.0) == 0.0
    # heading wrap-around: 179° and -179° are 2° apart
    wrap = fov_overlap((0, 0), D(179), (0, 0), D(-179))
    assert wrap == pytest.approx(88 / 90, abs=1e-12)
    assert wrap == pytest.approx(fov_overlap((0, 0), D(179 - 360), (0, 0), D(181)), abs=1e-12)
    # same heading, one behind the other along the axis
    ahead = fov_overlap((0, 0), 0.0, (1.0, 0.0), 0.0)
    assert 0.0 < ahead < 1.0
    # symmetric when both sectors have the same θ and r
    assert ahead == pytest.approx(fov_overlap((1.0, 0.0), 0.0, (0, 0), 0.0), abs=1e-12)
    # scale-free: ψ depends on distances relative to r only
    assert fov_overlap((0, 0), 0.2, (1, 1), 0.9, 90, 3.5) == pytest.approx(
        fov_overlap((0, 0), 0.2, (10, 10), 0.9, 90, 35.0), abs=1e-12)


@pytest.mark.parametrize('fov_deg', [90.0, 60.0, 150.0, 200.0])
def test_matches_fine_polygons(fov_deg: float) -> None:
    rng = np.random.default_rng(int(fov_deg))
    m = 400
    xy_i, xy_j = rng.uniform(-4, 4, (m, 2)), rng.uniform(-4, 4, (m, 2))
    yaw_i, yaw_j = rng.uniform(-4, 4, m), rng.uniform(-4, 4, m)
    xy_j[:40] = xy_i[:40]  # coincident centres: shared arcs and edges
    yaw_j[:20] = yaw_i[:20]
    yaw_j[20:40] = yaw_i[20:40] + D(fov_deg)
    psi = fov_overlap_many(xy_i, yaw_i, xy_j, yaw_j, fov_deg, 3.5)
    area = 0.5 * D(fov_deg) * 3.5 ** 2
    ref = np.array([_sector(*xy_i[k], yaw_i[k], fov_deg, 3.5).intersection(
        _sector(*xy_j[k], yaw_j[k], fov_deg, 3.5)).area for k in range(m)]) / area
    assert np.max(np.abs(psi - ref)) < 1e-5
    assert 0.1 < np.mean(psi > 0) < 0.9  # the sample has both overlapping and disjoint pairs


def test_enclosing_circle_holds_the_sector() -> None:
    for fov_deg in (30.0, 90.0, 120.0, 180.0, 270.0):
        e, rho = enclosing_circle(fov_deg, 2.0)
        sec = _sector(0, 0, 0, fov_deg, 2.0, 500)
        pts = shapely.get_coordinates(sec)
        assert np.all(np.hypot(pts[:, 0] - e, pts[:, 1]) <= rho + 1e-9)
    assert enclosing_circle(90.0, 1.0)[1] == pytest.approx(math.sqrt(0.5))


def test_yaw_from_quaternion_and_errors() -> None:
    q = Rotation.from_euler('ZYX', [[30, 10, 5], [-170, -20, 0]], degrees=True).as_quat()
    assert np.allclose(np.degrees(yaw_from_quaternion(q)), [30, -170])
    assert math.degrees(yaw_from_quaternion(q[0])) == pytest.approx(30)
    with pytest.raises(VPRError):
        fov_overlap((0, 0), 0, (0, 0), 0, fov_deg=0)
    with pytest.raises(VPRError):
        fov_overlap((0, 0), 0, (0, 0), 0, radius=-1)
    with pytest.raises(VPRError):
        fov_overlap_many(np.zeros((2, 2)), np.zeros(2), np.zeros((3, 2)), np.zeros(3))
    assert fov_overlap_many(np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2)), np.zeros(0)).shape \
        == (0,)
