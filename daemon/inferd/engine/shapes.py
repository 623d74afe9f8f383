"""The plane geometry of zones (zones.py), vectorized over points: which polygons a point is in,
which side of a line it is on, whether a step crosses a segment. Frame pixels, y down.

Every test a frame needs is the sign of a linear form of the point: whether a polygon's vertex is
below it, whether it is left of an edge where the edge spans its height, which side of a line it
is on. The point is an anchor of a box, (centre x, centre y + lift x height), so each form is
linear in the box's (centre x, centre y, height, 1): one matrix product tests every object
against every vertex, edge and line of a source at once (zones.py).
"""

from __future__ import annotations

import numpy as np

# The point of a box [x1, y1, x2, y2] that places an object: fractions of its width and height.
ANCHORS = {"bottom_center": (0.5, 1.0), "center": (0.5, 0.5), "top_center": (0.5, 0.0)}


def polygon_forms(polygons: list[np.ndarray], lifts: list[float]) -> tuple[np.ndarray, ...]:
    """The forms of the even-odd rule (a ray to the left of the point crosses the border an odd
    number of times) for `polygons` whose anchors are `lifts` heights below the box centre: [V + E,
    4] weights of (centre x, centre y, height, 1), first the vertices' (> 0: the vertex is below
    the point, y_v > y), then the edges' (> 0: the point is left of where the edge's line is at its
    height); the index of each vertex's next one; where each polygon's rows start."""
    vertex, edge, nxt, starts = [], [], [], []
    for poly, lift in zip(polygons, lifts, strict=True):
        first = len(vertex)
        starts.append(first)
        x1, y1 = poly[:, 0], poly[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        flat = y1 == y2  # a horizontal edge spans no height: never crossed by the ray
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(flat, 0.0, (x2 - x1) / (y2 - y1))
        for k in range(len(poly)):
            vertex.append((0.0, -1.0, -lift, y1[k]))  # y_v - y
            edge.append((-1.0, slope[k], slope[k] * lift, x1[k] - slope[k] * y1[k]))  # the edge's x - x
            nxt.append(first + (k + 1) % len(poly))
    return np.array(vertex + edge).reshape(-1, 4), np.array(nxt, np.int64), np.array(starts, np.int64)


def line_forms(lines: list[np.ndarray], lifts: list[float]) -> np.ndarray:
    """[lines, 4] weights of (centre x, centre y, height, 1) whose sign is the side of each line
    (a -> b) the anchor is on, as `side`: -1 left, +1 right walking a -> b (y down)."""
    out = []
    for (a, b), lift in zip(lines, lifts, strict=True):
        dx, dy = b - a
        out.append((-dy, dx, dx * lift, dy * a[0] - dx * a[1]))  # dx (y - ay) - dy (x - ax)
    return np.array(out, np.float64).reshape(-1, 4)


def crossings(signs: np.ndarray, nxt: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """[polygons, n] whether each point is inside each polygon, from its `polygon_forms` signs
    ([V + E, n] bools: the form > 0)."""
    below = signs[: len(nxt)]
    hit = below != below[nxt]  # the edge from this vertex to the next spans the point's height
    hit &= signs[len(nxt) :]
    return np.logical_xor.reduceat(hit, starts, axis=0)


def inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """[n] whether each [n, 2] point is inside the [m, 2] polygon (even-odd rule)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    forms, nxt, starts = polygon_forms([np.asarray(poly, np.float64)], [0.0])
    rows = np.stack([points[:, 0], points[:, 1], np.zeros(len(points)), np.ones(len(points))])
    return crossings(forms @ rows > 0, nxt, starts)[0]


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
