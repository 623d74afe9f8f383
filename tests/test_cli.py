"""The command line, run as a user would: a subprocess per command."""

import json
import subprocess
import sys

from tests.conftest import EXAMPLES, MODELS


def inferd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=timeout
    )


def test_check_reports_every_example_model():
    proc = inferd("check", "-c", str(EXAMPLES / "inferd.yaml"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "OK" in out.splitlines()[0]
    for name in ("classifier", "classifier_uint8", "classifier_tflite"):
        assert f"model {name}:" in out
    assert "qdq" in out and "full-integer" in out
    assert "scale 0.0186584 zero_point -14" in out  # the TFLite input's quantization
    assert "warm-up: 3 runs" in out


def test_check_json_is_machine_readable():
    proc = inferd("check", "-c", str(EXAMPLES / "inferd.yaml"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["errors"] == []
    by_name = {m["name"]: m for m in report["models"]}
    tfl = by_name["classifier_tflite"]
    assert tfl["runtime"] == "tflite" and tfl["inputs"][0]["dtype"] == "int8"
    assert tfl["inputs"][0]["quantization"]["zero_point"] == [-14]
    assert all(m["warm_latency_ms"] > 0 for m in report["models"])


def test_check_fails_with_the_errors(write_config):
    bad = write_config("models:\n  - {name: a, path: a.onnx, treads: 2}\n")
    proc = inferd("check", "-c", str(bad))
    assert proc.returncode == 1
    assert "models[0]: unknown key 'treads' (did you mean 'threads'?)" in proc.stderr
    proc = inferd("check", "-c", str(bad), "--json")
    assert proc.returncode == 1 and "treads" in json.loads(proc.stdout)["errors"][0]


def test_check_required_and_optional_model_failures(write_config):
    model = MODELS / "classifier_int8.onnx"
    optional = write_config(
        f"models:\n  - {{name: a, path: {model}}}\n  - {{name: b, path: gone.onnx, required: false}}\n"
    )
    proc = inferd("check", "-c", str(optional))
    assert proc.returncode == 0
    assert "degraded: optional model(s) not loaded: b" in proc.stdout
    required = write_config(f"models:\n  - {{name: a, path: {model}}}\n  - {{name: b, path: gone.onnx}}\n")
    proc = inferd("check", "-c", str(required))
    assert proc.returncode == 1 and "model 'b': model file" in proc.stdout


def test_models_describes_a_file_and_measures_it():
    proc = inferd("models", str(MODELS / "classifier_int8.tflite"), "--json", "--runs", "20")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["runtime"] == "tflite" and info["quantized"] is True
    assert info["outputs"][0]["quantization"]["scale"][0] > 0
    assert info["mean_latency_ms"] > 0 and info["runs"] == 20
    proc = inferd("models", str(MODELS / "classifier_float.onnx"))
    assert proc.returncode == 0 and "input  input" in proc.stdout and "latency: mean" in proc.stdout
    proc = inferd("models", str(MODELS / "labels.txt"))
    assert proc.returncode == 1 and "cannot tell the runtime" in proc.stderr
