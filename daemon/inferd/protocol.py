"""The wire format (docs/protocol.md): a JSON header part, then one raw or encoded payload per input.

Frames in:   [topic (sub endpoints only)] [header] [payload] ...
Results out: [topic "<model>/<source>"] [header] [tensor] ...        (pub)
             [header] [tensor] ...                                    (router reply)

No pickle anywhere: payloads are raw C-order buffers read with np.frombuffer (zero-copy) or
JPEG/PNG bytes decoded with Pillow.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.errors import FrameError

VERSION = 1
# Topics on the results socket that start with "!" are control messages, never results (no model
# name can start with one): "!hello/<nonce>" confirms a subscriber's subscriptions (outputs/publisher.py).
CONTROL, HELLO = b"!", b"!hello/"
DTYPES = {
    name: np.dtype(name)
    for name in (
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
        "bool",
    )
}
ENCODINGS = ("raw", "jpeg", "png")
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PartSpec:
    shape: tuple[int, ...]
    dtype: np.dtype
    encoding: str = "raw"

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype.name, "encoding": self.encoding}


@dataclass(slots=True)
class FrameHeader:
    source: str
    seq: int = 0
    ts: float | None = None  # capture time, Unix seconds
    parts: list[PartSpec] = field(default_factory=list)
    models: list[str] | None = None
    id: str | None = None
    deadline: float | None = None  # Unix seconds
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"v": VERSION, "source": self.source, "seq": self.seq}
        if self.ts is not None:
            out["ts"] = self.ts
        if len(self.parts) == 1:
            out.update(self.parts[0].to_json())
        else:
            out["parts"] = [p.to_json() for p in self.parts]
        if self.models is not None:
            out["model"] = self.models[0] if len(self.models) == 1 else self.models
        if self.id is not None:
            out["id"] = self.id
        if self.deadline is not None:
            out["deadline"] = self.deadline
        return out


def _fail(reason: str, message: str) -> FrameError:
    return FrameError(reason, message)


def decode_header(data: bytes | memoryview) -> FrameHeader:
    """Parse and validate a frame header. Raises FrameError('header', ...) with the exact problem."""
    if len(data) > MAX_HEADER_BYTES:
        raise _fail("header", f"header is {len(data)} bytes, the limit is {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail("header", f"header is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _fail("header", "header must be a JSON object")
    version = obj.get("v")
    if version != VERSION:
        raise _fail("header", f"header version {version!r} is not supported (this inferd speaks v{VERSION})")
    source = obj.get("source")
    if not isinstance(source, str) or not source or len(source) > 128 or "/" in source:
        raise _fail("header", "'source' must be a non-empty string of at most 128 characters without '/'")
    seq = obj.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise _fail("header", "'seq' must be an integer")
    ts = _number(obj, "ts")
    deadline = _number(obj, "deadline")
    raw_parts = obj.get("parts")
    if raw_parts is None:
        raw_parts = [obj]
    elif not isinstance(raw_parts, list) or not raw_parts or len(raw_parts) > 16:
        raise _fail("header", "'parts' must be a list of 1 to 16 part descriptions")
    parts = [_part(p, i) for i, p in enumerate(raw_parts)]
    models = obj.get("model")
    if models is not None:
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise _fail("header", "'model' must be a model name or a list of names")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise _fail("header", "'id' must be a string or an integer")
    return FrameHeader(source, seq, ts, parts, models, None if rid is None else str(rid), deadline)


def _number(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise _fail("header", f"'{key}' must be a number (Unix seconds)")
    return float(value)


def _part(p: Any, i: int) -> PartSpec:
    where = f"part {i}: " if i else ""
    if not isinstance(p, dict):
        raise _fail("header", f"{where}a part description must be an object")
    encoding = p.get("encoding", "raw")
    if encoding not in ENCODINGS:
        raise _fail("encoding", f"{where}encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    if encoding != "raw":
        return PartSpec((), DTYPES["uint8"], encoding)
    dtype = DTYPES.get(p.get("dtype")) if isinstance(p.get("dtype"), str) else None
    if dtype is None:
        raise _fail("dtype", f"{where}dtype {p.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    shape = p.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 31 for d in shape)
    ):
        raise _fail("header", f"{where}'shape' must be a list of at most 8 positive integers")
    return PartSpec(tuple(shape), dtype, "raw")


def decode_payload(spec: PartSpec, data: Any, max_elements: int | None = None) -> np.ndarray:
    """A payload part as an array: zero-copy for raw, Pillow for jpeg/png. Raises FrameError."""
    if spec.encoding == "raw":
        count = 1
        for d in spec.shape:
            count *= d
        if max_elements is not None and count > max_elements:
            raise _fail("too_large", f"frame has {count} elements, the limit is {max_elements}")
        buf = memoryview(data)
        if buf.nbytes != count * spec.dtype.itemsize:
            raise _fail(
                "size",
                f"payload is {buf.nbytes} bytes but shape {list(spec.shape)} {spec.dtype.name} "
                f"needs {count * spec.dtype.itemsize}",
            )
        return np.frombuffer(buf, dtype=spec.dtype).reshape(spec.shape)
    return decode_image(data, spec.encoding, max_elements)


def decode_image(data: Any, encoding: str, max_elements: int | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(memoryview(data))) as img:
            fmt = (img.format or "").lower()
            if fmt != encoding and not (fmt == "mpo" and encoding == "jpeg"):
                raise _fail("decode", f"payload is {fmt or 'not an image'}, the header says {encoding}")
            w, h = img.size
            if max_elements is not None and w * h * 3 > max_elements:
                raise _fail("too_large", f"image is {w}x{h}, over the limit of {max_elements} elements")
            mode = "L" if img.mode in ("L", "I;16", "1") else "RGB"
            return np.asarray(img.convert(mode))
    except FrameError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise _fail("decode", f"cannot decode {encoding}: {e}") from None


def encode_header(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default).encode()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def tensor_specs(arrays: list[np.ndarray], names: list[str] | None = None) -> list[dict]:
    return [
        {"name": names[i] if names else str(i), "shape": list(a.shape), "dtype": a.dtype.name}
        for i, a in enumerate(arrays)
    ]


def decode_tensors(specs: list[dict], parts: list[Any]) -> list[np.ndarray]:
    """The output tensors of a result message (the reverse of tensor_specs + raw parts)."""
    if len(specs) != len(parts):
        raise ValueError(f"result lists {len(specs)} tensors but carries {len(parts)} parts")
    return [
        np.frombuffer(memoryview(p), dtype=DTYPES[s["dtype"]]).reshape(s["shape"])
        for s, p in zip(specs, parts, strict=True)
    ]
