"""Hypothesis strategies for inferd's inputs: near-valid frame messages and config documents."""

import json
import warnings

import numpy as np
from hypothesis import strategies as st

KEYS = ["v", "source", "seq", "ts", "shape", "dtype", "encoding", "model", "id", "deadline", "parts"]
DTYPES = ["uint8", "int8", "float32", "float16", "int64", "bool", "complex64", "", "U8"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from([1, 0, -1, "raw", "jpeg", "png", "raw", "cls", "cam0", "a/b"]),
)  # fmt: skip
shapes = st.one_of(
    st.lists(st.integers(-2, 70), max_size=5),
    st.sampled_from([[1, 3, 64, 64], [64, 64, 3], [48, 48], [1, 10], [2**31, 2], []]),
)
values = st.one_of(
    scalars,
    shapes,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3),
)


@st.composite
def headers(draw) -> dict:
    """A header that is often almost right: the right keys with sometimes-wrong values."""
    h = {
        "v": 1,
        "source": draw(st.sampled_from(["cam0", "fuzz", "s" * 130, ""])),
        "seq": draw(st.integers(0, 9)),
    }
    h["shape"] = draw(shapes)
    h["dtype"] = draw(st.sampled_from(DTYPES))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        h[key] = draw(values)
    if draw(st.booleans()):
        h.pop(draw(st.sampled_from(sorted(h))), None)
    return h


def payload_for(h: dict, draw) -> bytes:
    """Bytes sized as the header says (or off by a little), when that size is sane."""
    try:
        with warnings.catch_warnings():  # odd dtype strings ("a") also warn: a deprecated alias
            warnings.simplefilter("ignore", DeprecationWarning)
            n = (
                int(np.prod([int(d) for d in h.get("shape", [])]))
                * np.dtype(h.get("dtype", "uint8")).itemsize
            )
    except Exception:  # numpy parses odd dtype strings (",") with ast and raises anything
        n = 16
    n = n if 0 <= n <= 200_000 else 16
    n = max(0, n + draw(st.sampled_from([0, 0, 0, -1, 1, -n])))
    return bytes(n)


@st.composite
def messages(draw) -> list[bytes]:
    """One multipart message: a mutated header plus payload parts, or plain garbage."""
    kind = draw(st.sampled_from(["near", "near", "near", "garbage", "empty-parts", "json-noise"]))
    if kind == "garbage":
        return draw(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
    if kind == "empty-parts":
        return [b""] * draw(st.integers(0, 3))
    if kind == "json-noise":
        return [json.dumps(draw(values)).encode(), draw(st.binary(max_size=64))]
    h = draw(headers())
    try:
        head = json.dumps(h, allow_nan=True).encode()
    except (TypeError, ValueError):
        head = b"{}"
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(head)))
        head = head[:cut] + draw(st.binary(max_size=8))
    parts = [head, payload_for(h, draw)]
    extra = draw(st.integers(-1, 2))
    return parts[:1] if extra < 0 else parts + [b"x" * 8] * extra


config_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
model_keys = ["name", "path", "runtime", "threads", "sha256", "warmup", "preprocess", "postprocess", "labels",
              "required", "instances", "dequantize_outputs"]  # fmt: skip
top_keys = [
    "models",
    "endpoints",
    "results",
    "routes",
    "sources",
    "metrics",
    "logging",
    "service",
    "security",
]


@st.composite
def config_docs(draw) -> str:
    """A YAML document shaped like an inferd config, with random values and typos."""
    import yaml

    model = {k: draw(config_values) for k in draw(st.lists(st.sampled_from(model_keys), max_size=6))}
    model.setdefault("name", "m")
    model.setdefault("path", draw(st.sampled_from(["m.onnx", "m.tflite", "m.bin", 3])))
    doc = {"models": [model] if draw(st.booleans()) else draw(config_values)}
    for k in draw(st.lists(st.sampled_from(top_keys), max_size=3)):
        doc[k] = draw(config_values)
    text = yaml.safe_dump(doc)
    if draw(st.integers(0, 5)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=6))
    return text
