"""A real ONNX model that is busy for as long as the frame asks, with a frame of a few bytes.

The frame is one float32: a number of iterations. An ONNX `Loop` runs that many 16x1024 @
1024x1024 MatMuls (a few milliseconds each on one core), so a test gets "a model busy for a
while" by construction: `Busy.frame(seconds)` sizes the work from a measurement of this machine
with a wide margin, and since the message stays 4 bytes no message-size limit caps it, however
fast the machine. The tests still assert their precondition (the work was still running when it
mattered), so a machine that defeats the margin fails as "precondition not met", not with a wrong
verdict. No test-only hook in the daemon.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH, ROWS = 1024, 16


def build_slow_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    # orthogonal: the state keeps its norm over any number of iterations (no inf, no denormals)
    w = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))[0].astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "W"], ["s_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [ROWS, WIDTH])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [ROWS, WIDTH])],
    )  # fmt: skip
    nodes = [
        helper.make_node("Relu", ["x"], ["xp"]),  # a warm-up's random frame never asks for < 0
        helper.make_node("Cast", ["xp"], ["xi"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["xi", "scalar"], ["n"]),
        helper.make_node("Loop", ["n", "true", "s0"], ["s"], body=body),
        helper.make_node("ReduceMean", ["s"], ["y"], keepdims=0),
        helper.make_node("Reshape", ["y", "one"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.full((ROWS, WIDTH), 1 / np.sqrt(WIDTH), np.float32), "s0"),
         numpy_helper.from_array(np.array(True), "true"),
         numpy_helper.from_array(np.array([], np.int64), "scalar"),
         numpy_helper.from_array(np.array([1], np.int64), "one")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def work(iterations: int) -> np.ndarray:
    """The frame that keeps the model busy for `iterations` MatMuls."""
    return np.array([iterations], np.float32)


class Busy:
    """Sizes work in seconds from this machine's speed, measured with onnxruntime on one thread
    (as the tests' daemons run the model). The measurement takes the fastest of a few runs: a
    machine that is loaded now and idle later makes the work shorter than asked, so callers ask
    for several times what they need and assert that they got it."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        n, best = 4, float("inf")
        while True:  # grow until one run is long enough to time, then keep the fastest of three
            t = self._time(n)
            if t >= 0.1:
                best = min([t, self._time(n), self._time(n)])
                break
            n *= 2
        self.per_iteration = best / n

    def _time(self, n: int) -> float:
        t0 = time.perf_counter()
        self.session.run(None, {"x": work(n)})
        return time.perf_counter() - t0

    def iterations(self, seconds: float) -> int:
        return max(1, int(seconds / self.per_iteration))

    def frame(self, seconds: float) -> np.ndarray:
        """A frame that keeps the model busy for about `seconds` on this machine (or longer)."""
        return work(self.iterations(seconds))
