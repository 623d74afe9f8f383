"""Detections from the common detector output formats, in the source frame's pixels.

Every format decodes to the same arrays (boxes x1, y1, x2, y2 in model-input units, scores,
classes, optional keypoints), thresholded before anything else so no Python runs per candidate;
then NMS, then the preprocessing is undone (geometry.py). Formats are documented in the README.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from inferd.config import DetectPostprocess
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import Geometry
from inferd.engine.postprocess.anchors import Anchors
from inferd.engine.postprocess.base import Decoded, label, output_index
from inferd.engine.postprocess.nms import nms, weighted_nms
from inferd.engine.tracks import Tracks
from inferd.errors import ConfigError

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]  # boxes, scores, classes, kps

DEFAULT_OUTPUTS = {"ssd": [0, 1, 2, 3], "boxes": [0, 1], "anchors": [0, 1]}
OUTPUT_COUNTS = {"ssd": (3, 4), "boxes": (2, 3), "anchors": (2,)}
NAMES = {
    "ssd": "boxes, classes, scores[, count]",
    "boxes": "boxes, scores[, labels]",
    "anchors": "regressions, scores",
}


class Detect:
    def __init__(
        self,
        cfg: DetectPostprocess,
        outputs: Sequence[TensorSpec],
        labels: list[str] | None,
        model: str,
        input_spec: TensorSpec | None = None,
    ) -> None:
        self.cfg, self.labels, self.model = cfg, labels, model
        # with tracking, the decoders keep the low-score candidates too (ByteTrack's second stage
        # matches them to tracks); only those at score_threshold or above are reported
        self.threshold = min(cfg.score_threshold, cfg.track.low_score) if cfg.track else cfg.score_threshold
        self.tracks = Tracks(cfg.track, labels, list(cfg.zones)) if cfg.track else None
        fmt = cfg.format
        wanted = cfg.outputs if cfg.outputs is not None else DEFAULT_OUTPUTS.get(fmt, [0])
        counts = OUTPUT_COUNTS.get(fmt, (1,))
        if len(wanted) not in counts:
            raise ConfigError(
                f"model {model!r}: postprocess.outputs for format {fmt} takes {NAMES.get(fmt, 'one output')}"
            )
        self.indices = [output_index(outputs, k, model) for k in wanted]
        self.box_format = cfg.box_format or ("cxcywh" if fmt in ("yolo", "yolov5") else "xyxy")
        self.normalized = cfg.normalized if cfg.normalized is not None else fmt in ("ssd", "anchors")
        self.nms = (
            cfg.nms if cfg.nms != "auto" else ("hard" if fmt in ("yolo", "yolov5", "anchors") else "none")
        )
        self.extra = 1 if fmt == "yolov5" else 0  # the objectness column
        self.layout = None
        if fmt in ("yolo", "yolov5"):
            shape = outputs[self.indices[0]].shape
            self.layout = cfg.layout if cfg.layout != "auto" else self._guess(shape, at_load=True)
        self.anchors = None
        if fmt == "anchors":
            self.anchors = Anchors(cfg.anchors, input_spec, outputs[self.indices[0]], model)

    # ---- formats ---------------------------------------------------------------------------

    def _guess(self, shape: tuple, at_load: bool = False) -> str | None:
        """'cn' ([4+C, N], a column per candidate) or 'nc' for a yolo output of `shape`."""
        dims = [d for d in shape if d != 1] if len(shape) > 2 else list(shape)
        if len(dims) != 2:
            if at_load and any(d is None for d in shape):
                return None  # decided per frame from the real shape
            raise ConfigError(
                f"model {self.model!r}: a {self.cfg.format} output must be 2-D, got {list(shape)}"
            )
        a, b = dims
        if a is None or b is None:
            return None
        width = 4 + self.extra + len(self.labels) if self.labels else None
        if width is not None and (a == width) != (b == width):
            return "cn" if a == width else "nc"
        big, small = max(a, b), min(a, b)
        if width is None and small * 8 <= big:
            return "cn" if a < b else "nc"
        if width is None:
            why = "both dimensions are small and there are no labels to count classes"
        elif width in (a, b):
            why = f"both dimensions equal 4+C = {width}"
        else:
            why = f"{len(self.labels)} labels fit neither dimension"
        raise ConfigError(
            f"model {self.model!r}: cannot tell whether output {list(shape)} is [4+C, N] or [N, 4+C] "
            f"({why}); "
            "set postprocess.layout: cn (a column per candidate, as YOLOv8 exports) or nc (a row per "
            "candidate, as YOLOv5 exports)"
        )

    def _yolo(self, outputs: list[np.ndarray]) -> Candidates:
        out = np.asarray(outputs[self.indices[0]], np.float32)
        try:
            layout = self.layout or self._guess(out.shape)
        except ConfigError as e:  # dynamic dims decided per frame: the frame's error, not a crash
            raise ValueError(str(e)) from None
        out = out.reshape(out.shape[-2:]) if out.ndim > 2 else out
        rows = out.T if layout == "cn" else out  # a view: candidates as rows
        first = 4 + self.extra
        if rows.shape[1] <= first:
            raise ValueError(f"{self.cfg.format} output rows have {rows.shape[1]} values: no class columns")
        # the best class score per candidate, reduced along the array's own memory order, then
        # only the candidates above the threshold are touched again
        axis = 0 if layout == "cn" else 1
        cls_all = out[first:] if layout == "cn" else out[:, first:]
        if self.extra:  # yolov5: objectness first, then class score = objectness * class
            obj = rows[:, 4]
            keep = np.flatnonzero(obj >= self.threshold)
            cand = rows[keep]
            cls = cand[:, first:] * cand[:, 4:5]
        else:
            best = cls_all.max(axis=axis)
            keep = np.flatnonzero(best >= self.threshold)
            cand = rows[keep]
            cls = cand[:, first:]
        classes = cls.argmax(axis=1)
        scores = cls[np.arange(len(cand)), classes]
        return np.ascontiguousarray(cand[:, :4]), scores, classes, None

    _yolov5 = _yolo

    def _end2end(self, outputs: list[np.ndarray]) -> Candidates:
        out = np.asarray(outputs[self.indices[0]], np.float32)
        out = out.reshape(-1, out.shape[-1])
        if out.shape[1] < 6:
            raise ValueError(f"end2end rows must be x1, y1, x2, y2, score, class; got {out.shape[1]} values")
        return out[:, :4], out[:, 4], out[:, 5].astype(np.int64), None

    def _boxes(self, outputs: list[np.ndarray]) -> Candidates:
        boxes = np.asarray(outputs[self.indices[0]], np.float32).reshape(-1, 4)
        scores = np.asarray(outputs[self.indices[1]], np.float32)
        if scores.size == len(boxes):
            scores = scores.reshape(-1)
            classes = np.zeros(len(boxes), np.int64)
        else:
            scores = scores.reshape(len(boxes), -1)
            classes = scores.argmax(axis=1)
            scores = scores[np.arange(len(boxes)), classes]
        if len(self.indices) == 3:
            classes = np.asarray(outputs[self.indices[2]]).reshape(-1).astype(np.int64)
        return boxes, scores, classes, None

    def _ssd(self, outputs: list[np.ndarray]) -> Candidates:
        boxes = np.asarray(outputs[self.indices[0]], np.float32).reshape(-1, 4)
        scores = np.asarray(outputs[self.indices[2]], np.float32).reshape(-1)
        n = len(scores)
        if len(self.indices) == 4:
            n = min(n, int(np.asarray(outputs[self.indices[3]]).reshape(-1)[0]))
        # rows past the count are whatever the runtime left there (NaN, too): cut before the cast
        classes = np.asarray(outputs[self.indices[1]]).reshape(-1)[:n].astype(np.int64)
        # TFLite's detection postprocess gives [ymin, xmin, ymax, xmax]
        return boxes[:n][:, [1, 0, 3, 2]], scores[:n], classes, None

    def _anchors(self, outputs: list[np.ndarray]) -> Candidates:
        return self.anchors.decode(outputs[self.indices[0]], outputs[self.indices[1]], self.threshold)

    # ---- common path -----------------------------------------------------------------------

    def __call__(
        self,
        outputs: list[np.ndarray],
        source: str,
        geometry: Geometry | None = None,
        ts: float | None = None,
    ) -> Decoded:
        cfg = self.cfg
        boxes, scores, classes, kps = getattr(self, f"_{cfg.format}")(outputs)
        keep = scores >= self.threshold
        if cfg.background_class is not None:
            keep &= classes != cfg.background_class
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        kps = kps[keep] if kps is not None else None
        if self.box_format == "cxcywh":
            cx, cy, w, h = boxes.T
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        groups = None if cfg.class_agnostic_nms else classes
        if self.nms == "weighted":
            boxes, scores, classes, kps = weighted_nms(boxes, scores, classes, kps, cfg.iou_threshold, groups)
        else:
            order = (
                nms(boxes, scores, cfg.iou_threshold, groups, cfg.max_detections)
                if self.nms == "hard"
                else np.argsort(-scores, kind="stable")
            )
            boxes, scores, classes = boxes[order], scores[order], classes[order]
            kps = kps[order] if kps is not None else None
        n = min(len(scores), cfg.max_detections)
        out = self._results(
            boxes[:n], scores[:n], classes[:n], kps[:n] if kps is not None else None, geometry
        )
        if self.tracks is not None:
            self._track(source, out, ts)
        return out

    def _track(self, source: str, out: dict, ts: float | None) -> None:
        """Track ids (age, velocity) on the detections; the zones' state and events, if any."""
        frame = out.get("frame")
        size = (frame["width"], frame["height"]) if frame else None
        tracked = self.tracks(source, out["detections"], size, ts)
        out["detections"] = [d for d in out["detections"] if d["score"] >= self.cfg.score_threshold]
        out["tracks"] = tracked.tracks
        if tracked.zones is not None:
            out["zones"] = tracked.zones
            ts = round(time.time() if ts is None else ts, 3)
            for event in tracked.events:  # self-contained: also published on their own
                event.update(model=self.model, source=source, ts=ts, frame=frame)
            out["events"] = tracked.events

    def _results(self, boxes, scores, classes, kps, geometry: Geometry | None) -> dict:
        if geometry is None:  # no image input: boxes as the model gives them
            frame_boxes, norm = boxes.astype(np.float64), None
        else:
            frame_boxes = geometry.boxes(boxes, self.normalized)
            norm = geometry.normalize(frame_boxes)
        frame_kps = kps_norm = None
        if kps is not None and len(kps):
            flat = kps.reshape(len(kps), -1)
            frame_kps = geometry.to_frame(flat, self.normalized) if geometry else flat
            kps_norm = geometry.normalize(frame_kps) if geometry else None
        labels = self.labels
        rounded = np.round(frame_boxes, 2).tolist()  # one pass for all, no per-value Python
        rounded_norm = np.round(norm, 5).tolist() if norm is not None else None
        kp = np.round(frame_kps, 2).tolist() if frame_kps is not None else None
        kp_norm = np.round(kps_norm, 5).tolist() if kps_norm is not None else None
        dets = []
        for i, (c, s) in enumerate(zip(classes.tolist(), scores.tolist(), strict=True)):
            det = {
                "box": rounded[i],
                "score": s,
                "class": c,
                "label": label(labels, c),
            }
            if rounded_norm is not None:
                det["box_norm"] = rounded_norm[i]
            if kp is not None:
                det["keypoints"] = kp[i]
                if kp_norm is not None:
                    det["keypoints_norm"] = kp_norm[i]
            dets.append(det)
        out: dict = {"detections": dets}
        if geometry is not None:
            out["frame"] = geometry.frame
        return out
