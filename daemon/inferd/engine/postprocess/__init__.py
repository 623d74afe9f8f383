"""From output tensors to results: raw tensors, top-k classes, detections or segmentation masks.

Each decoder is a callable `(outputs, source, geometry) -> dict`; `geometry` (geometry.py) says
where the model's input pixels lie in the source frame, so results are in the frame's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferd.config import ClassifyPostprocess, DetectPostprocess, SegmentPostprocess
from inferd.engine.backends.base import TensorSpec
from inferd.engine.postprocess.base import Decoded, output_index
from inferd.engine.postprocess.classify import Classify, Smoother, softmax
from inferd.engine.postprocess.detect import Detect
from inferd.engine.postprocess.nms import nms, weighted_nms
from inferd.engine.postprocess.segment import PARTS, Segment

__all__ = [
    "PARTS", "Classify", "Decoded", "Detect", "Segment", "Smoother", "make_postprocessor", "nms",
    "output_index", "softmax", "weighted_nms",
]  # fmt: skip


def make_postprocessor(
    cfg,
    outputs: Sequence[TensorSpec],
    labels: list[str] | None,
    model: str,
    input_spec: TensorSpec | None = None,
):
    """None for raw output; else a callable (outputs, source, geometry) -> decoded dict."""
    if isinstance(cfg, ClassifyPostprocess):
        return Classify(cfg, outputs, labels, model)
    if isinstance(cfg, DetectPostprocess):
        return Detect(cfg, outputs, labels, model, input_spec)
    if isinstance(cfg, SegmentPostprocess):
        return Segment(cfg, outputs, labels, model)
    return None
