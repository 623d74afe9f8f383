"""Frigate's `zmq` detector protocol as a way in (docs/frigate.md).

Frigate's client is a REQ socket: a request is `[header_json, tensor]`, header `{"shape",
"dtype", "model_type"}`, the tensor C-order raw bytes (`[1, H, W, 3]` uint8 RGB by default, or
`[1, 3, H, W]` float32). The reply is `[{"shape": [20, 6], "dtype": "float32"}, 480 bytes]`: rows
of class id, score, y_min, x_min, y_max, x_max normalized to the tensor sent, best first, zeros
after the last. Frigate has no error reply: the convention of its detector servers is a zero
result with an "error" field in the header. Requests become ordinary frames (the tensor passes through,
zero-copy, when it fits the model; else the model's preprocessing reads it as an image), served by the same
queues and workers; `FrigateCodec` turns their results back into Frigate's rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import time

import numpy as np

from inferd.engine.preprocess import as_image
from inferd.errors import FrameError
from inferd.protocol import FrameHeader, PartSpec

log = logging.getLogger("inferd.frigate")

ROWS = 20
MODEL_TYPES = ("ssd", "yolox", "yolonas", "yologeneric", "rfdetr", "dfine")
DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype(np.float32)}
# the decoders that fit what each Frigate model type outputs (a mismatch is served, and warned about)
FITS = {
    "ssd": {"ssd", "anchors"},
    "yolox": {"yolo", "yolov5", "end2end"},
    "yolonas": {"yolo", "end2end", "boxes"},
    "yologeneric": {"yolo", "yolov5", "end2end"},
    "rfdetr": {"boxes", "yolo", "end2end"},
    "dfine": {"boxes", "end2end"},
}
_OK_HEADER = json.dumps({"shape": [ROWS, 6], "dtype": "float32"}).encode()
_ZERO = np.zeros((ROWS, 6), np.float32).tobytes()


def error_reply(reason: str, message: str) -> list[bytes]:
    head = {"shape": [ROWS, 6], "dtype": "float32", "error": f"{reason}: {message}", "reason": reason}
    return [json.dumps(head).encode(), _ZERO]


class FrigateCodec:
    """Encodes results and errors of frames from one frigate endpoint in Frigate's format."""

    def result(self, decoded: dict | None) -> list[bytes]:
        rows = np.zeros((ROWS, 6), np.float32)
        dets = (decoded or {}).get("detections", [])[:ROWS]
        for i, d in enumerate(dets):
            x1, y1, x2, y2 = d.get("box_norm") or d["box"]
            rows[i] = (d["class"], d["score"], y1, x1, y2, x2)
        return [_OK_HEADER, rows.tobytes()]

    def error(self, reason: str, message: str) -> list[bytes]:
        return error_reply(reason, message)


class FrigateRequests:
    """Turns one endpoint's requests into frames (header, image array)."""

    def __init__(self, cfg, decoder_format: str | None) -> None:
        self.cfg, self.format = cfg, decoder_format
        self.codec = FrigateCodec()
        self._seq = itertools.count()
        self._warned: set[str] = set()

    def parse(self, parts: list) -> tuple[FrameHeader, np.ndarray]:
        """Raises FrameError with the reason for a malformed request."""
        if len(parts) != 2:
            raise FrameError("parts", f"a Frigate request is [header, tensor], got {len(parts)} part(s)")
        try:
            head = json.loads(bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]))
        except (ValueError, UnicodeDecodeError) as e:
            raise FrameError("header", f"header is not JSON: {e}") from None
        if not isinstance(head, dict):
            raise FrameError("header", "header must be a JSON object")
        shape, dtype = head.get("shape"), DTYPES.get(head.get("dtype"))
        if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise FrameError("header", f"'shape' must be a list of positive integers, got {shape!r}")
        if dtype is None:
            raise FrameError("dtype", f"'dtype' must be uint8 or float32, got {head.get('dtype')!r}")
        tensor = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
        need = int(np.prod(shape)) * dtype.itemsize
        if len(tensor) != need:
            raise FrameError(
                "size", f"tensor is {len(tensor)} bytes but shape {shape} {dtype.name} needs {need}"
            )
        if int(np.prod(shape)) > self.cfg.max_elements:
            raise FrameError(
                "too_large", f"tensor of {int(np.prod(shape))} elements, the limit is {self.cfg.max_elements}"
            )
        self._check_model_type(head.get("model_type"))
        image = np.frombuffer(tensor, dtype).reshape(shape)  # passed through when it fits the model
        if as_image(image) is None:
            raise FrameError("shape", f"a Frigate tensor is [1, H, W, C] or [1, C, H, W], got {shape}")
        header = FrameHeader(
            source=self.cfg.source, seq=next(self._seq), ts=None,
            parts=[PartSpec(image.shape, dtype)], models=[self.cfg.model],
            deadline=time.time() + self.cfg.timeout_ms / 1000,
        )  # fmt: skip
        return header, image

    def _check_model_type(self, model_type) -> None:
        if model_type is None or model_type in self._warned:
            return
        self._warned.add(model_type)
        if model_type not in MODEL_TYPES:
            log.warning(
                "frigate endpoint %s: unknown model_type %r (served anyway)", self.cfg.bind, model_type
            )
        elif self.format is not None and self.format not in FITS[model_type]:
            log.warning(
                "frigate endpoint %s: Frigate says model_type %s but model %s decodes as format %s "
                "(served as configured; check Frigate's model: section)",
                self.cfg.bind, model_type, self.cfg.model, self.format,
            )  # fmt: skip
