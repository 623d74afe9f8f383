"""Per-pixel classes (semantic segmentation) as a compact mask in the frame's pixels, with the
share of the frame each class covers in the result header (act on it without decoding the mask)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from inferd.config import SegmentPostprocess
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import Geometry
from inferd.engine.postprocess.base import Decoded, label, output_index

PARTS = "_parts"  # key of a decoded result's binary attachments (sent as reply parts, see replies.py)


def class_map(scores: np.ndarray, cfg: SegmentPostprocess) -> tuple[np.ndarray, int]:
    """[H, W] uint8 class ids from a [1, H, W], [1, H, W, C] or [1, C, H, W] output; and C."""
    x = np.asarray(scores)
    while x.ndim > 2 and x.shape[0] == 1:  # batch, then a leading single channel
        x = x[0]
    if x.ndim == 3:
        if x.shape[0] < x.shape[2] and x.shape[0] <= x.shape[1]:
            x = np.moveaxis(x, 0, -1)  # C, H, W -> H, W, C
        if x.shape[2] == 1:
            x = x[:, :, 0]
    if x.ndim == 2:
        p = x.astype(np.float32)
        if cfg.sigmoid:
            p = 0.5 * (1.0 + np.tanh(0.5 * p))  # the sigmoid, without exp's overflow
        return (p >= cfg.threshold).astype(np.uint8), 2
    if x.ndim != 3:
        raise ValueError(f"segment: cannot read a mask from an output of shape {np.shape(scores)}")
    return x.argmax(axis=2).astype(np.uint8), x.shape[2]


def to_frame(mask: np.ndarray, g: Geometry) -> np.ndarray:
    """Nearest-neighbour resampling of a model-sized mask onto the frame (separable index maps);
    frame pixels outside what the model saw (cropped away) are class 0."""
    mh, mw = mask.shape
    xs = ((np.arange(g.frame_w) + 0.5) - g.bx) / g.kx * (mw / g.in_w)
    ys = ((np.arange(g.frame_h) + 0.5) - g.by) / g.ky * (mh / g.in_h)
    cols, rows = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    out = mask[np.clip(rows, 0, mh - 1)[:, None], np.clip(cols, 0, mw - 1)[None, :]]
    outside_r, outside_c = (rows < 0) | (rows >= mh), (cols < 0) | (cols >= mw)
    if outside_r.any() or outside_c.any():
        out[outside_r, :] = 0
        out[:, outside_c] = 0
    return out


def rle(mask: np.ndarray) -> dict:
    """Row-major runs: {"values": [...], "counts": [...]}."""
    flat = mask.ravel()
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    return {"values": flat[starts].tolist(), "counts": counts.tolist()}


def png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Segment:
    def __init__(
        self, cfg: SegmentPostprocess, outputs: Sequence[TensorSpec], labels: list[str] | None, model: str
    ) -> None:
        self.cfg, self.labels = cfg, labels
        self.index = output_index(outputs, cfg.output, model)

    def __call__(
        self,
        outputs: list[np.ndarray],
        source: str,
        geometry: Geometry | None = None,
        ts: float | None = None,
    ) -> Decoded:
        cfg = self.cfg
        mask, n = class_map(outputs[self.index], cfg)
        if cfg.mask_size == "frame" and geometry is not None:
            mask = to_frame(mask, geometry)
        counts = np.bincount(mask.ravel(), minlength=n)
        areas = [
            {"class": c, "label": label(self.labels, c), "fraction": round(float(k) / mask.size, 6)}
            for c, k in enumerate(counts.tolist())
            if k
        ]
        seg: dict = {
            "width": mask.shape[1],
            "height": mask.shape[0],
            "encoding": cfg.encoding,
            "areas": areas,
        }
        out: dict = {"segmentation": seg}
        if geometry is not None:
            out["frame"] = geometry.frame
        if cfg.encoding == "rle":
            seg.update(rle(mask))
        else:
            seg["part"] = 0
            out[PARTS] = [png(mask)]
        return out
