"""The armv7 (32-bit, armhf) TFLite-only bundle under qemu-arm, driven from this x86 host.

`make -C qemu test-user ARCH=armv7` installs the armv7 bundle with its install.sh in the armhf
root filesystem (Debian's python3-numpy 1.24, python3-zmq 24, python3-yaml, python3-pil in a
--system-site-packages venv; tflite-runtime 2.14 from the bundle; no onnxruntime), then runs
these tests: `inferd run` in the chroot, frames sent from the host over ZeroMQ (tcp on loopback:
a chroot shares the host's network), results compared with the same model on the host: bit-exact
against x86 tflite-runtime (.venv-legacy, which `make -C qemu ci` builds; without it that test
skips, and fails in CI), within one quantization step of x86 LiteRT. The capture and mqtt extras:
paho-mqtt imports from the bundle, and `inferd capture` decodes an H.264 clip (encoded here with
PyAV) with Debian's python3-av 10 (the rootfs step installs it: no armv7l PyAV wheel) and sends
its frames to that inferd. install.sh's own failure paths (altered bundle, broken wheel, failed
check, rollback, a missing python3-av) are in test_install.py.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def inferd_in_chroot(rootfs: Path, name: str, log_name: str, model_options: str = ""):
    """`inferd run` in the armhf chroot on a router port and a metrics port of this host's loopback,
    with /etc/inferd/NAME.yaml (the model entry plus `model_options`); its output in LOG_NAME."""
    router, metrics = free_port(), free_port()
    entry = ENTRY.replace("DIR", "/var/lib/inferd/models")
    if model_options:
        entry = entry[: entry.rindex("}")] + f", {model_options}}}\n"
    config = (
        "models:\n"
        + entry
        + f'endpoints:\n  - {{type: router, bind: "tcp://127.0.0.1:{router}"}}\n'
        + f'metrics:\n  listen: "127.0.0.1:{metrics}"\n'
    )
    (rootfs / f"etc/inferd/{name}.yaml").write_text(config)
    log = open(ARTIFACTS / log_name, "w")  # noqa: SIM115 (closed in the finally)
    proc = subprocess.Popen(
        [str(QEMU_DIR / "run-in-chroot.sh"), "armv7", str(rootfs), "--",
         "/opt/inferd/bin/inferd", "run", "-c", f"/etc/inferd/{name}.yaml"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{metrics}/metrics"
    try:
        while True:
            assert proc.poll() is None, (ARTIFACTS / log_name).read_text()
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                assert time.monotonic() - t0 < 300, "inferd (armv7, qemu-user) not serving after 300 s"
                time.sleep(1)
        yield {
            "router": f"tcp://127.0.0.1:{router}", "metrics": url, "start_seconds": time.monotonic() - t0,
            "proc": proc, "log": ARTIFACTS / log_name,
        }  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # inferd drains and exits; the script unmounts
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def unmount_leftovers(rootfs: Path) -> None:
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        mnt = line.split()[1]
        if mnt.startswith(str(rootfs) + "/"):
            subprocess.run(["umount", "-l", mnt], check=False)


@pytest.fixture(scope="module")
def daemon(rootfs: Path):
    """`inferd run` in the armhf chroot: the TFLite model, one instance (a worker thread)."""
    try:
        with inferd_in_chroot(rootfs, "armv7-test", "inferd.log") as d:
            yield d
    finally:
        unmount_leftovers(rootfs)


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


def test_the_bundle_records_its_versions(rootfs):
    """build-info.json travels with the install: the exact wheels, and numpy/pyzmq named as Debian's."""
    info = json.loads((rootfs / "opt/inferd/share/doc/inferd/build-info.json").read_text())
    assert info["arch"] == "armv7" and info["versions"]["tflite-runtime"] == "2.14.0"
    assert "python3-numpy" in info["versions"]["numpy"] and "python3-zmq" in info["versions"]["pyzmq"]
    assert info["versions"]["onnxruntime"] is None
    assert (rootfs / "opt/inferd").is_symlink()  # /opt/inferd -> inferd-releases/VERSION-STAMP


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
from inferd.engine.models import load_model
model = load_model(parse_config(sys.argv[1]).models[0], Path("."))
assert model.backend.package == "tflite-runtime", model.backend.package
frames = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([model.predict([f])[0][0] for f in frames]))
"""


CONFIG = "models:\n" + ENTRY.replace("DIR", str(ROOT / "examples/models"))
FRAMES = np.random.default_rng(2024).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def armv7_results(daemon) -> dict:
    """FRAMES through `inferd run` in the armhf chroot, over ZeroMQ from this host."""
    from inferd.client import InferClient

    t0 = time.monotonic()
    with InferClient(daemon["router"], timeout=120, source="armv7") as client:
        outs = []
        for x in FRAMES:
            result = client.infer(x, model="tflite")
            assert result.ok, result.header
            outs.append(result.outputs[0])
    report = {"frames": len(FRAMES), "seconds_per_frame": (time.monotonic() - t0) / len(FRAMES)}
    return {"outputs": np.stack(outs), "report": report | {"start_seconds": daemon["start_seconds"]}}


def compare(arm: np.ndarray, ref: np.ndarray, runtime: str) -> dict:
    assert arm.dtype == ref.dtype == np.int8 and arm.shape == ref.shape
    out = {
        "bit_exact_frames": int(sum(np.array_equal(a, r) for a, r in zip(arm, ref, strict=True))),
        "max_diff_quant_steps": int(np.abs(arm.astype(int) - ref.astype(int)).max()),
    }
    path = ARTIFACTS / "equality.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(report | {f"vs x86 {runtime}": out}, indent=2))
    print(f"armv7 (tflite-runtime under qemu-arm) vs x86 {runtime}:", out)
    return out


def test_results_over_zeromq_are_within_a_step_of_x86_litert(armv7_results):
    """Against x86 LiteRT (.venv): within one quantization step (LiteRT's kernels round
    differently; measured 5/8 frames identical, as between the two runtimes on x86)."""
    from inferd.config import parse_config
    from inferd.engine.models import load_model

    (ARTIFACTS / "equality.json").write_text(json.dumps(armv7_results["report"], indent=2))
    litert = load_model(parse_config(CONFIG).models[0], ROOT)
    ref = np.stack([litert.predict([x])[0][0] for x in FRAMES])
    assert compare(armv7_results["outputs"], ref, "ai-edge-litert")["max_diff_quant_steps"] <= 1


def test_results_over_zeromq_are_bit_exact_against_x86_tflite_runtime(armv7_results, tmp_path):
    """Against x86 tflite-runtime 2.14, the same runtime (.venv-legacy: numpy 1.x): bit-exact on
    every frame. Skips without .venv-legacy (`make legacy-venv`); INFERD_CI=1 makes that a failure."""
    if not LEGACY.exists():
        pytest.skip(f"no {LEGACY} (make -C {ROOT} legacy-venv): the x86 tflite-runtime reference")
    np.save(tmp_path / "frames.npy", FRAMES)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    frames, out = str(tmp_path / "frames.npy"), str(tmp_path / "legacy.npy")
    cmd = [str(LEGACY), "-c", LEGACY_SCRIPT, CONFIG, frames, out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = compare(armv7_results["outputs"], np.load(tmp_path / "legacy.npy"), "tflite-runtime")
    assert got["bit_exact_frames"] == len(FRAMES), got


def test_metrics_count_the_frames_and_name_the_runtime_versions(daemon, armv7_results, rootfs):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(daemon["metrics"], timeout=30) as r:
        families = {m.name: m for m in text_string_to_metric_families(r.read().decode())}
    received = {s.labels.get("source"): s.value for s in families["inferd_frames_received"].samples}
    assert received.get("armv7") == len(FRAMES)
    # inferd_build_info names what really runs: Debian's numpy and pyzmq, tflite-runtime.
    (build,) = families["inferd_build_info"].samples
    script = "import numpy, zmq; print(numpy.__version__, zmq.__version__)"
    proc = chroot("/opt/inferd/bin/python", "-c", script)
    numpy_version, pyzmq_version = proc.stdout.split()
    assert build.labels["numpy"] == numpy_version and build.labels["pyzmq"] == pyzmq_version, build.labels
    assert build.labels["litert"] == "2.14.0" and build.labels["onnxruntime"] == "", build.labels


# --- worker processes on armv7: `instances: 2` (each instance its own interpreter) ---------------------
def host_processes() -> dict[int, tuple[int, list[bytes]]]:
    """pid -> (parent pid, argv) of every process of this host (chroot's emulated ones included: a
    qemu-arm process's argv holds the emulated program's, after qemu's own)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = [a for a in (d / "cmdline").read_bytes().split(b"\0") if a]
            except (OSError, IndexError, ValueError):
                continue
            out[int(d.name)] = (ppid, argv)
    return out


def worker_processes(top: int, model: str = "tflite") -> dict[int, tuple[int, list[bytes]]]:
    """The `python -m inferd.engine.child MODEL INDEX` processes under process `top`."""
    procs = host_processes()
    below, todo = set(), [top]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, (ppid, _) in procs.items() if ppid == parent and pid not in below]
        below.update(kids)
        todo += kids
    out = {}
    for pid in below:
        argv = procs[pid][1]
        after = argv[argv.index(b"inferd.engine.child") + 1 :] if b"inferd.engine.child" in argv else []
        if after[:1] == [model.encode()]:
            out[pid] = procs[pid]
    return out


def test_two_instances_in_worker_processes_give_the_single_instance_results(rootfs, armv7_results):
    """`instances: 2, workers: processes` under qemu-arm (Debian's numpy, tflite-runtime): two
    `inferd.engine.child` processes, children of the daemon, started and connected (memfd slots,
    their socketpairs to the daemon, PR_SET_PDEATHSIG under qemu-user); FRAMES from two clients at once
    (so both workers infer) give exactly the single-instance daemon's outputs; the workers' counts
    reach the daemon's metrics; no worker outlives the daemon's SIGTERM."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.parser import text_string_to_metric_families

    from inferd.client import InferClient

    report: dict = {}
    with inferd_in_chroot(
        rootfs, "armv7-workers", "inferd-workers.log", "instances: 2, workers: processes"
    ) as d:
        # /metrics answers once the daemon's own check of the model is done; /readyz once the
        # worker processes said they are loaded (READY=1 under systemd)
        polled = time.monotonic()
        deadline = polled + 180
        while True:
            try:
                with urllib.request.urlopen(d["metrics"].replace("/metrics", "/readyz"), timeout=10):
                    break
            except OSError:
                assert d["proc"].poll() is None, d["log"].read_text()
                assert time.monotonic() < deadline, ("not ready", d["log"].read_text())
                time.sleep(0.5)
        report["metrics_after_s"] = round(d["start_seconds"], 1)
        report["ready_after_s"] = round(d["start_seconds"] + time.monotonic() - polled, 1)
        top = d["proc"].pid  # run-in-chroot.sh; inferd and its workers are below it
        workers = worker_processes(top)
        assert len(workers) == 2, (workers, d["log"].read_text())
        assert sorted(argv[-1] for _, argv in workers.values()) == [b"0", b"1"], workers  # INDEX
        parents = {ppid for ppid, _ in workers.values()}
        assert len(parents) == 1, workers  # one daemon's children
        (daemon_pid,) = parents
        assert b"run" in host_processes()[daemon_pid][1], host_processes()[daemon_pid]
        report["workers"] = {pid: [a.decode() for a in argv] for pid, (_, argv) in workers.items()}

        def run(indexes) -> list:
            with InferClient(d["router"], timeout=180, source="armv7-workers") as client:
                out = []
                for i in indexes:
                    sent = time.monotonic()
                    result = client.infer(FRAMES[i], model="tflite")
                    assert result.ok, (i, result.header)
                    out.append((i, result.outputs[0], round(time.monotonic() - sent, 3)))
                return out

        t0 = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            done = [
                pair
                for part in pool.map(run, [range(0, len(FRAMES), 2), range(1, len(FRAMES), 2)])
                for pair in part
            ]
        report["seconds_per_frame_2_clients"] = round((time.monotonic() - t0) / len(FRAMES), 2)
        done.sort(key=lambda answer: answer[0])
        report["seconds_per_request"] = [seconds for _, _, seconds in done]
        outputs = np.stack([out for _, out, _ in done])
        single = armv7_results["outputs"]
        assert outputs.dtype == single.dtype and outputs.shape == single.shape
        report["equal_to_single_instance"] = int(
            sum(np.array_equal(a, b) for a, b in zip(outputs, single, strict=True))
        )
        assert np.array_equal(outputs, single), report  # same runtime, same machine: bit for bit

        with urllib.request.urlopen(d["metrics"], timeout=60) as r:
            families = {m.name: m for m in text_string_to_metric_families(r.read().decode())}

        def value(family: str, **labels) -> float | None:
            for s in families[family].samples:
                if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
            return None

        assert value("inferd_frames_received", source="armv7-workers") == len(FRAMES)
        # counted in the worker processes, sent to the daemon with the scrape
        assert value("inferd_inferences", model="tflite", status="ok") == len(FRAMES)
        assert value("inferd_worker_restarts", model="tflite") == 0
        assert worker_processes(top).keys() == workers.keys()  # the same two processes all along
    log = d["log"].read_text()
    report["log_tail"] = log.splitlines()[-8:]
    (ARTIFACTS / "workers.json").write_text(json.dumps(report, indent=2, default=str))
    print("armv7 worker processes:", report)
    assert "model tflite: 2 worker process(es) ready" in log, log
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert alive == [], (alive, log)  # stopped with the daemon


# --- the capture and mqtt extras on armv7 ---------------------------------------------------------------
EXTRAS_SCRIPT = """
import json, av, paho.mqtt, paho.mqtt.client as mqtt, inferd.outputs.mqtt, inferd.capture.run
print(json.dumps({"av": av.__version__, "av_at": av.__file__, "ffmpeg": av.library_versions["libavcodec"],
                  "paho": paho.mqtt.__version__, "paho_at": paho.mqtt.__file__,
                  "api": mqtt.CallbackAPIVersion.VERSION2.name}))
"""


def test_paho_mqtt_comes_from_the_bundle_and_pyav_from_debian(rootfs):
    proc = chroot("/opt/inferd/bin/python", "-c", EXTRAS_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    (ARTIFACTS / "extras.json").write_text(json.dumps(info, indent=2))
    print("armv7 extras:", info)
    assert info["paho"].startswith("2.") and info["api"] == "VERSION2"
    assert (
        "/site-packages/" in info["paho_at"] and "dist-packages" not in info["paho_at"]
    )  # the bundle's wheel
    assert info["av"].startswith("10.") and info["av_at"].startswith("/usr/lib/python3/dist-packages")


CLIP_FRAMES = 12  # 4 red, 4 green, 4 blue


def test_inferd_capture_sends_a_video_to_inferd_with_debian_pyav_10(rootfs, daemon, tmp_path):
    """`inferd capture --url small.mp4` under qemu-arm, decoding with python3-av 10.0: every frame of
    the clip, resized to the model's 64x64 in swscale, is answered by the armv7 inferd (router:
    one reply per frame, so the count is exact) and counted under its source."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.capture.media import encode_video

    clip = encode_video(tmp_path / "small.mp4", ["red", "green", "blue"], per_colour=4, fps=10)
    folder = rootfs / "root/capture-test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "small.mp4").write_bytes(clip.read_bytes())
    t0 = time.monotonic()
    try:
        proc = chroot(
            "/opt/inferd/bin/inferd", "--log-level", "info", "capture",
            "--url", "/root/capture-test/small.mp4", "--to", daemon["router"], "--to-type", "router",
            "--source", "armv7-capture",
            "--model", "tflite", "--size", "64x64", "--pace", "asap", timeout=600,
        )  # fmt: skip
    finally:
        (folder / "small.mp4").unlink()
        folder.rmdir()
    seconds = time.monotonic() - t0
    (ARTIFACTS / "capture.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"stopped: {CLIP_FRAMES} frames decoded, {CLIP_FRAMES} sent" in proc.stderr, proc.stderr
    with urllib.request.urlopen(daemon["metrics"], timeout=30) as r:
        families = {m.name: m for m in text_string_to_metric_families(r.read().decode())}

    def by_source(name: str) -> dict:
        return {
            s.labels.get("reason", ""): s.value
            for s in families[name].samples
            if s.name.endswith("_total") and s.labels.get("source") == "armv7-capture"
        }

    assert by_source("inferd_frames_received") == {"": CLIP_FRAMES}
    assert by_source("inferd_frames_rejected") == {} and by_source("inferd_frames_dropped") == {}
    (ARTIFACTS / "capture.json").write_text(json.dumps({"frames": CLIP_FRAMES, "seconds": round(seconds, 1)}))
