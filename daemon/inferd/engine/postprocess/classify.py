"""Top-k classes, with optional per-source smoothing of the scores."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from inferd.config import ClassifyPostprocess, SmoothConfig
from inferd.engine.backends.base import TensorSpec
from inferd.engine.postprocess.base import Decoded, label, output_index


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class Smoother:
    """Per-source exponential moving average, reset when a source has been idle too long."""

    def __init__(self, cfg: SmoothConfig, clock=time.monotonic) -> None:
        self.decay, self.reset_after = cfg.ema, cfg.reset_after_s
        self.clock = clock
        self._state: dict[str, tuple[np.ndarray, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, source: str, scores: np.ndarray) -> np.ndarray:
        now = self.clock()
        with self._lock:
            prev = self._state.get(source)
            if prev is None or now - prev[1] > self.reset_after or prev[0].shape != scores.shape:
                ema = scores.astype(np.float32, copy=True)
            else:
                ema = self.decay * prev[0] + (1.0 - self.decay) * scores
            self._state[source] = (ema, now)
        return ema


class Classify:
    def __init__(
        self, cfg: ClassifyPostprocess, outputs: Sequence[TensorSpec], labels: list[str] | None, model: str
    ) -> None:
        self.cfg, self.labels = cfg, labels
        self.index = output_index(outputs, cfg.output, model)
        self.smoother = Smoother(cfg.smooth) if cfg.smooth else None

    def __call__(
        self, outputs: list[np.ndarray], source: str, geometry=None, ts: float | None = None
    ) -> Decoded:
        scores = np.asarray(outputs[self.index], dtype=np.float32).reshape(-1)
        if self.cfg.softmax:
            scores = softmax(scores)
        if self.smoother is not None:
            scores = self.smoother(source, scores)
        k = min(self.cfg.top_k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        classes = []
        for i in top.tolist():
            score = float(scores[i])
            if self.cfg.min_score is not None and score < self.cfg.min_score:
                break
            classes.append({"index": i, "label": label(self.labels, i), "score": score})
        return {"classes": classes}
