"""The plane geometry of zones (zones.py), vectorized over points: which polygons a point is in,
which side of a line it is on, whether a step crosses a segment. Frame pixels, y down.
"""

from __future__ import annotations

import numpy as np

# The point of a box [x1, y1, x2, y2] that places an object: fractions of its width and height.
ANCHORS = {"bottom_center": (0.5, 1.0), "center": (0.5, 0.5), "top_center": (0.5, 0.0)}


def edges(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All the polygons' edges as one [5, E] table (x1, y1, y2, dx/dy, spans nothing) and where
    each polygon's edges start: `crossings` tests points against all of them at once."""
    rows, starts = [], []
    for poly in polygons:
        starts.append(sum(len(r[0]) for r in rows))
        x1, y1 = poly[:, 0], poly[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        flat = y1 == y2  # a horizontal edge spans no height: never crossed by the ray
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(flat, 0.0, (x2 - x1) / (y2 - y1))
        rows.append(np.stack([x1, y1, y2, slope, flat]))
    return np.concatenate(rows, axis=1), np.array(starts)


def crossings(points: np.ndarray, table: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """[n, polygons] whether each [n, 2] point is inside each polygon of an `edges` table (the
    even-odd rule: a ray to the left of the point crosses the border an odd number of times)."""
    x, y = points[:, :1], points[:, 1:]
    x1, y1, y2, slope = table[0], table[1], table[2], table[3]
    hit = ((y1 > y) != (y2 > y)) & (x < x1 + (y - y1) * slope)
    return (np.add.reduceat(hit, starts, axis=1) & 1).astype(bool)


def inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """[n] whether each [n, 2] point is inside the [m, 2] polygon (even-odd rule)."""
    return crossings(points, *edges([np.asarray(poly, np.float64)]))[:, 0]


def side(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] the sign of the cross product (b - a) x (p - a): -1 left, +1 right walking a -> b (y down)."""
    d = b - a
    return np.sign(d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0])).astype(np.int8)


def cuts(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] whether each segment p -> q ([n, 2] each) meets the segment a -> b."""
    s1, s2 = side(p, a, b), side(q, a, b)
    d = q - p
    t1 = np.sign(d[:, 0] * (a[1] - p[:, 1]) - d[:, 1] * (a[0] - p[:, 0]))
    t2 = np.sign(d[:, 0] * (b[1] - p[:, 1]) - d[:, 1] * (b[0] - p[:, 0]))
    return (s1 * s2 <= 0) & (t1 * t2 <= 0)
