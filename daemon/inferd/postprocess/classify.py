"""From output tensors to results: raw tensors, top-k classes, or detections."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from inferd.backends.base import TensorSpec
from inferd.config import ClassifyPostprocess, DetectPostprocess, SmoothConfig
from inferd.errors import ConfigError

Decoded = dict[str, Any] | None


def output_index(outputs: Sequence[TensorSpec], key: int | str, model: str) -> int:
    names = [o.name for o in outputs]
    if isinstance(key, int):
        if not 0 <= key < len(outputs):
            raise ConfigError(f"model {model!r}: postprocess output {key} does not exist; outputs: {names}")
        return key
    if key not in names:
        raise ConfigError(f"model {model!r}: postprocess output {key!r} does not exist; outputs: {names}")
    return names.index(key)


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

    def __call__(self, outputs: list[np.ndarray], source: str) -> Decoded:
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
            classes.append({"index": i, "label": self._label(i), "score": score})
        return {"classes": classes}

    def _label(self, i: int) -> str | None:
        return self.labels[i] if self.labels and i < len(self.labels) else None


class Detect:
    """Boxes come out as [x1, y1, x2, y2] in the model's coordinates (ssd: normalized 0-1)."""

    def __init__(
        self, cfg: DetectPostprocess, outputs: Sequence[TensorSpec], labels: list[str] | None, model: str
    ) -> None:
        self.cfg, self.labels = cfg, labels
        wanted = cfg.outputs if cfg.outputs is not None else ([0, 1, 2, 3] if cfg.format == "ssd" else [0])
        need = 4 if cfg.format == "ssd" else 1
        if len(wanted) not in (need, 3 if cfg.format == "ssd" else 1):
            raise ConfigError(f"model {model!r}: postprocess.outputs for {cfg.format} needs {need} entries")
        self.indices = [output_index(outputs, k, model) for k in wanted]

    def __call__(self, outputs: list[np.ndarray], source: str) -> Decoded:
        if self.cfg.format == "ssd":
            boxes, classes, scores = self._ssd(outputs)
        else:
            boxes, classes, scores = self._yolo(outputs)
        order = np.argsort(-scores, kind="stable")[: self.cfg.max_detections]
        dets = []
        for i in order.tolist():
            c = int(classes[i])
            dets.append(
                {
                    "box": [float(v) for v in boxes[i]],
                    "score": float(scores[i]),
                    "class": c,
                    "label": self.labels[c] if self.labels and 0 <= c < len(self.labels) else None,
                }
            )
        return {"detections": dets}

    def _ssd(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = np.asarray(outputs[self.indices[0]], np.float32).reshape(-1, 4)
        classes = np.asarray(outputs[self.indices[1]]).reshape(-1)
        scores = np.asarray(outputs[self.indices[2]], np.float32).reshape(-1)
        n = len(scores)
        if len(self.indices) == 4:
            n = min(n, int(np.asarray(outputs[self.indices[3]]).reshape(-1)[0]))
        boxes, classes, scores = boxes[:n], classes[:n], scores[:n]
        keep = scores >= self.cfg.score_threshold
        # TFLite's detection postprocess gives [ymin, xmin, ymax, xmax]
        return boxes[keep][:, [1, 0, 3, 2]], classes[keep].astype(np.int64), scores[keep]

    def _yolo(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = np.asarray(outputs[self.indices[0]], np.float32)
        out = out.reshape(out.shape[-2:]) if out.ndim >= 2 else out
        if out.ndim != 2:
            raise ValueError(f"yolo output must be [N, 4+C], got shape {out.shape}")
        width = 4 + len(self.labels) if self.labels else None
        if (out.shape[0] == width != out.shape[1]) or (width is None and out.shape[0] < out.shape[1]):
            out = out.T  # [4+C, N] as YOLOv8 exports it
        class_scores = out[:, 4:]
        if class_scores.shape[1] == 0:
            raise ValueError("yolo output has no class columns")
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(out)), classes]
        keep = scores >= self.cfg.score_threshold
        boxes, classes, scores = out[keep, :4], classes[keep], scores[keep]
        if self.cfg.box_format == "cxcywh":
            cx, cy, w, h = boxes.T
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        groups = None if self.cfg.class_agnostic_nms else classes
        kept = nms(boxes, scores, self.cfg.iou_threshold, groups, self.cfg.max_detections)
        return boxes[kept], classes[kept], scores[kept]


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    groups: np.ndarray | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression on [x1, y1, x2, y2] boxes; indices kept, best first.

    With `groups`, boxes only suppress boxes of the same group (class-wise NMS), done in one
    pass by shifting each group to its own region of the plane.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if groups is not None:
        span = float(np.abs(boxes).max()) * 2 + 1
        boxes = boxes + (groups.astype(np.float32) * span)[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def make_postprocessor(cfg, outputs: Sequence[TensorSpec], labels: list[str] | None, model: str):
    """None for raw output; else a callable (outputs, source) -> decoded dict."""
    if isinstance(cfg, ClassifyPostprocess):
        return Classify(cfg, outputs, labels, model)
    if isinstance(cfg, DetectPostprocess):
        return Detect(cfg, outputs, labels, model)
    return None
