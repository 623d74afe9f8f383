"""SSD anchors as MediaPipe makes them (SsdAnchorsCalculator), and box/keypoint regressions
decoded against them (TensorsToDetectionsCalculator), all in whole-array numpy."""

from __future__ import annotations

import math

import numpy as np

from inferd.config import AnchorsConfig
from inferd.engine.backends.base import TensorSpec
from inferd.errors import ConfigError


def _scale(lo: float, hi: float, index: int, count: int) -> float:
    return (lo + hi) / 2 if count == 1 else lo + (hi - lo) * index / (count - 1)


def generate_anchors(cfg: AnchorsConfig, height: int, width: int) -> np.ndarray:
    """[N, 4] anchors as x_center, y_center, width, height (0-1 of the input)."""
    if len(cfg.strides) != cfg.num_layers:
        raise ValueError(f"anchors: {len(cfg.strides)} strides for {cfg.num_layers} layers")
    out, layer, n = [], 0, cfg.num_layers
    while layer < n:
        ratios, scales = [], []
        last = layer
        while last < n and cfg.strides[last] == cfg.strides[layer]:
            scale = _scale(cfg.min_scale, cfg.max_scale, last, n)
            if last == 0 and cfg.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += cfg.aspect_ratios
                scales += [scale] * len(cfg.aspect_ratios)
                if cfg.interpolated_scale_aspect_ratio > 0:
                    nxt = 1.0 if last == n - 1 else _scale(cfg.min_scale, cfg.max_scale, last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(cfg.interpolated_scale_aspect_ratio)
            last += 1
        root = np.sqrt(np.asarray(ratios))
        sizes = np.stack([np.asarray(scales) * root, np.asarray(scales) / root], axis=1)  # w, h
        if cfg.fixed_anchor_size:
            sizes = np.ones_like(sizes)
        stride = cfg.strides[layer]
        fh, fw = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(
            (np.arange(fh) + cfg.anchor_offset[1]) / fh,
            (np.arange(fw) + cfg.anchor_offset[0]) / fw,
            indexing="ij",
        )
        centers = np.stack([xs.ravel(), ys.ravel()], axis=1)  # row-major cells, then anchors per cell
        k = len(sizes)
        out.append(np.concatenate([np.repeat(centers, k, axis=0), np.tile(sizes, (len(centers), 1))], axis=1))
        layer = last
    return np.concatenate(out).astype(np.float32)


class Anchors:
    """Decodes [1, N, 4 + 2K] regressions and [1, N, C] scores into normalized boxes and keypoints."""

    def __init__(
        self, cfg: AnchorsConfig, input_spec: TensorSpec | None, regressions: TensorSpec, model: str
    ):
        self.cfg = cfg
        if cfg.input_size is not None:
            h, w = cfg.input_size
        elif input_spec is not None and len(input_spec.shape) == 4:
            nchw = input_spec.shape[1] in (1, 3, 4) and input_spec.shape[3] not in (1, 3, 4)
            h, w = input_spec.shape[2:4] if nchw else input_spec.shape[1:3]
        else:
            raise ConfigError(f"model {model!r}: anchors.input_size is needed (the input is not an image)")
        try:
            self.anchors = generate_anchors(cfg, h, w)
        except ValueError as e:
            raise ConfigError(f"model {model!r}: postprocess.{e}") from None
        n = regressions.shape[-2] if len(regressions.shape) >= 2 else None
        if n is not None and n != len(self.anchors):
            raise ConfigError(
                f"model {model!r}: the anchors make {len(self.anchors)} boxes but the regressions output "
                f"has {n}: check anchors.num_layers, strides, aspect_ratios and input_size"
            )
        self.scale = np.asarray(cfg.box_scale or (w, h, w, h), np.float32)

    def decode(self, raw_boxes: np.ndarray, raw_scores: np.ndarray, threshold: float):
        cfg, anchors = self.cfg, self.anchors
        scores = np.asarray(raw_scores, np.float32).reshape(len(anchors), -1)
        if cfg.score_clip is not None:
            scores = np.clip(scores, -cfg.score_clip, cfg.score_clip)
        if cfg.sigmoid:
            scores = 0.5 * (1.0 + np.tanh(0.5 * scores))  # the sigmoid, without exp's overflow
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), classes]
        keep = np.nonzero(best >= threshold)[0]  # decode only what passes
        raw = np.asarray(raw_boxes, np.float32).reshape(len(anchors), -1)[keep]
        a = anchors[keep]
        sx, sy, sw, sh = self.scale
        if cfg.box_order == "xywh":
            x, y, w, h = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        else:
            y, x, h, w = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        cx, cy = x / sx * a[:, 2] + a[:, 0], y / sy * a[:, 3] + a[:, 1]
        if cfg.exp_box_size:
            w, h = np.exp(w / sw) * a[:, 2], np.exp(h / sh) * a[:, 3]
        else:
            w, h = w / sw * a[:, 2], h / sh * a[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        kps = None
        if cfg.num_keypoints:
            pts = raw[:, 4 : 4 + 2 * cfg.num_keypoints].reshape(len(raw), cfg.num_keypoints, 2)
            if cfg.box_order == "yxhw":
                pts = pts[:, :, ::-1]
            kps = np.empty_like(pts)
            kps[:, :, 0] = pts[:, :, 0] / sx * a[:, None, 2] + a[:, None, 0]
            kps[:, :, 1] = pts[:, :, 1] / sy * a[:, None, 3] + a[:, None, 1]
        return boxes, best[keep], classes[keep], kps
