"""The command line, run as a user would: a subprocess per command."""

import json
import subprocess
import sys

import yaml

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
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "inferd models: cannot tell the runtime from the extension '.txt' of "
        f"'{MODELS / 'labels.txt'}'; give --runtime onnx or --runtime tflite"
    )


def test_models_of_a_config_are_described_as_configured_with_what_runs_them():
    proc = inferd("models", str(EXAMPLES / "inferd.yaml"), "--json", "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    infos = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    config = yaml.safe_load((EXAMPLES / "inferd.yaml").read_text())
    assert sorted(infos) == sorted(m["name"] for m in config["models"])
    by_runtime = {m["runtime"]: m for m in infos.values()}
    assert by_runtime["onnx"]["accelerator"] == "CPUExecutionProvider"
    assert by_runtime["onnx"]["placement"]["CPUExecutionProvider"] > 0
    assert by_runtime["tflite"]["accelerator"] in ("xnnpack", "cpu")
    assert all(m["mean_latency_ms"] > 0 and m["runs"] == 3 for m in infos.values())
    proc = inferd("models", str(EXAMPLES / "inferd.yaml"), "--runs", "1")
    assert proc.returncode == 0 and "runs on CPUExecutionProvider (nodes: CPUExecutionProvider" in proc.stdout


def test_a_missing_model_is_reported_once_with_every_path_tried(write_config, tmp_path):
    cfg = write_config("models:\n  - {name: a, path: nope/x.onnx}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "run", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path.parent,
    )  # fmt: skip
    assert proc.returncode == 1
    expected = (
        f"model 'a': model file nope/x.onnx not found: looked in the config file's folder "
        f"({cfg.parent / 'nope/x.onnx'}), then the working directory ({tmp_path.parent / 'nope/x.onnx'})"
    )
    assert proc.stderr.count("nope/x.onnx not found") == 1 and expected in proc.stderr, proc.stderr


def test_a_daemon_nobody_can_reach_is_warned_about(write_config):
    cfg = write_config(
        f"models:\n  - {{name: a, path: {MODELS / 'classifier_int8.onnx'}}}\nmetrics: {{listen: null}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd", "run", "-c", str(cfg)], stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "no endpoints" in line or len(lines) > 50:
                break
        assert "WARNING" in lines[-1] and "nothing can send frames to this inferd" in lines[-1], lines
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_demo_accounts_for_every_frame_it_sent(tmp_path):
    """`inferd demo`, stopped with Ctrl-C once its live view shows results from every camera, the
    recorded one (`inferd capture`, a subprocess that starts on its own schedule) included: on any
    machine the summary then has the three cameras' frames to account for."""
    import os
    import re
    import signal
    import threading
    import time

    errors = tmp_path / "stderr"
    with open(errors, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferd", "demo", "--fps", "40"],
            stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    def cameras_seen() -> set[str]:  # the live view has a line per source and model with results
        return {m[1] for m in re.finditer(r"^  (\S+) ", "".join(lines), re.M)}

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        end = time.monotonic() + 90
        while not {"cam0", "cam1", "video"} <= cameras_seen():
            assert proc.poll() is None, f"the demo ended early:\n{''.join(lines)}{errors.read_text()}"
            assert time.monotonic() < end, f"not every camera's results in 90 s:\n{''.join(lines)}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, f"{''.join(lines)}{errors.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    out = "".join(lines)
    assert "`inferd capture` playing a 40 fps H.264 clip as source 'video'" in out
    tail = out[out.index("inferd demo: 3 camera(s) sent") :]
    m = re.match(
        r"inferd demo: 3 camera\(s\) sent (\d+) frames \(cam0 \d+, cam1 \d+, video (\d+)\); each goes to 3 "
        r"model\(s\): (\d+) results expected, (\d+) received",
        tail,
    )
    assert m, tail
    sent, video, expected, received = map(int, m.groups())
    assert video > 0  # the shipped camera process fed the daemon too
    assert expected == 3 * sent and 0 < received <= expected
    others = [int(n) for n in re.findall(r"^  (\d+) (?:dropped|answered|still)", tail, re.M)]
    assert received + sum(others) == expected, tail


def test_models_measures_a_model_with_a_dynamic_image_size():
    """A real YOLOv8 export (dynamic batch and size) failed at 1x1 with a traceback: it is run at
    the warm-up's size, and a failure to run would be a sentence, not a traceback."""
    from tests.backends.test_pretrained import packaged

    proc = inferd("models", str(packaged("nudenet", "320n.onnx")), "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "latency: mean" in proc.stdout
