"""The onnxruntime backend on float, QDQ, QOperator and dynamic-quantized models, int8 and uint8 inputs."""

from pathlib import Path

import make_models as mm
import numpy as np
import pytest

from inferd.config import parse_config
from inferd.engine.models import load_model
from tests.conftest import MODELS, bare_session, cosine

IMAGENET = "{scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"


def load(path: Path, extra: str = "", name: str = "m"):
    return load_model(
        parse_config(f"models:\n  - {{name: {name}, path: {path}{extra}}}\n").models[0], path.parent
    )


def bare(path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = bare_session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return mm.calibration_images(12, seed=4242)  # uint8 NHWC RGB, 64x64


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("variants")
    out = {"float": MODELS / "classifier_float.onnx", "qdq": MODELS / "classifier_int8.onnx"}
    mm.quantize_qoperator(out["float"], d / "qop.onnx")
    mm.quantize_dynamic(out["float"], d / "dyn.onnx")
    out.update(qoperator=d / "qop.onnx", dynamic=d / "dyn.onnx")
    return out


@pytest.mark.parametrize("kind", ["float", "qdq", "qoperator", "dynamic"])
def test_every_quantization_format_runs_and_equals_the_bare_runtime(variants, frames, kind):
    model = load(variants[kind])
    assert model.backend.quantization_format == (None if kind == "float" else kind)
    assert model.backend.quantized is (kind != "float")
    x = mm.normalize_nchw(frames)
    for i in range(len(frames)):
        (ours,) = model.predict([x[i : i + 1]])[0]
        (theirs,) = bare(variants[kind], x[i : i + 1])
        np.testing.assert_array_equal(ours, theirs)  # passed through untouched: bit for bit


@pytest.mark.parametrize("kind", ["qdq", "qoperator"])
def test_quantized_results_are_close_to_the_float_model(variants, frames, kind):
    quant = load(variants[kind], f", preprocess: {IMAGENET}")
    flt = load(variants["float"], f", preprocess: {IMAGENET}")
    for f in frames:
        assert cosine(quant.predict([f])[0][0], flt.predict([f])[0][0]) >= 0.99


def test_uint8_nhwc_camera_frames_pass_untouched(frames):
    path = MODELS / "classifier_uint8_nhwc.onnx"
    model = load(path)
    (spec,) = model.backend.inputs
    assert spec.dtype == np.uint8 and spec.shape == (None, 64, 64, 3)
    for f in frames:
        assert model.prepare([f])[0].base is f or np.shares_memory(model.prepare([f])[0], f)
        np.testing.assert_array_equal(model.predict([f])[0][0], bare(path, f[None])[0])


def test_qdq_input_and_graph_quantization_are_reported():
    model = load(MODELS / "classifier_int8.onnx")
    (spec,) = model.backend.inputs
    assert spec.dtype == np.float32 and spec.quantization is None  # float input, QDQ inside
    info = model.describe()
    assert info["quantization"] == "qdq" and info["runtime_package"] == "onnxruntime"


def test_int8_graph_input_gets_its_scale_from_the_graph(tmp_path):
    """A model that takes quantized int8 directly (DequantizeLinear on the input): inferd quantizes floats."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale, zp = 0.05, np.int8(-3)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("q", TensorProto.INT8, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(zp), "z")],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "q.onnx")
    model = load(tmp_path / "q.onnx")
    (spec,) = model.backend.inputs
    assert spec.dtype == np.int8 and spec.quantization.scale == (pytest.approx(0.05),)
    assert spec.quantization.zero_point == (-3,)
    assert model.backend.quantization_format == "qdq"
    q = np.arange(-4, 4, dtype=np.int8).reshape(1, 8)
    (y,) = model.predict([q])[0]
    np.testing.assert_allclose(y, np.maximum((q.astype(np.float32) + 3) * 0.05, 0))
