"""Shared fixtures: the committed example models and a config writer."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MODELS = EXAMPLES / "models"
sys.path.insert(0, str(EXAMPLES))  # make_models is importable by tests


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "inferd.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bare_session(path, threads: int | None = None, **options):
    """A bare onnxruntime session set up as inferd sets up its own: the CPU provider and the exact
    int8 kernels on x86 without VNNI (engine/backends/onnx.py EXACT_INT8), so that "equals the bare
    runtime" compares the same arithmetic on any machine."""
    import onnxruntime as ort

    from inferd.engine.backends.onnx import EXACT_INT8

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    for key, value in options.items():
        setattr(opts, key, value)
    opts.add_session_config_entry(*EXACT_INT8)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def constant_model(path: Path, value: np.ndarray, name: str = "constant") -> Path:
    """A real ONNX model [1,3,64,64] float -> `value` (0 * mean(input) + value): a detector or a
    segmenter whose outputs the test knows, run by onnxruntime like any other."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["z", "value"], ["y"]),
        ],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(value.shape))],
        [
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
            numpy_helper.from_array(value.astype(np.float32), "value"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
