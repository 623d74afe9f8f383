"""tflite-runtime 2.14 (numpy<2, no onnxruntime) against ai-edge-litert, through inferd's own backend.

tflite-runtime is the only TFLite runtime with 32-bit ARM wheels, and it needs numpy 1.x, so it
lives in its own venv (.venv-legacy, made by `make test`). That venv has no onnxruntime: these
tests are also the proof that a TFLite-only board runs inferd.
"""

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inferd.config import parse_config
from inferd.engine.models import load_model

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / ".venv-legacy" / "bin" / "python"
MODEL = ROOT / "examples" / "models" / "classifier_int8.tflite"

pytestmark = [
    pytest.mark.legacy,
    pytest.mark.skipif(not LEGACY.exists(), reason="no .venv-legacy (make legacy-venv; make test makes it)"),
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    try:
        import onnxruntime  # noqa: F401
        has_ort = True
    except ImportError:
        has_ort = False
    from inferd.config import parse_config
    from inferd.engine.models import load_model
    frames = np.load(sys.argv[2])
    report = {"numpy": np.__version__, "onnxruntime": has_ort}
    for xnnpack in ("true", "false"):
        cfg = parse_config(sys.argv[1].replace("XNNPACK", xnnpack)).models[0]
        model = load_model(cfg, Path("."))
        report["package"] = model.backend.package
        out = np.stack([model.predict([f])[0][0] for f in frames])
        np.save(sys.argv[3] + xnnpack + ".npy", out)
    print(json.dumps(report))
    """
)

ENTRY = f"""models:
  - name: cls
    path: {MODEL}
    threads: 1
    dequantize_outputs: false
    runtime: {{type: tflite, xnnpack: XNNPACK}}
    preprocess: {{scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
"""


def run_here(frames: np.ndarray, xnnpack: str) -> np.ndarray:
    model = load_model(parse_config(ENTRY.replace("XNNPACK", xnnpack)).models[0], Path("."))
    assert model.backend.package == "ai-edge-litert"
    return np.stack([model.predict([f])[0][0] for f in frames])


def test_tflite_runtime_gives_litert_results_without_onnxruntime(tmp_path):
    import json

    frames = np.random.default_rng(7).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(LEGACY), "-c", SCRIPT, ENTRY, str(tmp_path / "frames.npy"), str(tmp_path / "out_")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["package"] == "tflite-runtime"
    assert report["numpy"].startswith("1.")
    assert report["onnxruntime"] is False  # a TFLite-only install
    legacy = {x: np.load(tmp_path / f"out_{x}.npy") for x in ("true", "false")}
    assert legacy["true"].dtype == np.int8
    # With the builtin kernels the two runtimes agree bit for bit.
    np.testing.assert_array_equal(legacy["false"], run_here(frames, "false"))
    # LiteRT's XNNPACK int8 kernels round some values differently: at most one quantization step.
    diff = np.abs(legacy["true"].astype(int) - run_here(frames, "true").astype(int))
    assert diff.max() <= 1
