"""A model entry: file, runtime, preprocessing, postprocessing, batching."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from inferd.config.base import Size, Strict
from inferd.engine.backends import EXTENSIONS
from inferd.engine.backends.onnx import OnnxConfig
from inferd.engine.backends.tflite import TfliteConfig
from inferd.engine.tracking import TrackConfig
from inferd.engine.zones import ZoneConfig


class PreprocessConfig(Strict):
    """How a frame becomes the model's input. Steps run in the order of the fields below."""

    frame_color: Literal["rgb", "bgr"] = Field(
        "rgb", description="Channel order of raw colour frames sent by sources (JPEG/PNG decode to rgb)."
    )
    color: Literal["rgb", "bgr"] = Field("rgb", description="Channel order the model expects.")
    resize: Size | tuple[Size, Size] | None = Field(
        None, description="An int resizes the shorter side to it (keeps aspect); [height, width] is exact."
    )
    letterbox: bool = Field(
        False,
        description="With resize: [height, width]: keep the aspect ratio and pad the rest with "
        "pad_value, centred (YOLO family, RT-DETR/D-FINE, MediaPipe); false stretches the frame.",
    )
    letterbox_align: Literal["center", "top-left"] = Field(
        "center",
        description="Where the letterboxed frame sits: center (Ultralytics YOLO, RT-DETR) or "
        "top-left, padding only right and bottom (YOLOX, NudeNet and other pad-then-resize exports).",
    )
    pad_value: float = Field(114, description="Letterbox padding, in pixel units (114: YOLO's grey).")
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

    @model_validator(mode="after")
    def _letterbox_needs_a_size(self) -> PreprocessConfig:
        if self.letterbox and not isinstance(self.resize, tuple):
            raise ValueError("letterbox needs resize: [height, width] (the size to pad to)")
        return self

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


class AnchorsConfig(Strict):
    """SSD anchors, generated as MediaPipe's SsdAnchorsCalculator does (same option names), and
    how the regressions are decoded against them (its TensorsToDetectionsCalculator)."""

    num_layers: int = Field(ge=1, description="Feature-map layers (BlazeFace short range: 4).")
    strides: list[int] = Field(description="Stride of each layer (BlazeFace short range: [8, 16, 16, 16]).")
    min_scale: float = Field(0.1484375, description="Anchor scale of the first layer.")
    max_scale: float = Field(0.75, description="Anchor scale of the last layer.")
    input_size: tuple[Size, Size] | None = Field(
        None, description="[height, width] (default: the model's input)."
    )
    anchor_offset: tuple[float, float] = Field(
        (0.5, 0.5), description="[x, y] of the anchor centre in its cell."
    )
    aspect_ratios: list[float] = Field([1.0], description="Anchor aspect ratios per location.")
    interpolated_scale_aspect_ratio: float = Field(1.0, description="Extra anchor between scales (0: none).")
    reduce_boxes_in_lowest_layer: bool = Field(
        False, description="3 fixed anchors in layer 0 (SSD MobileNet)."
    )
    fixed_anchor_size: bool = Field(
        True, description="Anchors of size 1x1 (BlazeFace) instead of their scale."
    )
    box_order: Literal["xywh", "yxhw"] = Field(
        "xywh", description="Order of the regression values (MediaPipe's reverse_output_order: true is xywh)."
    )
    box_scale: tuple[float, float, float, float] | None = Field(
        None,
        description="x, y, w, h scales of the regressions (default: input width, height, width, height).",
    )
    exp_box_size: bool = Field(False, description="Box sizes are log-encoded (SSD MobileNet), not linear.")
    num_keypoints: int = Field(0, ge=0, description="Keypoints after the box (BlazeFace: 6), as x, y pairs.")
    sigmoid: bool = Field(True, description="Scores are logits: apply a sigmoid.")
    score_clip: float | None = Field(100.0, description="Clip raw scores to +-this before the sigmoid.")


class DetectPostprocess(Strict):
    type: Literal["detect"]
    format: Literal["yolo", "yolov5", "end2end", "boxes", "ssd", "anchors"] = Field(
        description="yolo: one [4+C, N] or [N, 4+C] output, no objectness (YOLOv8/v11); yolov5: "
        "[N, 5+C] with objectness (YOLOv5/v7); end2end: [N, 6] final x1,y1,x2,y2,score,class rows "
        "(YOLOv10, exports with NMS inside); boxes: separate boxes [N, 4], scores [N] or [N, C] and "
        "optional labels [N] outputs (RT-DETR/D-FINE style); ssd: TFLite's detection postprocess "
        "(boxes, classes, scores, count); anchors: raw regressions and scores against SSD anchors "
        "(MediaPipe BlazeFace, SSD MobileNet without postprocess)."
    )
    outputs: list[int | str] | None = Field(
        None,
        description="Which outputs, by index or name. ssd: boxes, classes, scores, count (default 0-3); "
        "boxes: boxes, scores[, labels] (default 0, 1[, 2]); anchors: regressions, scores (default "
        "0, 1); the other formats: the one output (default 0).",
    )
    layout: Literal["auto", "cn", "nc"] = Field(
        "auto",
        description="yolo/yolov5: cn is [4+C, N] (YOLOv8's export: a column per candidate), nc is "
        "[N, 4+C]; auto decides from the labels' count or a clear shape, and refuses to guess.",
    )
    box_format: Literal["cxcywh", "xyxy"] | None = Field(
        None, description="How boxes are encoded (default: cxcywh for yolo/yolov5/boxes, xyxy for end2end)."
    )
    normalized: bool | None = Field(
        None, description="Boxes are 0-1 of the model input (default: true for ssd/anchors, else pixels)."
    )
    score_threshold: float = Field(0.25, ge=0, le=1, description="Drop detections scoring below this.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="NMS overlap threshold.")
    nms: Literal["auto", "hard", "weighted", "none"] = Field(
        "auto",
        description="auto: hard for yolo/yolov5/anchors, none for end2end/boxes/ssd (already final); "
        "weighted averages overlapping boxes by score (MediaPipe's face detection).",
    )
    max_detections: int = Field(100, ge=1, description="Keep at most this many, best first.")
    track: TrackConfig | None = Field(
        None,
        description="Track objects across frames: a stable track_id per detection, per source "
        "(docs/tracking.md); omitted: no tracking.",
    )
    zones: tuple[ZoneConfig, ...] = Field(
        (),
        description="Filled in from the file's top-level `zones:` (the ones this model watches); "
        "write zones there, not here.",
    )
    class_agnostic_nms: bool = Field(False, description="Suppress overlaps across classes too.")
    background_class: int | None = Field(
        None, description="anchors/boxes: a class index that is never reported."
    )
    anchors: AnchorsConfig | None = Field(None, description="format anchors: how the anchors are made.")

    @model_validator(mode="after")
    def _anchors_for_anchors(self) -> DetectPostprocess:
        if self.format == "anchors" and self.anchors is None:
            raise ValueError("format anchors needs an `anchors:` section (num_layers, strides, ...)")
        return self


class SegmentPostprocess(Strict):
    type: Literal["segment"]
    output: int | str = Field(0, description="The output holding the per-pixel scores.")
    threshold: float = Field(
        0.5, description="One-channel outputs: a pixel belongs to the class when its score is at least this."
    )
    sigmoid: bool = Field(False, description="Apply a sigmoid to one-channel logits first.")
    mask_size: Literal["frame", "model"] = Field(
        "frame",
        description="The mask at the frame's size (preprocessing undone) or at the model's output size.",
    )
    encoding: Literal["png", "rle"] = Field(
        "png",
        description="png: an 8-bit PNG of class ids as a reply part; rle: row-major runs in the header.",
    )


Postprocess = Annotated[
    RawPostprocess | ClassifyPostprocess | DetectPostprocess | SegmentPostprocess, Field(discriminator="type")
]
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
        description="Instances running this model in parallel (each its own session or interpreter).",
    )
    workers: Literal["auto", "threads", "processes"] = Field(
        "auto",
        description="Where instances run: processes (each its own interpreter, so the daemon's work "
        "per frame uses as many cores as there are instances), threads (one process, lighter), or "
        "auto: processes when instances > 1 and the board has more cores than instances (a core "
        "is left for the daemon's own thread), else threads.",
    )

    @property
    def in_processes(self) -> bool:
        """Whether this model's instances run in worker processes. INFERD_WORKERS=processes or
        threads decides for `auto` (to run a test suite or a diagnosis one way or the other)."""
        mode = self.workers
        if mode == "auto":
            mode = os.environ.get("INFERD_WORKERS", "auto")
        if mode == "auto":
            return 1 < self.instances < len(os.sched_getaffinity(0))
        return mode == "processes"

    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="Refuse to load the file unless it has this digest."
    )
    warmup: int = Field(3, ge=0, description="Inferences on a zero frame before the model is ready.")
    required: bool = Field(
        True,
        description="A required model that fails to load stops start-up; others leave the daemon degraded.",
    )
    labels: Path | None = Field(
        None,
        description="Text file with one class name per line. Default: the names an Ultralytics "
        "export carries in its metadata, if any.",
    )
    dequantize_outputs: bool = Field(
        True, description="Turn quantized (int8/uint8) outputs into floats with their scale and zero point."
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    postprocess: Postprocess = Field(default_factory=RawPostprocess)
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Dynamic batching across sources (models with a batch dimension).",
    )

    @field_validator("name")
    @classmethod
    def _not_events(cls, name: str) -> str:
        if name == "events":  # results topics are MODEL/SOURCE; zone events go out on events/MODEL/SOURCE
            raise ValueError(
                "a model cannot be called 'events' (its results would share the zone events' topics)"
            )
        return name

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
