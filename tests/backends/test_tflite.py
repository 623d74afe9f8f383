"""The TFLite backend (ai-edge-litert) on the full-integer example model."""

from pathlib import Path

import make_models as mm
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from inferd.config import parse_config
from inferd.engine.models import load_model
from tests.conftest import MODELS, bare_session, cosine

TFLITE = MODELS / "classifier_int8.tflite"
IMAGENET = "{scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"


def load(extra: str = ""):
    cfg = parse_config(f"models:\n  - {{name: t, path: {TFLITE}, threads: 1{extra}}}\n").models[0]
    return load_model(cfg, Path("."))


def bare(x_int8: np.ndarray) -> np.ndarray:
    itp = Interpreter(model_path=str(TFLITE), num_threads=1)
    itp.allocate_tensors()
    itp.set_tensor(itp.get_input_details()[0]["index"], x_int8)
    itp.invoke()
    return itp.get_tensor(itp.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return mm.calibration_images(12, seed=777)


def test_specs_and_quantization_are_read_from_the_model():
    model = load()
    (inp,), (out,) = model.backend.inputs, model.backend.outputs
    assert (inp.name, inp.shape, inp.dtype) == ("input", (1, 64, 64, 3), np.int8)
    assert (out.shape, out.dtype) == ((1, 10), np.int8)
    assert inp.quantization.scale[0] == pytest.approx(0.0186584, rel=1e-4)
    assert inp.quantization.zero_point == (-14,)
    info = model.describe()
    assert info["quantized"] and info["quantization"] == "full-integer"
    assert info["runtime_package"] == "ai-edge-litert"


def test_int8_frames_pass_untouched_and_equal_the_runtime_exactly(frames):
    raw = load(", dequantize_outputs: false")
    deq = load()
    (out_spec,) = deq.backend.outputs
    q = out_spec.quantization
    x = np.random.default_rng(3).integers(-128, 128, (5, 1, 64, 64, 3), dtype=np.int8)
    for xi in x:
        (ours_raw,) = raw.predict([xi])[0]
        expected = bare(xi)
        assert ours_raw.dtype == np.int8
        np.testing.assert_array_equal(ours_raw, expected)
        (ours,) = deq.predict([xi])[0]
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(
            ours, (expected.astype(np.float32) - q.zero_point[0]) * np.float32(q.scale[0])
        )


def test_float_input_is_quantized_with_the_input_scale(frames):
    model = load(f", preprocess: {IMAGENET}")
    (spec,) = model.backend.inputs
    for f in frames:
        (x,) = model.prepare([f])
        normalized = mm.normalize_nhwc(f[None])
        expected = np.clip(np.rint(normalized / spec.quantization.scale[0]) - 14, -128, 127)
        assert x.dtype == np.int8
        assert np.abs(x.astype(int) - expected).max() <= 1  # rounding of values sitting on .5


def test_close_to_the_float_onnx_model(frames):
    model = load(f", preprocess: {IMAGENET}")
    sess = bare_session(str(MODELS / "classifier_float.onnx"))
    for f in frames:
        (ours,) = model.predict([f])[0]
        (ref,) = sess.run(None, {"input": mm.normalize_nchw(f[None])})
        assert cosine(ours, ref) >= 0.99


@pytest.mark.parametrize("level", ["info", "warning"])
def test_litert_chatter_goes_through_logging(tmp_path, level):
    """LiteRT prints "Created TensorFlow Lite XNNPACK delegate" once per process: check a fresh one."""
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  - {{name: t, path: {TFLITE}}}\nlogging: {{runtime_level: {level}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "--log-level", "info", "check", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    xnnpack = [line for line in proc.stderr.splitlines() if "XNNPACK" in line]
    if level == "info":
        assert len(xnnpack) == 1 and "INFO inferd.runtime.litert: INFO: Created" in xnnpack[0], proc.stderr
    else:
        assert xnnpack == []  # kept at DEBUG, below what was asked for
