"""A real ONNX model whose cost is set by the frame: N rows through 48 shared 1024x1024 MatMuls.

One row takes a few milliseconds on one core; a few thousand rows keep a worker inside a
single inference for seconds. Used to make a model hang for the watchdog and drain tests
without any test-only hook in the daemon.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH, LAYERS = 1024, 48


def build_slow_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(LAYERS):
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "W"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        [numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def rows(n: int) -> np.ndarray:
    return np.ones((n, WIDTH), np.float32)
