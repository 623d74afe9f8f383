"""Association for the tracker: IoU between boxes and the assignment of detections to tracks.

The assignment is a maximum-weight bipartite matching (weight = IoU - threshold, only where
positive), what ByteTrack gets from `lap.lapjv(cost, extend_cost=True, cost_limit=1 - iou)`. It
splits exactly along the connected components of the graph of candidate pairs. Most tracking
frames have no competition at all (one object, one box): `one_to_one` sees that in a few
vectorized operations, and the candidate pairs are the matching. Otherwise `assign` takes the pairs
alone in their row and their column as they are, splits the rest into its components (boxes
competing where objects cross: 1x2, 2x2, rarely more), solves a one-row, one-column or two-row
component directly, and runs the Hungarian algorithm (shortest augmenting paths with row and
column potentials, each step vectorized over the columns) only on a bigger one.

Measured: benchmarks/tracking.py (results/tracking.json; docs/tracking.md has the table). `greedy`
(best IoU first, a Python loop over the candidate pairs) is there for comparison: slower in numpy
and not optimal where boxes crowd (tests/test_tracking.py has a 2x2 case). No scipy: ~30 MB on
arm64, and off the daemon's path.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every [x1, y1, x2, y2] box of `a` (rows) with every box of `b` (columns)."""
    return iou_rows(np.asarray(a, np.float64), np.asarray(b, np.float64).T)


def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` ([m, 4] x1, y1, x2, y2) with every box of `b` ([4, n] rows x1, y1,
    x2, y2): [m, n]. Both corners of the intersections in one operation each ([m, n, 2])."""
    bt = b.T
    hi = np.minimum(a[:, None, 2:], bt[:, 2:])
    hi -= np.maximum(a[:, None, :2], bt[:, :2])
    np.maximum(hi, 0, out=hi)
    inter = hi[..., 0] * hi[..., 1]
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + (b[2] - b[0]) * (b[3] - b[1])
    union -= inter
    np.maximum(union, 1e-9, out=union)
    inter /= union
    return inter


def hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row of an n x m cost matrix (n <= m): the column of each
    row. Shortest augmenting paths with row/column potentials (the O(n^2 m) Hungarian method)."""
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, np.int64)  # owner[j]: the row (1-based) holding column j; 0 = free
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used
            free[0] = False
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            cand = np.where(free, minv, np.inf)
            j1 = int(np.argmin(cand))
            delta = cand[j1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.zeros(n, np.int64)
    taken = np.flatnonzero(owner[1:]) + 1
    cols[owner[taken] - 1] = taken - 1
    return cols


def one_to_one(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The (rows, columns) of the positive weights when no row and no column has two (the usual
    tracking frame: one object, one box; then they are the matching); None when some compete."""
    r, c = (weight > 0).nonzero()
    if len(r) < 2 or (np.bincount(c).max() == 1 and not np.count_nonzero(r[1:] == r[:-1])):  # r is sorted
        return r, c
    return None


def assign(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-weight matching of a rows x columns weight matrix, only on positive weights:
    (rows, columns) of the matched pairs."""
    one = one_to_one(weight)
    if one is not None:
        return one
    r, c = (weight > 0).nonzero()
    per_row, per_col = np.bincount(r, minlength=len(weight)), np.bincount(c, minlength=len(weight[0]))
    alone = per_row[r] == 1
    alone &= per_col[c] == 1
    rows, cols = [r[alone]], [c[alone]]
    for sr, sc in _components(r[~alone].tolist(), c[~alone].tolist()):
        sub = np.fmax(weight[sr[:, None], sc], 0)  # a pair left unmatched counts 0, not less (nor NaN)
        i, j = _small(sub) if len(sr) <= 2 or len(sc) == 1 else _square(sub)
        ok = sub[i, j] > 0
        rows.append(sr[i[ok]])
        cols.append(sc[j[ok]])
    return np.concatenate(rows), np.concatenate(cols)


def _components(r: list[int], c: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The connected components of the bipartite graph of pairs (r[k], c[k]): (rows, columns) of
    each. The matching splits exactly along them, and they are small (boxes competing where
    objects cross) where the whole can be large (a crowd)."""
    parent: dict[int, int] = {}  # rows as themselves, columns as -1 - column

    def root(a: int) -> int:
        while parent.setdefault(a, a) != a:
            parent[a] = a = parent[parent[a]]
        return a

    for i, j in zip(r, c, strict=True):
        parent[root(i)] = root(-1 - j)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for a in list(parent):
        rows, cols = groups.setdefault(root(a), ([], []))
        (rows if a >= 0 else cols).append(a if a >= 0 else -1 - a)
    return [(np.array(sorted(rows)), np.array(sorted(cols))) for rows, cols in groups.values()]


def _square(sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Hungarian method on the smaller side of `sub`."""
    if len(sub) <= len(sub[0]):
        return np.arange(len(sub)), hungarian(-sub)
    return hungarian(-sub.T), np.arange(len(sub[0]))


def _small(sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best assignment of a one-column, one-row or two-row `sub` (weights >= 0), the cases
    where boxes compete in a tracking frame nearly always, without the Hungarian method's loop:
    the best pair, or the better of a two-row matrix's pairs of pairs."""
    if len(sub[0]) == 1 or len(sub) == 1:
        k = int(np.argmax(sub))
        return np.array([k // len(sub[0])]), np.array([k % len(sub[0])])
    # two rows: row 0 takes column i, row 1 the best other column, for each i
    best1 = np.argsort(-sub[1], kind="stable")[:2]  # row 1's two best columns
    other = np.where(np.arange(len(sub[0])) == best1[0], best1[1], best1[0])
    total = sub[0] + sub[1, other]
    i = int(np.argmax(total))
    return np.array([0, 1]), np.array([i, int(other[i])])


def greedy(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best pair first (for comparison with `assign`): not optimal when boxes crowd."""
    r, c = np.nonzero(weight > 0)
    rows: list[int] = []
    cols: list[int] = []
    for k in np.argsort(-weight[r, c], kind="stable").tolist():
        if r[k] not in rows and c[k] not in cols:
            rows.append(int(r[k]))
            cols.append(int(c[k]))
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)
