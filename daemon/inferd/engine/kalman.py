"""A constant-velocity Kalman filter over many boxes at once: ByteTrack's, in seconds, vectorized.

State per box: centre x, centre y, aspect (w/h), height, and their velocities per second. The
noise is ByteTrack's (scaled by the box height), stated per 1/30 s step and scaled by the time that
passed, so one filter serves sources at any frame rate. ByteTrack's filter never couples the four
coordinates (its transition, noises and first covariance all keep them apart), so each box's 8x8
covariance is four independent 2x2 blocks, kept as three numbers per coordinate: every step is
elementwise over all boxes, no 8x8 products, no solve, no Python per box.

The filters are the columns of a [21, n] array, one row per number, so each step is a handful of
operations on whole rows whatever n (on a small board, numpy's cost per call, not per number, is
what a frame pays): rows 0-7 the mean (x, y, a, h, then their velocities), 8-11 the position
variances, 12-15 the position-velocity covariances, 16-19 the velocity variances of x, y, a, h,
and row 20 a constant 1, so that one matrix product moves every filter on by a time step, the
constant part of the noise included. Measurements are columns too: [4, n] rows x, y, a, h.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

STEP_S = 1 / 30  # ByteTrack's noise is per frame at 30 fps; here it is per STEP_S of time
POS, VEL = 1 / 20, 1 / 160  # ByteTrack's std weights: fractions of the height per step
WIDTH = 20  # numbers per box (then the row of ones)
ROWS = WIDTH + 1
_H = np.array([1.0, 1.0, 0.0, 1.0])  # the coordinates whose noise scales with the height
_A = np.array([0.0, 0.0, 1.0, 0.0])  # the aspect's, absolute
# the process noise per step as a column over the 20 rows: a part times the height squared, a
# constant part (the mean rows and the position-velocity covariances get none)
_Q_H = np.concatenate([np.zeros(8), POS**2 * _H, np.zeros(4), (VEL / STEP_S) ** 2 * _H])[:, None]
_Q_A = np.concatenate([np.zeros(8), 1e-2**2 * _A, np.zeros(4), (1e-5 / STEP_S) ** 2 * _A])[:, None]
_R_H, _R_A = (POS**2 * _H)[:, None], (1e-1**2 * _A)[:, None]  # the measurement noise, likewise


def _var(h: np.ndarray, weight: float, aspect: float) -> np.ndarray:
    """[4, n] variances: (weight * height)^2 for x, y, h; aspect^2 for the aspect."""
    return (weight**2 * _H)[:, None] * (h * h) + (aspect**2 * _A)[:, None]


_TO_XYAH = np.array([[0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [-1, 0, 1, 0], [0, -1, 0, 1.0]])  # -> x, y, w, h
_TO_XYXY = np.array([[1, 0, -0.5, 0], [0, 1, 0, -0.5], [1, 0, 0.5, 0], [0, 1, 0, 0.5]])  # x, y, w, h ->


def xyah(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] x1, y1, x2, y2 boxes -> [4, n] measurements: centre x, centre y, w/h, h."""
    out = _TO_XYAH @ boxes.T
    np.maximum(out[3], 1e-6, out=out[3])
    out[2] /= out[3]
    return out


def xyxy(x: np.ndarray) -> np.ndarray:
    """[4, n] x1, y1, x2, y2 rows of the boxes of filter (or measurement) columns."""
    xywh = x[:4].copy()
    xywh[2] *= x[3]
    return _TO_XYXY @ xywh


def initiate(z: np.ndarray, out: np.ndarray) -> None:
    """Filters of new boxes from [4, n] measurements, standing still, written into the [21, n] `out`."""
    out[:4] = z
    out[4:8] = 0
    out[8:12] = _var(z[3], 2 * POS, 1e-2)
    out[12:16] = 0
    out[16:20] = _var(z[3], 10 * VEL / STEP_S, 1e-5 / STEP_S)
    out[20] = 1


@lru_cache(maxsize=8)
def _step(dt: float) -> tuple[np.ndarray, np.ndarray]:
    """A step of `dt` seconds: the [20, 21] matrix that moves the mean by its velocity, takes each
    coordinate's [pp, pv, vv] to F P F^T with F = [[1, dt], [0, 1]] and adds the constant part of
    the noise (by the row of ones); the noise per height squared, a [20, 1] column. The variance
    of a random walk grows with time: the noise is the per-step noise times the steps passed."""
    m = np.eye(WIDTH, ROWS)
    i = np.arange(4)
    m[i, i + 4] = dt  # x += dt v
    m[i + 8, i + 12], m[i + 8, i + 16] = 2 * dt, dt * dt  # pp += 2 dt pv + dt^2 vv
    m[i + 12, i + 16] = dt  # pv += dt vv
    m[:, WIDTH] = _Q_A[:, 0] * (dt / STEP_S)
    q = _Q_H * (dt / STEP_S)
    m.flags.writeable = q.flags.writeable = False
    return m, q


def predict(x: np.ndarray, dt: float) -> None:
    """Every filter (the columns of the [21, n] `x`) moved on by `dt` seconds, in place."""
    if not x.shape[1] or dt <= 0:
        return
    m, q = _step(dt)
    h2 = x[3] * x[3]
    out = m @ x
    out += q * h2
    np.maximum(out[2:4], 1e-2, out=out[2:4])  # a shrinking box stops short of nothing
    x[:WIDTH] = out


def update(x: np.ndarray, z: np.ndarray) -> None:
    """Filters [21, k] corrected by their [4, k] measurements, in place."""
    s = _R_H * (x[3] * x[3])
    s += _R_A
    s += x[8:12]
    gain = x[8:16].reshape(2, 4, -1) / s  # position's, velocity's
    x[:8].reshape(2, 4, -1)[:] += gain * (z - x[:4])
    # P - K S K^T: vv - kv pv (with the old pv), then pp - kp pp, pv - kp pv
    x[16:20] -= gain[1] * x[12:16]
    x[8:16].reshape(2, 4, -1)[:] *= 1 - gain[0]
