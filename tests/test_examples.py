"""The example models in examples/models: reproducible from examples/make_models.py, loadable, and the
quantized ones agree with the float reference (so agreement checks elsewhere are meaningful)."""

from __future__ import annotations

import os
import subprocess
import textwrap
import warnings
from pathlib import Path

import make_models as mm  # examples/ is put on sys.path by conftest.py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper

from tests.conftest import bare_session

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
LEGACY_PYTHON = ROOT / ".venv-legacy" / "bin" / "python"
N_HELDOUT = 16


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """A fresh build through the command line entry point (main), as `make models` runs it."""
    out = tmp_path_factory.mktemp("models")
    mm.main(["--out", str(out)])
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return mm.calibration_images(N_HELDOUT, mm.HELDOUT_SEED)


@pytest.fixture(scope="module")
def reference(images) -> np.ndarray:
    return run_onnx("classifier_float.onnx", mm.normalize_nchw(images))


def session(name: str) -> ort.InferenceSession:
    return bare_session(MODELS / name, threads=1)


def run_onnx(name: str, batch: np.ndarray) -> np.ndarray:
    """One call with the whole batch: the ONNX models have a symbolic batch dimension."""
    (logits,) = session(name).run(None, {"input": batch})
    return logits


def run_tflite(path: Path, normalized_nhwc: np.ndarray) -> np.ndarray:
    """Quantize with the input's scale/zero point, run image by image (batch 1), dequantize the logits."""
    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (in_scale, in_zp), (out_scale, out_zp) = inp["quantization"], out["quantization"]
    logits = []
    for image in normalized_nhwc:
        q = np.clip(np.round(image / in_scale) + in_zp, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q[None])
        interp.invoke()
        logits.append((interp.get_tensor(out["index"])[0].astype(np.float32) - out_zp) * out_scale)
    return np.stack(logits)


def assert_agree(logits: np.ndarray, ref: np.ndarray, min_cosine: float = 0.99, min_top1: float = 0.8):
    cos = (logits * ref).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref, axis=1))
    top1 = float(np.mean(logits.argmax(1) == ref.argmax(1)))
    assert cos.min() >= min_cosine, f"per-image cosine {np.round(cos, 4)}"
    assert top1 >= min_top1, f"top-1 agreement {top1}"


# ---------------------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------------------


def onnx_equivalent(a: Path, b: Path) -> None:
    """Same graph (nodes, attributes, inputs/outputs, opsets) and initializers equal up to rounding."""
    ma, mb = onnx.load(a), onnx.load(b)
    assert (ma.ir_version, list(ma.opset_import)) == (mb.ir_version, list(mb.opset_import))
    for field in ("node", "input", "output"):
        assert list(getattr(ma.graph, field)) == list(getattr(mb.graph, field)), field
    ia = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    assert ia.keys() == ib.keys()
    for name, x in ia.items():
        assert_close_values(name, x, ib[name])


def tflite_equivalent(a: Path, b: Path) -> None:
    """Same tensors, operators and quantization up to rounding; buffer contents compared by tensor type."""
    ma, mb = (tfl.ModelT.InitFromPackedBuf(p.read_bytes(), 0) for p in (a, b))
    assert [(c.builtinCode, c.version) for c in ma.operatorCodes] == [
        (c.builtinCode, c.version) for c in mb.operatorCodes
    ]
    ga, gb = ma.subgraphs[0], mb.subgraphs[0]
    assert [(o.opcodeIndex, list(o.inputs), list(o.outputs)) for o in ga.operators] == [
        (o.opcodeIndex, list(o.inputs), list(o.outputs)) for o in gb.operators
    ]
    dtypes = {tfl.TensorType.INT8: np.int8, tfl.TensorType.INT32: np.int32}
    for ta, tb in zip(ga.tensors, gb.tensors, strict=True):
        assert (ta.name, list(ta.shape), ta.type) == (tb.name, list(tb.shape), tb.type)
        if ta.quantization is not None:
            np.testing.assert_allclose(ta.quantization.scale, tb.quantization.scale, rtol=1e-4)
            assert_close_values(
                ta.name, np.array(ta.quantization.zeroPoint), np.array(tb.quantization.zeroPoint)
            )
        da, db = ma.buffers[ta.buffer].data, mb.buffers[tb.buffer].data
        if da is not None or db is not None:
            dt = dtypes[ta.type]
            assert_close_values(ta.name, np.frombuffer(bytes(da), dt), np.frombuffer(bytes(db), dt))


def assert_close_values(name: str, x: np.ndarray, y: np.ndarray) -> None:
    assert (x.dtype, x.shape) == (y.dtype, y.shape), name
    if np.issubdtype(x.dtype, np.floating):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=name)
    else:  # quantized values and zero points: a scale one ulp apart may move a value across a rounding edge
        assert np.abs(x.astype(np.int64) - y.astype(np.int64)).max(initial=0) <= 1, name


@pytest.mark.parametrize("name", mm.MODEL_FILES)
def test_committed_models_are_what_the_script_builds(regenerated, name):
    committed, fresh = MODELS / name, regenerated / name
    assert committed.is_file(), f"{committed} missing: run `make models`"
    if committed.read_bytes() == fresh.read_bytes():
        return
    # Byte equality holds on the machine that built them (the script is deterministic: producer fields are
    # pinned and quantize_static output is stable), but the weights come from float statistics computed by
    # numpy/BLAS and the activation ranges from onnxruntime's kernels, whose last bits may differ with the
    # CPU (AVX2 vs AVX-512 vs NEON) or the library versions. So a byte mismatch falls back to comparing
    # the structure exactly and the numbers up to rounding; a real change (other seeds, layers, options)
    # still fails here.
    if name.endswith(".onnx"):
        onnx_equivalent(committed, fresh)
    elif name.endswith(".tflite"):
        tflite_equivalent(committed, fresh)
    else:
        pytest.fail(f"{name} differs from what make_models.py writes: run `make models`")
    warnings.warn(f"{name}: not byte-identical to a fresh build, but equivalent up to rounding", stacklevel=1)


def test_numpy_reference_matches_onnxruntime(images, reference):
    """The TFLite model is calibrated with make_models.forward(); it must be the ONNX float network."""
    acts = mm.forward(mm.small_weights(), mm.normalize_nchw(images))
    np.testing.assert_allclose(acts["logits"], reference, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Tensor specs
# ---------------------------------------------------------------------------------------------------------

ONNX_SPECS = {
    # name: (input dtype, input shape, output shape)
    "classifier_float.onnx": ("tensor(float)", ["N", 3, 64, 64], ["N", 10]),
    "classifier_int8.onnx": ("tensor(float)", ["N", 3, 64, 64], ["N", 10]),
    "classifier_uint8_nhwc.onnx": ("tensor(uint8)", ["N", 64, 64, 3], ["N", 10]),
    "larger_float.onnx": ("tensor(float)", ["batch", 3, 224, 224], ["batch", 10]),
    "larger_int8.onnx": ("tensor(float)", ["batch", 3, 224, 224], ["batch", 10]),
}


@pytest.mark.parametrize("name", ONNX_SPECS)
def test_onnx_tensor_specs(name):
    dtype, in_shape, out_shape = ONNX_SPECS[name]
    s = session(name)
    (inp,), (out,) = s.get_inputs(), s.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("input", dtype, in_shape)
    assert (out.name, out.type, out.shape) == ("logits", "tensor(float)", out_shape)
    model = onnx.load(MODELS / name)
    assert model.ir_version == mm.IR_VERSION and model.producer_name == mm.PRODUCER[0]
    ops = {n.op_type for n in model.graph.node}
    assert ("QuantizeLinear" in ops) == ("float" not in name)


def test_tflite_tensor_specs():
    interp = Interpreter(model_path=str(MODELS / "classifier_int8.tflite"))
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert (inp["name"], list(inp["shape"]), inp["dtype"]) == ("input", [1, 64, 64, 3], np.int8)
    assert (out["name"], list(out["shape"]), out["dtype"]) == ("logits", [1, 10], np.int8)
    # the input's quantization covers every normalized [0, 1] pixel: about [-2.12, 2.64]
    scale, zp = inp["quantization"]
    assert (scale, zp) == pytest.approx(mm.int8_qparams(*mm.NORM_RANGE))
    assert (-128 - zp) * scale <= -2.11 and (127 - zp) * scale >= 2.63
    assert interp.get_signature_list() == {"serving_default": {"inputs": ["input"], "outputs": ["logits"]}}


def test_labels_match_classes():
    labels = (MODELS / "labels.txt").read_text().splitlines()
    assert len(labels) == len(set(labels)) == mm.NUM_CLASSES and all(label.strip() for label in labels)
    for name in ONNX_SPECS:
        assert session(name).get_outputs()[0].shape[-1] == len(labels)
    interp = Interpreter(model_path=str(MODELS / "classifier_int8.tflite"))
    assert interp.get_output_details()[0]["shape"][-1] == len(labels)


# ---------------------------------------------------------------------------------------------------------
# Agreement with the float model on held-out images
# ---------------------------------------------------------------------------------------------------------


def test_float_model_is_not_degenerate(reference):
    assert len(set(reference.argmax(1))) >= 5  # the top-1 class changes with the image
    assert np.all(reference.std(axis=0) > 0.5)


def test_int8_onnx_agrees_with_float(images, reference):
    assert_agree(run_onnx("classifier_int8.onnx", mm.normalize_nchw(images)), reference)


def test_uint8_nhwc_onnx_takes_raw_frames(tmp_path, images, reference):
    assert_agree(run_onnx("classifier_uint8_nhwc.onnx", images), reference)
    # before quantization, the in-graph preprocessing + network equal normalize_nchw + the float model
    mm.build_float(tmp_path / "u8.onnx", uint8_nhwc=True)
    s = bare_session(str(tmp_path / "u8.onnx"))
    np.testing.assert_allclose(s.run(None, {"input": images})[0], reference, rtol=1e-4, atol=1e-4)


def test_int8_tflite_agrees_with_float(images, reference):
    assert_agree(run_tflite(MODELS / "classifier_int8.tflite", mm.normalize_nhwc(images)), reference)


def test_larger_int8_agrees_with_float():
    x = mm.normalize_nchw(mm.calibration_images(N_HELDOUT, mm.HELDOUT_SEED, mm.LARGE_SIZE))
    reference = run_onnx("larger_float.onnx", x)
    assert len(set(reference.argmax(1))) >= 4
    assert_agree(run_onnx("larger_int8.onnx", x), reference)


def test_batched_run_equals_single_runs(images):
    x = mm.normalize_nchw(images[:4])
    s = session("classifier_int8.onnx")
    batched = s.run(None, {"input": x})[0]
    singles = np.concatenate([s.run(None, {"input": x[i : i + 1]})[0] for i in range(4)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["qoperator", "dynamic", "qdq_per_tensor"])
def test_other_quantizations_build_and_agree(tmp_path, images, reference, variant):
    out = tmp_path / f"{variant}.onnx"
    float_path = MODELS / "classifier_float.onnx"
    if variant == "qoperator":
        mm.quantize_qoperator(float_path, out)
    elif variant == "dynamic":
        mm.quantize_dynamic(float_path, out)
    else:
        mm.quantize_qdq(float_path, out, per_channel=False)
    (logits,) = bare_session(str(out)).run(None, {"input": mm.normalize_nchw(images)})
    assert_agree(logits, reference, min_cosine=0.98)


@pytest.mark.legacy
@pytest.mark.skipif(not LEGACY_PYTHON.exists(), reason="no .venv-legacy (make legacy-venv)")
def test_tflite_runs_in_tflite_runtime_2_14(tmp_path, images, reference):
    np.save(tmp_path / "x.npy", mm.normalize_nhwc(images))
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from tflite_runtime.interpreter import Interpreter
        interp = Interpreter(model_path=sys.argv[1], num_threads=1)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        (s, z), (os_, oz) = inp["quantization"], out["quantization"]
        logits = []
        for image in np.load(sys.argv[2]):
            interp.set_tensor(inp["index"], np.clip(np.round(image / s) + z, -128, 127).astype(np.int8)[None])
            interp.invoke()
            logits.append((interp.get_tensor(out["index"])[0].astype(np.float32) - oz) * os_)
        np.save(sys.argv[3], np.stack(logits))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [str(LEGACY_PYTHON), "-c", script, str(MODELS / "classifier_int8.tflite"), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        check=True, env=env, timeout=60,
    )  # fmt: skip
    legacy = np.load(tmp_path / "y.npy")
    assert_agree(legacy, reference)
    # the two runtimes' int8 kernels may round a logit differently: at most one quantization step apart
    litert = run_tflite(MODELS / "classifier_int8.tflite", mm.normalize_nhwc(images))
    (out,) = Interpreter(model_path=str(MODELS / "classifier_int8.tflite")).get_output_details()
    assert np.abs(legacy - litert).max() <= out["quantization"][0] * 1.01
