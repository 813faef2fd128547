"""
The garden: a seeded, deterministic layout of lawns, gravel paths, hedges, trees and landmarks.

About 40 m x 40 m (x east, y north, z up, REP-103). Gravel paths form a 3x3 grid of crossings
14 m apart, i.e. four loops a robot can drive. The four lawns between them get a theme each
(orchard, shed and beds, pond, parterre with a fountain), in an order and with positions that
depend on the seed. Hedges, lamp posts, trees and bushes repeat all over the garden, which is
what makes it hard for place recognition; signs with photographs, statues, the shed and the
fountain are the few distinctive places.

A world is only geometry and material names; `scene.py` turns it into a pyrender scene under a
condition (light, season, fog).
"""
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.sim import geometry as G
from vpr_ros.sim.layout import (
    distance_to_paths,
    GRID_M,
    HALF_SIZE_M,
    path_graph,
    PATH_HALF_WIDTH_M,
)
from vpr_ros.sim.textures import PHOTO_NAMES, photo_uv_rect

LANTERN_Z_M = 2.8     # bottom of a lamp's lantern, under its 3 m post's head
# Material kinds the season changes: colour factors (and crown size for 'crown').
KINDS = ('static', 'grass', 'hedge', 'crown', 'bush', 'flowers')


@dataclass
class Part:
    """
    One mesh of the world: geometry, texture name, season kind, optional instance poses.

    Instances (K,4,4) draw one geometry many times in one call (trees, bushes); their scale is
    multiplied by the season's foliage density when kind is 'crown' or 'bush'.
    """

    name: str
    geo: G.Geo
    material: str
    kind: str = 'static'
    instances: np.ndarray | None = None


@dataclass
class GardenWorld:
    """All parts plus the path graph the trajectories drive on."""

    seed: int
    parts: list[Part] = field(default_factory=list)
    nodes: dict[str, tuple[float, float]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    landmarks: list[tuple[str, float, float]] = field(default_factory=list)
    lamps: list[tuple[float, float, float]] = field(default_factory=list)  # lantern x, y, z

    def mesh_count(self) -> int:
        return len(self.parts)


class _Builder:
    """Collects geometry per material and instance poses per shape while placing objects."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([int(seed), 11])
        self.geos: dict[tuple[str, str], list[G.Geo]] = {}
        self.instances: dict[str, list[np.ndarray]] = {}
        self.shapes: dict[str, tuple[G.Geo, str, str]] = {}
        self.occupied: list[tuple[float, float, float]] = []   # (x, y, radius) of placed things
        self.landmarks: list[tuple[str, float, float]] = []
        self.lamps: list[tuple[float, float, float]] = []

    def add(self, material: str, geo: G.Geo, kind: str = 'static') -> None:
        # one mesh per material: draw calls, not triangles, dominate pyrender's frame time
        self.geos.setdefault((material, kind), []).append(geo)

    def photo(self, geo: G.Geo, name: str) -> None:
        """Add a picture panel (uv in [0, 1]) showing one photo of the shared atlas."""
        u0, v0, u1, v1 = photo_uv_rect(name)
        uv = geo.uvs * np.array([u1 - u0, v1 - v0], np.float32) + np.array([u0, v0], np.float32)
        self.add('photos', G.Geo(geo.positions, geo.normals, uv, geo.faces))

    def instance(self, shape: str, matrix: np.ndarray) -> None:
        self.instances.setdefault(shape, []).append(matrix)

    def free(self, x: float, y: float, r: float, path_clear: float = 1.4) -> bool:
        if distance_to_paths(x, y) < PATH_HALF_WIDTH_M + path_clear + r * 0.5:
            return False
        return all(np.hypot(x - ox, y - oy) > r + orr for ox, oy, orr in self.occupied)

    def claim(self, x: float, y: float, r: float) -> None:
        self.occupied.append((x, y, r))


def generate_world(seed: int = 0) -> GardenWorld:
    """
    Build the garden for a seed: the same seed gives the same world, byte for byte.

    The layout keeps everything off the paths, so any trajectory on the path graph is free.
    """
    b = _Builder(seed)
    rng = b.rng
    nodes, edges = path_graph()
    _ground_and_paths(b, nodes, edges)
    _boundary(b)
    _shapes(b)
    _path_furniture(b, nodes, edges)
    themes = ['orchard', 'shed', 'pond', 'parterre']
    order = rng.permutation(4)
    centres = [(-7.0, -7.0), (7.0, -7.0), (-7.0, 7.0), (7.0, 7.0)]
    for k, c in zip(order, centres):
        {'orchard': _orchard, 'shed': _shed, 'pond': _pond,
         'parterre': _parterre}[themes[k]](b, *c)
    _outer_trees(b)
    _scatter_bushes(b)

    world = GardenWorld(seed=int(seed), nodes=nodes, edges=edges, landmarks=b.landmarks,
                        lamps=b.lamps)
    for (material, kind), geos in b.geos.items():
        world.parts.append(Part(material, G.merge(geos), material, kind))
    for shape, mats in b.instances.items():
        geo, material, kind = b.shapes[shape]
        world.parts.append(Part(shape, geo, material, kind, instances=np.stack(mats)))
    return world


def _ground_and_paths(b: _Builder, nodes, edges) -> None:
    b.add('grass', G.ground_rect(-40, -40, 40, 40, 0.0, tile_m=1.6), 'grass')
    w = PATH_HALF_WIDTH_M
    for a, c in edges:
        (x0, y0), (x1, y1) = nodes[a], nodes[c]
        b.add('gravel', G.ground_rect(min(x0, x1) - w, min(y0, y1) - w,
                                               max(x0, x1) + w, max(y0, y1) + w, 0.01,
                                               tile_m=1.2))


def _boundary(b: _Builder) -> None:
    """Brick wall on one side, tall hedges on the others, a tree line beyond."""
    h = HALF_SIZE_M
    wall_side = int(b.rng.integers(4))
    for side in range(4):
        yaw = side * np.pi / 2.0
        c, s = np.cos(yaw), np.sin(yaw)
        # side 0 is the east edge (x = +h), running along y
        x, y = c * (h - 0.3), s * (h - 0.3)
        if side == wall_side:
            geo = G.box(0.4, 2 * h, 2.6, tile_m=2.0).transformed(G.pose_matrix(x, y, 0, yaw))
            b.add('brick', geo)
        else:
            geo = G.box(1.2, 2 * h, 2.3, tile_m=1.5).transformed(G.pose_matrix(x, y, 0, yaw))
            b.add('hedge', geo, 'hedge')
    # Big trees beyond the boundary give the skyline some shape (crowns only: walls hide trunks).
    for side in range(4):
        for t in np.arange(-h - 2, h + 2, 4.5) + b.rng.uniform(-1, 1):
            d = h + b.rng.uniform(2.5, 6.0)
            yaw = side * np.pi / 2.0
            x = np.cos(yaw) * d - np.sin(yaw) * t
            y = np.sin(yaw) * d + np.cos(yaw) * t
            r = b.rng.uniform(2.5, 4.0)
            b.instance('treeline', G.pose_matrix(x, y, b.rng.uniform(3.5, 5.5),
                                                 b.rng.uniform(0, 6.28),
                                                 (r, r, r * b.rng.uniform(1.0, 1.4))))


def _shapes(b: _Builder) -> None:
    """Define the unit shapes drawn by instancing (one draw call each, whatever the count)."""
    rng = b.rng
    b.shapes['trunks'] = (G.cylinder(1.0, 1.0, segments=8, tile_m=0.5, caps=False), 'bark',
                          'static')
    b.shapes['crowns'] = (G.blob(1, 1, 1, rng, bump=0.18, tile_m=0.6), 'foliage', 'crown')
    b.shapes['crowns2'] = (G.blob(1, 1, 1, rng, bump=0.25, tile_m=0.6), 'foliage2', 'crown')
    b.shapes['treeline'] = (G.blob(1, 1, 1, rng, bump=0.2, tile_m=0.8), 'foliage', 'crown')
    b.shapes['bushes'] = (G.blob(1, 1, 1, rng, bump=0.2, rings=8, segments=12, tile_m=0.5),
                          'bush', 'bush')


def _tree(b: _Builder, x: float, y: float, size: float = 1.0) -> None:
    rng = b.rng
    r_trunk = 0.12 + 0.06 * size
    h_trunk = (1.8 + rng.uniform(0, 0.8)) * size
    b.instance('trunks', G.pose_matrix(x, y, 0, 0, (r_trunk, r_trunk, h_trunk + 0.8)))
    shape = 'crowns' if rng.random() < 0.6 else 'crowns2'
    r = (1.3 + rng.uniform(0, 0.6)) * size
    b.instance(shape, G.pose_matrix(x, y, h_trunk + r * 0.8, rng.uniform(0, 6.28),
                                    (r, r * rng.uniform(0.85, 1.0), r * 1.1)))
    for _ in range(int(rng.integers(1, 3))):   # a lobe or two so crowns are not round
        a = rng.uniform(0, 6.28)
        rr = r * rng.uniform(0.5, 0.7)
        b.instance(shape, G.pose_matrix(x + np.cos(a) * r * 0.6, y + np.sin(a) * r * 0.6,
                                        h_trunk + r * rng.uniform(0.4, 1.1), a, rr))
    b.claim(x, y, 1.0)


def _bush(b: _Builder, x: float, y: float, r: float) -> None:
    b.instance('bushes', G.pose_matrix(x, y, r * 0.35, b.rng.uniform(0, 6.28),
                                       (r, r * b.rng.uniform(0.8, 1.0), r * 0.8)))
    b.claim(x, y, r)


def _bench(b: _Builder, x: float, y: float, yaw: float) -> None:
    """Place a wooden bench whose seat faces +y of its own frame (turned towards a path)."""
    parts = [G.box(1.6, 0.45, 0.07, tile_m=0.8).transformed(G.pose_matrix(0, 0, 0.43)),
             G.box(1.6, 0.06, 0.45, tile_m=0.8).transformed(G.pose_matrix(0, -0.22, 0.55))]
    for lx in (-0.7, 0.7):
        for ly in (-0.18, 0.18):
            parts.append(G.box(0.07, 0.07, 0.43, tile_m=0.8).transformed(
                G.pose_matrix(lx, ly, 0)))
    m = G.pose_matrix(x, y, 0, yaw)
    for p in parts:
        b.add('wood', p.transformed(m))
    b.claim(x, y, 0.9)
    b.landmarks.append(('bench', x, y))


def _sign(b: _Builder, x: float, y: float, yaw: float, photo: str) -> None:
    """Place an information board with a photograph, facing +y of its own frame."""
    m = G.pose_matrix(x, y, 0, yaw)
    for px in (-0.5, 0.5):
        b.add('metal', G.cylinder(0.04, 1.9, segments=6).transformed(
            m @ G.pose_matrix(px, -0.03)))
    b.add('metal', G.box(1.1, 0.04, 0.85, tile_m=1.0).transformed(
        m @ G.pose_matrix(0, -0.03, 1.0)))
    b.photo(G.panel(1.0, 0.75, 1.05).transformed(m), photo)
    b.claim(x, y, 0.7)
    b.landmarks.append((f'sign_{photo}', x, y))


def _statue(b: _Builder, x: float, y: float, yaw: float) -> None:
    rng = b.rng
    m = G.pose_matrix(x, y, 0, yaw)
    b.add('stone', G.box(0.8, 0.8, 1.0, tile_m=1.0).transformed(m))
    body = G.blob(0.32, 0.25, 0.65, rng, bump=0.12, tile_m=1.0)
    head = G.blob(0.18, 0.18, 0.22, rng, bump=0.05, tile_m=1.0)
    arm = G.blob(0.1, 0.1, 0.45, rng, bump=0.05, tile_m=1.0)
    b.add('stone', body.transformed(m @ G.pose_matrix(0, 0, 1.65)))
    b.add('stone', head.transformed(m @ G.pose_matrix(0, 0, 2.45)))
    b.add('stone', arm.transformed(m @ G.pose_matrix(0.33, 0.1, 2.0, 0.0)))
    b.claim(x, y, 0.8)
    b.landmarks.append(('statue', x, y))


def _lamp(b: _Builder, x: float, y: float) -> None:
    """Place a lamp post; its lantern (under the head) is where the night light comes from."""
    b.add('metal', G.cylinder(0.06, 3.0, segments=6).transformed(G.pose_matrix(x, y)))
    b.add('metal', G.box(0.3, 0.3, 0.35, tile_m=1.0).transformed(
        G.pose_matrix(x, y, 3.0)))
    b.lamps.append((float(x), float(y), LANTERN_Z_M))


def _path_furniture(b: _Builder, nodes, edges) -> None:
    """Hedges lining paths, lamp posts, benches and signs beside them."""
    rng = b.rng
    photos = list(rng.permutation(PHOTO_NAMES))
    off = PATH_HALF_WIDTH_M + 0.9
    for k, (a, c) in enumerate(edges):
        (x0, y0), (x1, y1) = np.array(nodes[a]), np.array(nodes[c])
        along = np.array([x1 - x0, y1 - y0]) / GRID_M
        normal = np.array([-along[1], along[0]])
        yaw = np.arctan2(along[1], along[0])
        p0 = np.array([x0, y0])
        hedge_sides = [s for s in (-1, 1) if rng.random() < 0.55]
        gap = rng.uniform(4.5, 9.5)
        for s in hedge_sides:
            hh = rng.uniform(0.9, 1.5)
            segs = [(2.2, gap - 1.2), (gap + 1.2, GRID_M - 2.2)] if rng.random() < 0.6 else \
                [(2.2, GRID_M - 2.2)]
            for t0, t1 in segs:
                if t1 - t0 < 1.0:
                    continue
                cx, cy = p0 + along * (t0 + t1) / 2 + normal * s * (off + 0.1)
                geo = G.box(t1 - t0, 0.7, hh, tile_m=1.2)
                b.add('hedge', geo.transformed(G.pose_matrix(cx, cy, 0, yaw)), 'hedge')
                for t in np.arange(t0, t1, 1.0):
                    bx, by = p0 + along * t + normal * s * (off + 0.1)
                    b.claim(bx, by, 0.5)
        # lamp posts on one side every 7 m: the same object over and over
        ls = 1 if k % 2 == 0 else -1
        for t in (3.5, 10.5):
            lx, ly = p0 + along * t + normal * ls * (off - 0.4)
            _lamp(b, lx, ly)
            b.claim(lx, ly, 0.3)
        free_sides = [s for s in (-1, 1) if s not in hedge_sides] or [1]
        if rng.random() < 0.45:
            s = free_sides[int(rng.integers(len(free_sides)))]
            t = rng.uniform(5.0, 9.0)
            bx, by = p0 + along * t + normal * s * (off + 0.5)
            _bench(b, bx, by, yaw + (0 if s < 0 else np.pi))
        if photos and rng.random() < 0.6:
            s = free_sides[int(rng.integers(len(free_sides)))]
            t = rng.uniform(4.0, 10.0)
            sx, sy = p0 + along * t + normal * s * (off + 0.4)
            if b.free(sx, sy, 0.6, path_clear=0.2):
                # face the path at 45 degrees so the picture is seen when driving by
                _sign(b, sx, sy, yaw + (0 if s < 0 else np.pi) + rng.choice([-0.6, 0.6]),
                      str(photos.pop()))


def _orchard(b: _Builder, cx: float, cy: float) -> None:
    rng = b.rng
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            x = cx + i * 3.4 + rng.uniform(-0.3, 0.3)
            y = cy + j * 3.4 + rng.uniform(-0.3, 0.3)
            if b.free(x, y, 0.8):
                _tree(b, x, y, size=0.8)


def _shed(b: _Builder, cx: float, cy: float) -> None:
    rng = b.rng
    sx, sy = cx + np.sign(cx) * 2.5, cy + np.sign(cy) * 2.5
    yaw = rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2])
    m = G.pose_matrix(sx, sy, 0, yaw)
    w, d, h = 3.2, 2.4, 2.2
    b.add('shed_wood', G.box(w, d, h, tile_m=2.0).transformed(m))
    b.add('wood', G.panel(0.9, 1.9, 0.0).transformed(
        m @ G.pose_matrix(-0.6, d / 2 + 0.01)))
    b.photo(G.panel(0.7, 0.8, 1.0).transformed(m @ G.pose_matrix(0.8, d / 2 + 0.01)),
            'grace_hopper')
    ridge = h + 0.9
    for s in (-1, 1):   # two roof planes overhanging the walls
        p0 = np.array([-w / 2 - 0.2, s * (d / 2 + 0.3), h - 0.15])
        top = np.array([-w / 2 - 0.2, 0.0, ridge])
        du, dv = np.array([w + 0.4, 0, 0]), top - p0
        if s < 0:
            geo = G._quad(p0, du, dv, (w + 0.4) / 1.5, np.linalg.norm(dv) / 1.5)
        else:
            geo = G._quad(p0 + du, -du, dv, (w + 0.4) / 1.5, np.linalg.norm(dv) / 1.5)
        b.add('roof', geo.transformed(m))
    for s in (-1, 1):   # gable triangles
        x = s * w / 2
        tri = np.array([[x, -d / 2, h], [x, d / 2, h], [x, 0.0, ridge]])
        if s < 0:
            tri = tri[::-1]
        n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        n /= np.linalg.norm(n)
        geo = G.Geo(tri.astype(np.float32), np.tile(n, (3, 1)).astype(np.float32),
                    (tri[:, 1:] / 2.0).astype(np.float32), np.array([[0, 1, 2]], np.uint32))
        b.add('shed_wood', geo.transformed(m))
    b.claim(sx, sy, 2.2)
    b.landmarks.append(('shed', sx, sy))
    # vegetable / flower beds in rows next to it
    for k in range(2):
        bx = cx - np.sign(cx) * 2.0 + (k - 0.5) * 3.0
        by = cy - np.sign(cy) * 2.0
        if b.free(bx, by, 1.2, path_clear=0.3):
            b.add(f'flowers{k + 2}', G.box(2.0, 3.0, 0.2, tile_m=1.0).transformed(
                G.pose_matrix(bx, by)), 'flowers')
            b.claim(bx, by, 1.4)
    for _ in range(3):
        x, y = cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4)
        if b.free(x, y, 0.8):
            _bush(b, x, y, rng.uniform(0.5, 0.9))


def _pond(b: _Builder, cx: float, cy: float) -> None:
    rng = b.rng
    px, py = cx + rng.uniform(-0.8, 0.8), cy + rng.uniform(-0.8, 0.8)
    r = 2.4
    b.add('stone', G.cylinder(r + 0.35, 0.25, segments=28, tile_m=0.8).transformed(
        G.pose_matrix(px, py)))
    b.add('water', G.cylinder(r, 0.27, segments=28, tile_m=2.0).transformed(
        G.pose_matrix(px, py)))
    b.claim(px, py, r + 0.5)
    b.landmarks.append(('pond', px, py))
    sx, sy = cx - np.sign(cx) * 3.8, cy - np.sign(cy) * 3.8
    if b.free(sx, sy, 0.6, path_clear=0.6):
        _statue(b, sx, sy, rng.uniform(0, 6.28))
    for _ in range(5):
        a = rng.uniform(0, 6.28)
        x, y = px + np.cos(a) * (r + 1.4), py + np.sin(a) * (r + 1.4)
        if b.free(x, y, 0.6):
            _bush(b, x, y, rng.uniform(0.4, 0.8))
    x, y = cx + np.sign(cx) * 3.8, cy + np.sign(cy) * 3.8
    if b.free(x, y, 1.0):
        _tree(b, x, y, 1.1)


def _parterre(b: _Builder, cx: float, cy: float) -> None:
    rng = b.rng
    m = G.pose_matrix(cx, cy)
    b.add('stone', G.cylinder(1.3, 0.5, segments=24, tile_m=0.8).transformed(m))
    b.add('stone', G.cylinder(0.18, 1.5, segments=10, tile_m=0.8).transformed(m))
    b.add('stone', G.cylinder(0.6, 0.15, segments=16, tile_m=0.8).transformed(
        m @ G.pose_matrix(0, 0, 1.5)))
    b.add('water', G.cylinder(1.15, 0.52, segments=24, tile_m=2.0).transformed(m))
    b.claim(cx, cy, 1.6)
    b.landmarks.append(('fountain', cx, cy))
    beds = rng.permutation(2)
    for k, (dx, dy) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        x, y = cx + dx * 3.4, cy + dy * 3.4
        pal = int(beds[k % 2])
        b.add(f'flowers{pal}', G.box(2.6, 2.6, 0.25, tile_m=1.0).transformed(
            G.pose_matrix(x, y)), 'flowers')
        b.claim(x, y, 1.6)
    for dx, dy in [(0, -1), (0, 1), (-1, 0), (1, 0)]:
        x, y = cx + dx * 3.6, cy + dy * 3.6
        _bush(b, x, y, 0.45)
    if rng.random() < 0.7:
        x, y = cx + np.sign(cx) * 4.3, cy - np.sign(cy) * 4.3
        if b.free(x, y, 0.6, path_clear=0.5):
            _statue(b, x, y, rng.uniform(0, 6.28))


def _outer_trees(b: _Builder) -> None:
    """Trees and bushes in the strip between the ring path and the boundary."""
    rng = b.rng
    for side in range(4):
        yaw = side * np.pi / 2.0
        for t in np.arange(-17.0, 17.0, 4.2) + rng.uniform(-1.0, 1.0):
            d = rng.uniform(16.6, 18.2)
            x = np.cos(yaw) * d - np.sin(yaw) * t
            y = np.sin(yaw) * d + np.cos(yaw) * t
            if rng.random() < 0.65:
                if b.free(x, y, 1.0, path_clear=0.8):
                    _tree(b, x, y, rng.uniform(0.9, 1.3))
            elif b.free(x, y, 0.8, path_clear=0.5):
                _bush(b, x, y, rng.uniform(0.6, 1.1))


def _scatter_bushes(b: _Builder) -> None:
    rng = b.rng
    for _ in range(40):
        x, y = rng.uniform(-13, 13), rng.uniform(-13, 13)
        if b.free(x, y, 0.7, path_clear=0.9):
            if rng.random() < 0.3:
                _tree(b, x, y, rng.uniform(0.8, 1.2))
            else:
                _bush(b, x, y, rng.uniform(0.4, 0.8))
