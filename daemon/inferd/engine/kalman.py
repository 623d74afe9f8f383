"""A constant-velocity Kalman filter over many boxes at once: ByteTrack's, in seconds, vectorized.

State per box: centre x, centre y, aspect (w/h), height, and their velocities per second. The
noise is ByteTrack's (scaled by the box height), stated per 1/30 s step and scaled by the time that
passed, so one filter serves sources at any frame rate. ByteTrack's filter never couples the four
coordinates (its transition, noises and first covariance all keep them apart), so each box's 8x8
covariance is four independent 2x2 blocks, kept as three numbers per coordinate: every step is
elementwise over all boxes, no 8x8 products, no solve, no Python per box.

A box's filter is one row of 20 numbers: the mean (x, y, a, h, then their velocities), then the
position variances, the position-velocity covariances and the velocity variances of x, y, a, h.
"""

from __future__ import annotations

import numpy as np

STEP_S = 1 / 30  # ByteTrack's noise is per frame at 30 fps; here it is per STEP_S of time
POS, VEL = 1 / 20, 1 / 160  # ByteTrack's std weights: fractions of the height per step
WIDTH = 20  # numbers per box
_H = np.array([1.0, 1.0, 0.0, 1.0])  # the coordinates whose noise scales with the height
_A = np.array([0.0, 0.0, 1.0, 0.0])  # the aspect's, absolute
# the process noise per step, rows [pp, pv, vv] x columns [x, y, a, h]: a part times the height
# squared, a constant part
_Q_H = np.stack([POS**2 * _H, 0 * _H, (VEL / STEP_S) ** 2 * _H])
_Q_A = np.stack([1e-2**2 * _A, 0 * _A, (1e-5 / STEP_S) ** 2 * _A])
_GAIN_ROWS, _COV_ROWS = np.array([0, 0, 1]), np.array([0, 1, 1])


def _var(h: np.ndarray, weight: float, aspect: float) -> np.ndarray:
    """[n, 4] variances: (weight * height)^2 for x, y, h; aspect^2 for the aspect."""
    return (h * h)[:, None] * (weight**2 * _H) + aspect**2 * _A


def xyah(boxes: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] -> [centre x, centre y, w/h, h]."""
    wh = boxes[:, 2:] - boxes[:, :2]
    out = np.empty((len(boxes), 4))
    out[:, :2] = boxes[:, :2] + wh / 2
    out[:, 3] = np.maximum(wh[:, 1], 1e-6)
    out[:, 2] = wh[:, 0] / out[:, 3]
    return out


def xyxy(state: np.ndarray) -> np.ndarray:
    """The box [x1, y1, x2, y2] of each filter (or xyah measurement) row."""
    half = state[:, 2:4] / 2
    half[:, 0] *= state[:, 3]
    out = np.empty((len(state), 4))
    out[:, :2] = state[:, :2] - half
    out[:, 2:] = state[:, :2] + half
    return out


def initiate(z: np.ndarray) -> np.ndarray:
    """Filters of new boxes from xyah measurements [n, 4], standing still."""
    x = np.zeros((len(z), WIDTH))
    x[:, :4] = z
    x[:, 8:12] = _var(z[:, 3], 2 * POS, 1e-2)
    x[:, 16:] = _var(z[:, 3], 10 * VEL / STEP_S, 1e-5 / STEP_S)
    return x


def predict(x: np.ndarray, dt: float) -> None:
    """Every filter moved on by `dt` seconds, in place."""
    if not len(x) or dt <= 0:
        return
    # per coordinate, [pp, pv, vv] -> F P F^T + Q with F = [[1, dt], [0, 1]]; the variance of a
    # random walk grows with time: Q is the per-step noise times the steps that passed
    f = np.array([[1, 2 * dt, dt * dt], [0, 1, dt], [0, 0, 1]])
    steps = dt / STEP_S
    cov = x[:, 8:].reshape(-1, 3, 4)
    np.matmul(f, cov, out=cov)
    cov += (x[:, 3] ** 2)[:, None, None] * (_Q_H * steps)
    cov += _Q_A * steps
    x[:, :4] += dt * x[:, 4:8]
    np.maximum(x[:, 2:4], 1e-2, out=x[:, 2:4])  # a shrinking box stops short of nothing


def update(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Filters [k, 20] corrected by their xyah measurements z [k, 4] (new rows)."""
    cov = x[:, 8:].reshape(-1, 3, 4)
    gain = cov[:, :2] / (cov[:, 0] + _var(x[:, 3], POS, 1e-1))[:, None]  # position's, velocity's
    out = np.empty_like(x)
    out[:, :8] = (x[:, :8].reshape(-1, 2, 4) + gain * (z - x[:, :4])[:, None]).reshape(-1, 8)
    # P - K S K^T: pp - kp pp, pv - kp pv, vv - kv pv
    out[:, 8:] = (cov - gain[:, _GAIN_ROWS] * cov[:, _COV_ROWS]).reshape(-1, 12)
    return out
