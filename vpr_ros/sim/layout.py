"""
The garden's fixed layout: a 3x3 grid of path crossings and the distance to the paths.

Split from `world.py` (which places everything else around these paths) to keep modules small.
"""
import numpy as np

HALF_SIZE_M = 20.0      # the garden spans [-20, 20] m in x and y
GRID_M = 14.0           # path crossings at -14, 0, +14 in x and y
PATH_HALF_WIDTH_M = 1.0
NODE_NAMES = {(-1, -1): 'SW', (0, -1): 'S', (1, -1): 'SE', (-1, 0): 'W', (0, 0): 'C',
              (1, 0): 'E', (-1, 1): 'NW', (0, 1): 'N', (1, 1): 'NE'}


def edge_key(a: str, b: str) -> tuple[str, str]:
    """One name per undirected path segment, whichever end it is named from."""
    return (a, b) if a < b else (b, a)


def path_graph() -> tuple[dict[str, tuple[float, float]], list[tuple[str, str]]]:
    """Crossings (name -> x, y) and the path segments between grid neighbours."""
    nodes = {name: (i * GRID_M, j * GRID_M) for (i, j), name in NODE_NAMES.items()}
    edges = []
    for (i, j), name in NODE_NAMES.items():
        if i < 1:
            edges.append(edge_key(name, NODE_NAMES[(i + 1, j)]))
        if j < 1:
            edges.append(edge_key(name, NODE_NAMES[(i, j + 1)]))
    return nodes, sorted(edges)


def distance_to_paths(x: float, y: float) -> float:
    """Distance of a point to the nearest path centre line (the grid lines, clipped)."""
    d = np.inf
    for c in (-GRID_M, 0.0, GRID_M):
        if -GRID_M <= y <= GRID_M:
            d = min(d, abs(x - c))
        else:
            d = min(d, np.hypot(x - c, abs(y) - GRID_M))
        if -GRID_M <= x <= GRID_M:
            d = min(d, abs(y - c))
        else:
            d = min(d, np.hypot(y - c, abs(x) - GRID_M))
    return float(d)
