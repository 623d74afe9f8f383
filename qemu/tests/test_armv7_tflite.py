"""The armv7 (32-bit, armhf) TFLite-only bundle under qemu-arm, driven from this x86 host.

`make -C qemu test-user ARCH=armv7` installs the armv7 bundle with its install.sh in the armhf
root filesystem (Debian's python3-numpy 1.24, python3-zmq 24, python3-yaml, python3-pil in a
--system-site-packages venv; tflite-runtime 2.14 from the bundle; no onnxruntime), then runs
these tests: `inferd run` in the chroot, frames sent from the host over ZeroMQ (tcp on loopback:
a chroot shares the host's network), results compared with the same model on the host (LiteRT).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(900)]

QEMU_DIR = Path(__file__).resolve().parents[1]
ROOT = QEMU_DIR.parent
ROOTFS = Path(os.environ.get("QEMU_ARMHF_ROOTFS", QEMU_DIR / "build" / "armhf" / "rootfs"))
MODEL = "classifier_int8.tflite"
ARTIFACTS = QEMU_DIR / "build" / "artifacts-armv7"
IMAGENET = "{scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"
ENTRY = f"  - {{name: tflite, path: DIR/{MODEL}, dequantize_outputs: false, preprocess: {IMAGENET}}}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroot(*command: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(QEMU_DIR / "run-in-chroot.sh"), "armv7", str(ROOTFS), "--", *command],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rootfs() -> Path:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    if not (ROOTFS / "opt/inferd/bin/inferd").exists():
        pytest.skip(f"the armv7 bundle is not installed in {ROOTFS} (make -C qemu test-user ARCH=armv7)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ROOTFS


@pytest.fixture(scope="module")
def daemon(rootfs: Path):
    """`inferd run` in the armhf chroot on a router port and a metrics port of this host's loopback."""
    router, metrics = free_port(), free_port()
    config = (
        "models:\n"
        + ENTRY.replace("DIR", "/var/lib/inferd/models")
        + f'endpoints:\n  - {{type: router, bind: "tcp://127.0.0.1:{router}"}}\n'
        + f'metrics:\n  listen: "127.0.0.1:{metrics}"\n'
    )
    (rootfs / "etc/inferd/armv7-test.yaml").write_text(config)
    log = open(ARTIFACTS / "inferd.log", "w")  # noqa: SIM115 (closed in the finalizer)
    proc = subprocess.Popen(
        [str(QEMU_DIR / "run-in-chroot.sh"), "armv7", str(rootfs), "--",
         "/opt/inferd/bin/inferd", "run", "-c", "/etc/inferd/armv7-test.yaml"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{metrics}/metrics"
    try:
        while True:
            assert proc.poll() is None, (ARTIFACTS / "inferd.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                assert time.monotonic() - t0 < 300, "inferd (armv7, qemu-user) not serving after 300 s"
                time.sleep(1)
        yield {"router": f"tcp://127.0.0.1:{router}", "metrics": url, "start_seconds": time.monotonic() - t0}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # inferd drains and exits; the script unmounts
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(rootfs) + "/"):
                subprocess.run(["umount", "-l", mnt], check=False)


def test_the_bundle_uses_debian_numpy_pyzmq_and_tflite_runtime(rootfs):
    script = """
import json, numpy, zmq, yaml, PIL, pydantic, tflite_runtime, platform
try:
    import onnxruntime
    ort = True
except ImportError:
    ort = False
print(json.dumps({
    "machine": platform.machine(), "numpy": numpy.__version__, "numpy_at": numpy.__file__,
    "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "pyyaml": yaml.__version__,
    "pillow": PIL.__version__, "pydantic": pydantic.VERSION, "tflite_runtime": tflite_runtime.__version__,
    "onnxruntime": ort,
}))
"""
    proc = chroot("/opt/inferd/bin/python", "-c", script)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    (ARTIFACTS / "versions.json").write_text(json.dumps(info, indent=2))
    print("armv7 venv:", info)
    assert info["machine"] == "armv7l"
    assert info["numpy"].startswith("1.") and info["numpy_at"].startswith("/usr/lib/python3/dist-packages")
    assert info["tflite_runtime"] == "2.14.0" and info["onnxruntime"] is False
    assert (rootfs / "etc/inferd/inferd.yaml").exists()  # install.sh's default config
    assert (rootfs / "etc/systemd/system/multi-user.target.wants/inferd.service").is_symlink()  # enabled


def test_inferd_check_loads_the_model_with_tflite_runtime(rootfs):
    proc = chroot("/opt/inferd/bin/inferd", "check", "--json", "-c", "/etc/inferd/inferd.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"], report
    assert [m["runtime_package"] for m in report["models"]] == ["tflite-runtime"]


LEGACY = ROOT / ".venv-legacy" / "bin" / "python"  # x86 tflite-runtime 2.14 + numpy 1.x (make test)
LEGACY_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from inferd.config import parse_config
from inferd.models import load_model
model = load_model(parse_config(sys.argv[1]).models[0], Path("."))
assert model.backend.package == "tflite-runtime", model.backend.package
frames = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([model.predict([f])[0][0] for f in frames]))
"""


def x86_references(frames: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """The same model and config on this host: LiteRT (.venv), and tflite-runtime (.venv-legacy) if made."""
    from inferd.config import parse_config
    from inferd.models import load_model

    config = "models:\n" + ENTRY.replace("DIR", str(ROOT / "examples/models"))
    litert = load_model(parse_config(config).models[0], ROOT)
    refs = {"ai-edge-litert": np.stack([litert.predict([x])[0][0] for x in frames])}
    if LEGACY.exists():
        np.save(tmp / "frames.npy", frames)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        cmd = [str(LEGACY), "-c", LEGACY_SCRIPT, config, str(tmp / "frames.npy"), str(tmp / "legacy.npy")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        refs["tflite-runtime"] = np.load(tmp / "legacy.npy")
    return refs


def test_results_over_zeromq_equal_the_x86_results(daemon, tmp_path):
    """armv7 tflite-runtime vs x86: bit-exact against x86 tflite-runtime (the same runtime);
    against x86 LiteRT within one quantization step (LiteRT's kernels round differently)."""
    from inferd.client import InferClient

    frames = np.random.default_rng(2024).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    t0 = time.monotonic()
    with InferClient(daemon["router"], timeout=120, source="armv7") as client:
        outs = []
        for x in frames:
            result = client.infer(x, model="tflite")
            assert result.ok, result.header
            outs.append(result.outputs[0])
    seconds = (time.monotonic() - t0) / len(frames)
    arm = np.stack(outs)
    report = {"frames": len(frames), "seconds_per_frame": seconds, "start_seconds": daemon["start_seconds"]}
    for runtime, ref in x86_references(frames, tmp_path).items():
        assert arm.dtype == ref.dtype == np.int8 and arm.shape == ref.shape
        report[f"vs x86 {runtime}"] = {
            "bit_exact_frames": int(sum(np.array_equal(a, r) for a, r in zip(arm, ref, strict=True))),
            "max_diff_quant_steps": int(np.abs(arm.astype(int) - ref.astype(int)).max()),
        }
    (ARTIFACTS / "equality.json").write_text(json.dumps(report, indent=2))
    print("armv7 (tflite-runtime under qemu-arm) vs x86:", report)
    assert report["vs x86 ai-edge-litert"]["max_diff_quant_steps"] <= 1
    if "vs x86 tflite-runtime" in report:
        assert report["vs x86 tflite-runtime"]["bit_exact_frames"] == len(frames)


def test_metrics_count_the_frames(daemon):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(daemon["metrics"], timeout=30) as r:
        families = {m.name: m for m in text_string_to_metric_families(r.read().decode())}
    received = {s.labels.get("source"): s.value for s in families["inferd_frames_received"].samples}
    assert received.get("armv7") == 8
