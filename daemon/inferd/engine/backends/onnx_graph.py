"""Just enough of the ONNX protobuf to see a graph's nodes and small initializers.

onnxruntime does not expose the graph, and the `onnx` package is too heavy for a small board,
so this reads the wire format directly (https://protobuf.dev/programming-guides/encoding/).
It is only used at load time, to report quantization and find input/output scales.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inferd.engine.backends.base import Quantization

# ModelProto.graph = 7; GraphProto.node = 1, initializer = 5; NodeProto.input/output/op_type/domain
_GRAPH, _NODE, _INIT = 7, 1, 5
_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    10: np.float16,
    11: np.float64,
}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}


@dataclass
class Node:
    op_type: str = ""
    domain: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]

    @property
    def quantization_format(self) -> str | None:
        """'qdq', 'qoperator', 'dynamic' or None for a float model."""
        ops = {n.op_type for n in self.nodes}
        if ops & DYNAMIC_OPS:
            return "dynamic"
        if any(op.startswith("QLinear") or op == "QGemm" for op in ops):
            return "qoperator"
        if ops & QDQ_OPS:
            return "qdq"
        return None

    def input_quantization(self, name: str) -> Quantization | None:
        for node in self.nodes:
            if node.inputs[:1] == [name] and (
                node.op_type == "DequantizeLinear" or node.op_type.startswith("QLinear")
            ):
                return self._params(node.inputs[1:3])
        return None

    def output_quantization(self, name: str) -> Quantization | None:
        for node in self.nodes:
            if name in node.outputs:
                if node.op_type == "QuantizeLinear":
                    return self._params(node.inputs[1:3])
                if node.op_type in ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul"):
                    return self._params(node.inputs[6:8])
        return None

    def _params(self, names: list[str]) -> Quantization | None:
        if not names or names[0] not in self.initializers:
            return None
        scale = self.initializers[names[0]].astype(np.float64).ravel()
        zp_arr = self.initializers.get(names[1]) if len(names) > 1 else None
        zp = zp_arr.astype(np.int64).ravel() if zp_arr is not None else np.zeros_like(scale, np.int64)
        axis = 1 if scale.size > 1 else None
        return Quantization(tuple(float(s) for s in scale), tuple(int(z) for z in zp), axis)


def read_graph(path: Path, max_init_elems: int = 4096) -> Graph:
    """Nodes and the small initializers (scales, zero points) of an ONNX file."""
    buf = memoryview(path.read_bytes())
    nodes: list[Node] = []
    inits: dict[str, np.ndarray] = {}
    for fnum, _, graph in _fields(buf):
        if fnum != _GRAPH:
            continue
        for gnum, _, item in _fields(graph):
            if gnum == _NODE:
                nodes.append(_node(item))
            elif gnum == _INIT:
                name, arr = _tensor(item, max_init_elems)
                if arr is not None:
                    inits[name] = arr
    return Graph(nodes, inits)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) for each field of one message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if wtype == 0:
            value, pos = _varint(buf, pos)
        elif wtype == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wtype == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wtype == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wtype}")
        if pos > end:
            raise ValueError("truncated message")
        yield fnum, wtype, value


def _node(buf: memoryview) -> Node:
    node = Node()
    for fnum, _, value in _fields(buf):
        if fnum == 1:
            node.inputs.append(bytes(value).decode())
        elif fnum == 2:
            node.outputs.append(bytes(value).decode())
        elif fnum == 4:
            node.op_type = bytes(value).decode()
        elif fnum == 7:
            node.domain = bytes(value).decode()
    return node


def _tensor(buf: memoryview, max_elems: int) -> tuple[str, np.ndarray | None]:
    dims: list[int] = []
    dtype, name, raw = 0, "", None
    floats: list[float] = []
    ints: list[int] = []
    for fnum, wtype, value in _fields(buf):
        if fnum == 1:
            dims.extend(_packed_varints(value) if wtype == 2 else [value])
        elif fnum == 2:
            dtype = value
        elif fnum == 4:
            floats.extend(
                struct.unpack(f"<{len(value) // 4}f", value) if wtype == 2 else struct.unpack("<f", value)
            )
        elif fnum in (5, 7):
            ints.extend(_packed_varints(value) if wtype == 2 else [value])
        elif fnum == 8:
            name = bytes(value).decode()
        elif fnum == 9:
            raw = value
    np_dtype = _DTYPES.get(dtype)
    count = int(np.prod(dims)) if dims else 1
    if np_dtype is None or count > max_elems:
        return name, None
    if raw is not None:
        arr = np.frombuffer(bytes(raw), dtype=np_dtype)
    elif floats:
        arr = np.asarray(floats, dtype=np_dtype)
    elif ints:
        arr = np.asarray([i - (1 << 64) if i >= 1 << 63 else i for i in ints]).astype(np_dtype)
    else:
        return name, None
    return name, arr.reshape(dims) if arr.size == count else arr


def _packed_varints(buf: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out
