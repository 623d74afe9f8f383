"""Accelerators, for real where they run here (docs/accelerators.md):

- a TFLite external delegate built by the test from C (tests/delegate/pass_delegate.c), loaded by
  ai-edge-litert here and by tflite-runtime in .venv-legacy through their own load_delegate: its
  options arrive, it takes nodes (the interpreter's plan runs its kernels), the results equal the
  CPU's, and every way it can fail falls back or fails as configured, with the message;
- onnxruntime's OpenVINO execution provider (the onnxruntime-openvino build, in .venv-openvino):
  a daemon serves a model through it, /readyz and inferd_model_info name it, and its outputs equal
  the CPU provider's within the tolerance measured for it;
- a provider this onnxruntime lacks: fallback cpu (a warning naming it and the ones there) or fail.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inferd.client import InferClient
from inferd.config import parse_config
from inferd.engine.models import load_model
from inferd.errors import ModelLoadError
from tests.conftest import MODELS, ROOT
from tests.daemon_harness import DaemonProcess

LEGACY = ROOT / ".venv-legacy" / "bin" / "python"
OPENVINO = ROOT / ".venv-openvino" / "bin" / "python"
TFLITE = MODELS / "classifier_int8.tflite"
PAD = 34  # the builtin op code the test delegate claims by default (the model has 2 PADs)


def missing(what: str) -> None:
    """Skip where a part is absent; under CI (INFERD_CI=1, make test installs it) fail instead."""
    if os.environ.get("INFERD_CI"):
        pytest.fail(f"{what} (CI must run this)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def delegate(tmp_path_factory) -> Path:
    """The test delegate, compiled with the machine's gcc."""
    if shutil.which("gcc") is None:
        missing("no gcc to build the test delegate")
    lib = tmp_path_factory.mktemp("delegate") / "libpass_delegate.so"
    src = ROOT / "tests" / "delegate" / "pass_delegate.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-o", str(lib), str(src)], check=True)
    return lib


def tflite_entry(runtime: dict, path: Path = TFLITE) -> str:
    return json.dumps(
        {"models": [{"name": "m", "path": str(path), "warmup": 1, "runtime": {"type": "tflite", **runtime}}]}
    )


def frames(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def test_a_delegate_gets_its_options_takes_nodes_and_gives_the_cpu_results(delegate, tmp_path):
    record = tmp_path / "record.txt"
    options = {"record": str(record), "claim": str(PAD), "device": "usb:0"}
    model = load_model(
        parse_config(tflite_entry({"delegate": {"library": str(delegate), "options": options}})).models[0],
        Path("."),
    )
    cpu = load_model(parse_config(tflite_entry({})).models[0], Path("."))
    assert model.backend.accelerator == "delegate:libpass_delegate.so"
    placed = model.backend.placement
    assert placed["delegate:libpass_delegate.so"] == 2  # the two PADs, each its own partition
    assert sum(placed.values()) == sum(cpu.backend.placement.values()) == 6  # every node, once
    assert model.describe()["accelerator"] == "delegate:libpass_delegate.so"
    xs = frames(12)
    got = np.stack([model.predict([x])[0][0] for x in xs])
    want = np.stack([cpu.predict([x])[0][0] for x in xs])
    assert np.array_equal(got, want)  # the delegate runs the runtime's own kernels: bit-exact
    model.close()
    del model
    gc.collect()
    lines = record.read_text().splitlines()
    for key, value in options.items():  # as strings, the way load_delegate passes them
        assert f"option {key}={value} 0" in lines, lines
    assert "prepare claimed 2" in lines
    assert lines[-1] == f"destroyed invokes {2 * (len(xs) + 1)}", lines  # 2 kernels x (frames + warm-up)


def edgetpu_model(path: Path) -> Path:
    """A model as the Edge TPU compiler leaves it: the graph is one `edgetpu-custom-op`."""
    make_models = pytest.importorskip("make_models")  # examples/, on sys.path by conftest
    tfl = make_models.tfl
    g = make_models._TFLiteGraph()
    x = g.tensor("input", [1, 64, 64, 3], tfl.TensorType.UINT8, quant=(1 / 255, 0))
    y = g.tensor("logits", [1, 10], tfl.TensorType.UINT8, quant=(0.1, 128))
    g.ops.append(make_models._obj(tfl.OperatorT, opcodeIndex=0, inputs=[x], outputs=[y]))
    g.ops[0].customOptions = list(b"\x00" * 8)
    g.opcodes = [(tfl.BuiltinOperator.CUSTOM, 1)]
    data = g.serialize([x], [y], "edgetpu stand-in")
    # serialize() names builtins only: give the one operator code its custom name
    code = make_models._obj(tfl.OperatorCodeT, deprecatedBuiltinCode=32, builtinCode=32, version=1)
    code.customCode = "edgetpu-custom-op"
    model = tfl.ModelT.InitFromPackedBuf(data, 0)
    model.operatorCodes = [code]
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


# (runtime options, fallback cpu: accelerator, what the error or warning says); LIB is the delegate
CASES = {
    "refuses": ({"library": "LIB", "options": {"refuse": "no Edge TPU found"}},
                "loaded but created no delegate: no Edge TPU found"),
    "fails_prepare": ({"library": "LIB", "options": {"fail_prepare": 1}},
                      "failed on this model: pass_delegate: fail_prepare was set"),
    "takes_nothing": ({"library": "LIB", "options": {"claim": "99"}}, "took no node of the model"),
    "absent_path": ({"library": "/nonexistent/libedgetpu.so.1"},
                    "cannot load delegate library /nonexistent/libedgetpu.so.1 (it does not exist)"),
    "absent_name": ({"library": "libinferd-no-such-delegate.so.1"},
                    "the dynamic loader searched LD_LIBRARY_PATH"),
    "not_a_delegate": ({"library": "libm.so.6"}, "libm.so.6 is not a TFLite external delegate"),
}  # fmt: skip

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    from pathlib import Path
    from inferd.config import parse_config
    from inferd.engine.models import load_model
    from inferd.errors import ModelLoadError

    warnings = []
    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())
    logging.getLogger("inferd").addHandler(Keep(logging.WARNING))
    out = {}
    for name, entry in json.loads(sys.argv[1]).items():
        warnings.clear()
        try:
            model = load_model(parse_config(entry).models[0], Path("."))
            out[name] = {"accelerator": model.backend.accelerator, "package": model.backend.package,
                         "placement": model.backend.placement, "warnings": list(warnings)}
        except ModelLoadError as e:
            out[name] = {"error": str(e)}
    print(json.dumps(out))
    """
)


def outcomes(python: str, entries: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [python, "-c", SCRIPT, json.dumps(entries)], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime", ["ai-edge-litert", "tflite-runtime"])
def test_every_delegate_failure_falls_back_or_fails_as_configured(delegate, tmp_path, runtime):
    python = str(ROOT / ".venv" / "bin" / "python")
    if runtime == "tflite-runtime":
        if not LEGACY.exists():
            missing("no .venv-legacy (make legacy-venv)")
        python = str(LEGACY)
    entries = {}
    for name, (d, _) in CASES.items():
        d = json.loads(json.dumps(d).replace("LIB", str(delegate)))
        for fallback in ("cpu", "fail"):
            entries[f"{name}/{fallback}"] = tflite_entry({"delegate": d, "fallback": fallback})
    entries["working/fail"] = tflite_entry({"delegate": {"library": str(delegate)}, "fallback": "fail"})
    entries["edgetpu_without_delegate"] = tflite_entry({}, edgetpu_model(tmp_path / "m_edgetpu.tflite"))
    out = outcomes(python, entries)
    assert out["working/fail"]["package"] == runtime
    assert out["working/fail"]["accelerator"] == "delegate:libpass_delegate.so", out["working/fail"]
    assert out["working/fail"]["warnings"] == []
    for name, (_, said) in CASES.items():
        cpu, fail = out[f"{name}/cpu"], out[f"{name}/fail"]
        assert "error" not in cpu, (name, cpu)
        assert cpu["accelerator"] in ("xnnpack", "cpu"), (name, cpu)
        assert len(cpu["warnings"]) == 1 and said in cpu["warnings"][0], (name, cpu)
        assert "running on the CPU (fallback: cpu)" in cpu["warnings"][0]
        assert said in fail["error"] and fail["error"].endswith("(fallback: fail)"), (name, fail)
    tpu = out["edgetpu_without_delegate"]["error"]
    assert "edgetpu-custom-op" in tpu and "the model was compiled for the Edge TPU" in tpu
    assert "delegate: {library: libedgetpu.so.1}" in tpu


def test_an_absent_delegate_library_leaves_the_model_on_the_cpu_and_says_so(caplog):
    """No gcc needed: also run on arm64 under qemu-user (qemu/Makefile TESTS)."""
    lib = "libinferd-absent-delegate.so.1"
    with caplog.at_level(logging.WARNING, logger="inferd"):
        model = load_model(parse_config(tflite_entry({"delegate": {"library": lib}})).models[0], Path("."))
    assert model.backend.accelerator in ("xnnpack", "cpu")
    assert (
        sum(model.backend.placement.values()) == 6 and model.backend.placement.get(f"delegate:{lib}", 0) == 0
    )
    warned = [r.getMessage() for r in caplog.records if lib in r.getMessage()]
    assert len(warned) == 1 and "running on the CPU (fallback: cpu)" in warned[0], warned
    got = np.stack([model.predict([x])[0][0] for x in frames(4)])
    cpu = load_model(parse_config(tflite_entry({})).models[0], Path("."))
    assert np.array_equal(got, np.stack([cpu.predict([x])[0][0] for x in frames(4)]))
    with pytest.raises(ModelLoadError, match="cannot load delegate library libinferd-absent"):
        load_model(
            parse_config(tflite_entry({"delegate": {"library": lib}, "fallback": "fail"})).models[0],
            Path("."),
        )


def test_a_provider_this_onnxruntime_lacks_falls_back_with_a_warning_or_fails(caplog):
    entry = {"name": "m", "path": str(MODELS / "classifier_int8.onnx"), "warmup": 0}
    ov = {"name": "OpenVINOExecutionProvider", "options": {"device_type": "CPU"}}
    with caplog.at_level(logging.WARNING, logger="inferd"):
        model = load_model(
            parse_config(
                json.dumps({"models": [entry | {"runtime": {"type": "onnx", "providers": [ov]}}]})
            ).models[0],
            Path("."),
        )
    assert model.backend.accelerator == "CPUExecutionProvider"
    assert model.backend.placement["CPUExecutionProvider"] > 0
    warned = [r.getMessage() for r in caplog.records if "OpenVINOExecutionProvider" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "is not available in this onnxruntime" in warned[0] and "CPUExecutionProvider" in warned[0]
    assert "running on CPUExecutionProvider (fallback: cpu)" in warned[0]
    strict = entry | {"runtime": {"type": "onnx", "providers": [ov], "fallback": "fail"}}
    with pytest.raises(ModelLoadError) as e:
        load_model(parse_config(json.dumps({"models": [strict]})).models[0], Path("."))
    assert "execution provider OpenVINOExecutionProvider is not available" in str(e.value)
    assert "(it has: " in str(e.value) and "set fallback: cpu" in str(e.value)


def test_check_warns_or_fails_on_a_provider_that_is_not_there(write_config):
    import sys

    for fallback, rc in (("cpu", 0), ("fail", 1)):
        cfg = write_config(
            f"models:\n  - {{name: m, path: {MODELS / 'classifier_int8.onnx'}, runtime: {{type: onnx, "
            f"providers: [TensorrtExecutionProvider], fallback: {fallback}}}}}\n"
        )
        proc = subprocess.run(
            [sys.executable, "-m", "inferd", "check", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = proc.stdout + proc.stderr
        assert proc.returncode == rc, said
        assert "TensorrtExecutionProvider is not available" in said and "CPUExecutionProvider" in said
        if fallback == "cpu":
            assert "runs on CPUExecutionProvider" in proc.stdout


DAEMON = """
models:
  - {name: ov, path: "{models}/MODEL.onnx", threads: 1, postprocess: {type: raw}, instances: 2, workers: processes,
     runtime: {type: onnx, fallback: fail, providers: [{name: OpenVINOExecutionProvider, options: {device_type: CPU}}]}}
  - {name: cpu, path: "{models}/MODEL.onnx", threads: 1, postprocess: {type: raw}}
endpoints:
  - {type: router, bind: "{router}"}
"""


@pytest.mark.parametrize("model, tolerance", [("classifier_float", 1e-4), ("classifier_int8", None)])
def test_openvino_serves_a_model_and_says_so(tmp_path, model, tolerance):
    """In .venv-openvino (onnxruntime-openvino 1.24: OpenVINOExecutionProvider, CPU device). Measured
    against the CPU provider of the same build on these frames: float model max |diff| 4.8e-6 (fp32
    summation order); int8 QDQ model max |diff| 0.12-0.28 on logits of range ~5 (OpenVINO's int8
    rounding of an activation differs by a quantization step; cosine of each to the float model
    0.99937 vs 0.99948), every argmax equal."""
    if not OPENVINO.exists():
        missing("no .venv-openvino (make test makes it)")
    d = DaemonProcess(tmp_path, DAEMON.replace("MODEL", model), python=str(OPENVINO))
    try:
        _, ready = d.probe("/readyz")
        assert ready["models"]["ov"]["accelerator"] == "OpenVINOExecutionProvider", ready
        assert ready["models"]["ov"]["placement"].get("OpenVINOExecutionProvider", 0) >= 1, ready
        assert ready["models"]["ov"]["workers"]["processes"] == 2  # described by its worker processes
        assert ready["models"]["cpu"]["accelerator"] == "CPUExecutionProvider"
        info = {dict(k[1])["model"]: dict(k[1]) for k in d.scrape() if k[0] == "inferd_model_info"}
        assert info["ov"]["accelerator"] == "OpenVINOExecutionProvider"
        assert info["cpu"]["accelerator"] == "CPUExecutionProvider"
        rng = np.random.default_rng(5)
        xs = ((rng.random((16, 1, 3, 64, 64)) - 0.45) / 0.225).astype(np.float32)
        with InferClient(d.router, timeout=60) as client:
            got = np.stack([client.infer(x, model="ov").outputs[0] for x in xs])
            want = np.stack([client.infer(x, model="cpu").outputs[0] for x in xs])
        if tolerance is not None:
            assert np.abs(got - want).max() <= tolerance
        else:
            assert (got.argmax(-1) == want.argmax(-1)).all()
            cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
            assert cos.min() >= 0.99, cos.min()
            assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()
    finally:
        d.stop()
