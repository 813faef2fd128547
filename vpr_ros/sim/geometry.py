"""
Small numpy mesh builders (boxes, cylinders, bumpy blobs, planes) with texture coordinates.

pyrender needs positions, normals, UVs and triangle indices; trimesh's primitives carry no UVs,
so the garden's parts are built here. UVs of tiled surfaces are in metres / tile size, so a
texture keeps its real-world scale on objects of any size (the repetitive look of a garden).
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class Geo:
    """One triangle mesh: float32 positions/normals (N,3), uvs (N,2), uint32 faces (M,3)."""

    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    faces: np.ndarray

    def transformed(self, matrix: np.ndarray) -> 'Geo':
        """Copy moved by a 4x4 rigid (or uniformly scaled) transform."""
        m = np.asarray(matrix, dtype=np.float64)
        pos = self.positions @ m[:3, :3].T + m[:3, 3]
        nrm = self.normals @ m[:3, :3].T
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        return Geo(pos.astype(np.float32), nrm.astype(np.float32), self.uvs.copy(),
                   self.faces.copy())


def merge(geos: list[Geo]) -> Geo:
    """One mesh from many, so parts sharing a texture cost one draw call."""
    if not geos:
        raise ValueError('nothing to merge')
    offs = np.cumsum([0] + [len(g.positions) for g in geos[:-1]])
    return Geo(np.concatenate([g.positions for g in geos]).astype(np.float32),
               np.concatenate([g.normals for g in geos]).astype(np.float32),
               np.concatenate([g.uvs for g in geos]).astype(np.float32),
               np.concatenate([g.faces + o for g, o in zip(geos, offs)]).astype(np.uint32))


def pose_matrix(x: float = 0.0, y: float = 0.0, z: float = 0.0, yaw: float = 0.0,
                scale=1.0) -> np.ndarray:
    """4x4 transform: scale (scalar or (3,)), then yaw about z, then translation."""
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) * np.broadcast_to(
        np.asarray(scale, dtype=np.float64), (3,))
    m[:3, 3] = (x, y, z)
    return m


def _quad(p0, du, dv, u_len: float, v_len: float, uv_origin=(0.0, 0.0)) -> Geo:
    """Rectangle p0 + a*du + b*dv (a, b in [0, 1]) facing du x dv, uv spanning u_len x v_len."""
    p0, du, dv = (np.asarray(a, dtype=np.float64) for a in (p0, du, dv))
    pos = np.array([p0, p0 + du, p0 + du + dv, p0 + dv])
    n = np.cross(du, dv)
    n /= np.linalg.norm(n)
    u0, v0 = uv_origin
    uvs = np.array([[u0, v0], [u0 + u_len, v0], [u0 + u_len, v0 + v_len], [u0, v0 + v_len]])
    return Geo(pos.astype(np.float32), np.tile(n, (4, 1)).astype(np.float32),
               uvs.astype(np.float32), np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32))


def ground_rect(x0: float, y0: float, x1: float, y1: float, z: float = 0.0,
                tile_m: float = 2.0) -> Geo:
    """Horizontal rectangle facing up with world-anchored UVs, so overlapping strips line up."""
    g = _quad((x0, y0, z), (x1 - x0, 0, 0), (0, y1 - y0, 0), (x1 - x0) / tile_m,
              (y1 - y0) / tile_m, uv_origin=(x0 / tile_m, y0 / tile_m))
    return g


def box(sx: float, sy: float, sz: float, tile_m: float | None = 1.0) -> Geo:
    """Axis-aligned box standing on z=0, centred in x/y; tile_m=None stretches the texture."""
    hx, hy = sx / 2.0, sy / 2.0

    def lengths(a, b):
        return (1.0, 1.0) if tile_m is None else (a / tile_m, b / tile_m)

    faces = [
        _quad((-hx, -hy, 0), (sx, 0, 0), (0, 0, sz), *lengths(sx, sz)),      # -y
        _quad((hx, hy, 0), (-sx, 0, 0), (0, 0, sz), *lengths(sx, sz)),       # +y
        _quad((hx, -hy, 0), (0, sy, 0), (0, 0, sz), *lengths(sy, sz)),       # +x
        _quad((-hx, hy, 0), (0, -sy, 0), (0, 0, sz), *lengths(sy, sz)),      # -x
        _quad((-hx, -hy, sz), (sx, 0, 0), (0, sy, 0), *lengths(sx, sy)),     # top
        _quad((-hx, hy, 0), (sx, 0, 0), (0, -sy, 0), *lengths(sx, sy)),      # bottom
    ]
    return merge(faces)


def panel(width: float, height: float, z0: float = 0.0) -> Geo:
    """Vertical picture facing +y (a sign), the whole image once, upright and unmirrored."""
    return _quad((width / 2.0, 0.0, z0), (-width, 0, 0), (0, 0, height), 1.0, 1.0)


def cylinder(radius: float, height: float, segments: int = 12, tile_m: float = 1.0,
             caps: bool = True) -> Geo:
    """Upright cylinder standing on z=0 (trunks, posts, the fountain)."""
    a = np.linspace(0.0, 2 * np.pi, segments + 1)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1)
    pos = np.concatenate([ring * radius, ring * radius + [0, 0, height]])
    nrm = np.concatenate([ring, ring])
    circ = 2 * np.pi * radius / tile_m
    uvs = np.concatenate([np.stack([a / (2 * np.pi) * circ, np.zeros_like(a)], 1),
                          np.stack([a / (2 * np.pi) * circ, np.full_like(a, height / tile_m)],
                                   1)])
    n = segments + 1
    i = np.arange(segments)
    faces = np.concatenate([np.stack([i, i + 1, i + 1 + n], 1), np.stack([i, i + 1 + n, i + n],
                                                                          1)])
    side = Geo(pos.astype(np.float32), nrm.astype(np.float32), uvs.astype(np.float32),
               faces.astype(np.uint32))
    if not caps:
        return side
    cap_pos = np.concatenate([[[0, 0, height]], ring[:-1] * radius + [0, 0, height]])
    cap_uv = cap_pos[:, :2] / tile_m
    j = np.arange(segments)
    cap = Geo(cap_pos.astype(np.float32), np.tile([0, 0, 1.0], (segments + 1, 1)).astype(
        np.float32), cap_uv.astype(np.float32),
        np.stack([np.zeros(segments), 1 + j, 1 + (j + 1) % segments], 1).astype(np.uint32))
    return merge([side, cap])


def blob(rx: float, ry: float, rz: float, rng: np.random.Generator, bump: float = 0.15,
         rings: int = 10, segments: int = 16, tile_m: float = 1.0) -> Geo:
    """
    Bumpy ellipsoid centred at the origin (tree crowns, bushes, statue bodies).

    Low-frequency random bumps keep crowns from looking like spheres; normals are recomputed
    from the displaced surface so the bumps catch the light.
    """
    th = np.linspace(0.0, np.pi, rings + 1)          # polar angle
    ph = np.linspace(0.0, 2 * np.pi, segments + 1)   # azimuth
    T, P = np.meshgrid(th, ph, indexing='ij')
    d = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], axis=-1)
    k = rng.normal(size=(3, 3))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    r = 1.0 + bump * sum(np.sin(d @ k[i] * 2.5 + phase[i]) for i in range(3)) / 3.0
    # the seam (P = 0 and 2pi) and the poles must not split
    r[:, -1] = r[:, 0]
    r[0, :] = r[0, 0]
    r[-1, :] = r[-1, 0]
    pos = d * r[..., None] * np.array([rx, ry, rz])
    uvs = np.stack([P / (2 * np.pi) * (2 * np.pi * max(rx, ry) / tile_m),
                    (np.pi - T) / np.pi * (np.pi * rz / tile_m)], axis=-1)
    ii, jj = np.meshgrid(np.arange(rings), np.arange(segments), indexing='ij')
    a = ii * (segments + 1) + jj
    b = a + segments + 1
    faces = np.concatenate([np.stack([a, b, b + 1], -1).reshape(-1, 3),
                            np.stack([a, b + 1, a + 1], -1).reshape(-1, 3)])
    pos = pos.reshape(-1, 3)
    normals = _vertex_normals(pos, faces)
    return Geo(pos.astype(np.float32), normals.astype(np.float32),
               uvs.reshape(-1, 2).astype(np.float32), faces.astype(np.uint32))


def _vertex_normals(pos: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals; poles/seams are duplicated vertices, so pool by position."""
    fn = np.cross(pos[faces[:, 1]] - pos[faces[:, 0]], pos[faces[:, 2]] - pos[faces[:, 0]])
    key = np.round(pos, 6)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    acc = np.zeros((inv.max() + 1, 3))
    for c in range(3):
        np.add.at(acc, inv[faces[:, c]], fn)
    n = acc[inv]
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
