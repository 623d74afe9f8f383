"""A model entry: file, runtime, preprocessing, postprocessing, batching."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from inferd.backends import EXTENSIONS
from inferd.backends.onnx import OnnxConfig
from inferd.backends.tflite import TfliteConfig
from inferd.config.base import Size, Strict


class PreprocessConfig(Strict):
    """How a frame becomes the model's input. Steps run in the order of the fields below."""

    frame_color: Literal["rgb", "bgr"] = Field(
        "rgb", description="Channel order of raw colour frames sent by sources (JPEG/PNG decode to rgb)."
    )
    color: Literal["rgb", "bgr"] = Field("rgb", description="Channel order the model expects.")
    resize: Size | tuple[Size, Size] | None = Field(
        None, description="An int resizes the shorter side to it (keeps aspect); [height, width] is exact."
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "area"] = Field(
        "bilinear", description="Resampling filter for resize (Pillow)."
    )
    center_crop: Size | tuple[Size, Size] | None = Field(
        None, description="Crop the centre: an int for a square, or [height, width]."
    )
    scale: float | None = Field(
        None, description="Multiply pixel values by this first, e.g. 1/255 (a fraction string is accepted)."
    )
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted after scale.")
    std: list[float] | None = Field(None, description="Per-channel std divided by after mean.")
    layout: Literal["auto", "nchw", "nhwc"] = Field(
        "auto", description="The model's input layout; auto reads it from the input shape."
    )

    @field_validator("scale", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        if isinstance(v, str) and "/" in v:
            num, _, den = v.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"scale {v!r} is not a number or a fraction like 1/255") from None
        return v

    @field_validator("mean", "std")
    @classmethod
    def _channels(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) not in (1, 3, 4):
            raise ValueError(f"needs 1, 3 or 4 values (one per channel), got {len(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v

    @property
    def normalizes(self) -> bool:
        return self.scale is not None or self.mean is not None or self.std is not None


class RawPostprocess(Strict):
    type: Literal["raw"] = Field("raw", description="Return the output tensors as the runtime gives them.")


class SmoothConfig(Strict):
    ema: float = Field(
        gt=0, lt=1, description="Decay of the per-source moving average: ema = decay*ema + (1-decay)*new."
    )
    reset_after_s: float = Field(
        2.0, gt=0, description="Start the average afresh when a source sent nothing for this long."
    )


class ClassifyPostprocess(Strict):
    type: Literal["classify"]
    output: int | str = Field(0, description="Which output holds the class scores (index or name).")
    softmax: bool = Field(False, description="Apply softmax to the scores (for models that output logits).")
    top_k: int = Field(5, ge=1, description="How many classes to report, best first.")
    min_score: float | None = Field(None, description="Drop classes scoring below this.")
    smooth: SmoothConfig | None = Field(None, description="Per-source temporal smoothing of the scores.")


class DetectPostprocess(Strict):
    type: Literal["detect"]
    format: Literal["ssd", "yolo"] = Field(
        description="ssd: already-decoded boxes/classes/scores/count outputs (TFLite detection "
        "postprocess); yolo: one [N, 4+C] (or [4+C, N]) output decoded here with threshold and NMS."
    )
    outputs: list[int | str] | None = Field(
        None,
        description="ssd: the boxes, classes, scores, count outputs (default: outputs 0-3 in that "
        "order); yolo: the one output (default 0).",
    )
    box_format: Literal["cxcywh", "xyxy"] = Field("cxcywh", description="yolo: how boxes are encoded.")
    score_threshold: float = Field(0.25, ge=0, le=1, description="Drop detections scoring below this.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="yolo: NMS overlap threshold.")
    max_detections: int = Field(100, ge=1, description="Keep at most this many, best first.")
    class_agnostic_nms: bool = Field(False, description="yolo: suppress overlaps across classes too.")


Postprocess = Annotated[RawPostprocess | ClassifyPostprocess | DetectPostprocess, Field(discriminator="type")]
Runtime = Annotated[OnnxConfig | TfliteConfig, Field(discriminator="type")]


class BatchingConfig(Strict):
    max_batch: int = Field(1, ge=1, description="Frames run in one runtime call (1: no batching).")
    max_delay_ms: float = Field(
        2.0, ge=0, description="How long the first frame of a batch waits for more to arrive."
    )


class ModelConfig(Strict):
    """One model: where it is, which runtime runs it, how frames are prepared and results decoded."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Unique; used in topics and metrics.")
    path: Path = Field(
        description="Model file; relative paths are resolved against the config file's folder."
    )
    runtime: Runtime = Field(
        description="onnx or tflite (default: from the file extension), or a mapping with runtime options."
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads (default: the cores available).")
    instances: int = Field(
        1,
        ge=1,
        description="Worker threads running this model in parallel (TFLite: one interpreter each).",
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="Refuse to load the file unless it has this digest."
    )
    warmup: int = Field(3, ge=0, description="Inferences on a zero frame before the model is ready.")
    required: bool = Field(
        True,
        description="A required model that fails to load stops start-up; others leave the daemon degraded.",
    )
    labels: Path | None = Field(None, description="Text file with one class name per line.")
    dequantize_outputs: bool = Field(
        True, description="Turn quantized (int8/uint8) outputs into floats with their scale and zero point."
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    postprocess: Postprocess = Field(default_factory=RawPostprocess)
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Dynamic batching across sources (models with a batch dimension).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        runtime = data.get("runtime")
        if runtime is None and isinstance(data.get("path"), str):
            ext = os.path.splitext(data["path"])[1].lower()
            if ext not in EXTENSIONS:
                raise ValueError(
                    f"cannot tell the runtime from the extension {ext or '(none)'!r} of {data['path']!r}; "
                    f"set runtime: onnx or runtime: tflite"
                )
            runtime = EXTENSIONS[ext]
        if isinstance(runtime, str):
            runtime = {"type": runtime}
        if runtime is not None:
            data["runtime"] = runtime
        if isinstance(data.get("postprocess"), str):
            data["postprocess"] = {"type": data["postprocess"]}
        return data
