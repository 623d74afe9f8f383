"""What `inferd capture` says about its way to inferd and its sources: the state it is in, a
daemon that refuses its frames, nobody at the address, and a camera host that is not there."""

import os
import signal
import subprocess
import sys
import time

import pytest

from inferd.capture.config import load_capture_config
from inferd.capture.run import Capture
from inferd.client import ResultSubscriber
from tests.capture.media import colour_config, colour_model, encode_video
from tests.daemon_harness import DaemonProcess, free_port

pytest.importorskip("av")


def start(*args: str, log_level: str | None = None) -> tuple[subprocess.Popen, list[str]]:
    """`inferd capture ARGS` with its stderr read line by line into a list, as it comes."""
    import threading

    level = ["--log-level", log_level] if log_level else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd", *level, "capture", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return proc, lines


def wait_line(lines: list[str], text: str, timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in list(lines):
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} in {timeout} s:\n{''.join(lines)}")


def stop(proc: subprocess.Popen, lines: list[str], grace: float = 8.0) -> int:
    """SIGTERM; the exit must come well before the 10 s a blocked sender used to take."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(
            f"inferd capture still running {grace} s after SIGTERM:\n{''.join(lines)}"
        ) from None


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """An inferd with two models and no routes: a request must name its model."""
    tmp = tmp_path_factory.mktemp("two")
    model = colour_model(tmp / "colour.onnx")
    config = colour_config(model).replace("models:\n", f"models:\n  - {{name: other, path: {model}}}\n", 1)
    config = config.replace("endpoints:\n", 'endpoints:\n  - {type: router, bind: "{router}"}\n', 1)
    d = DaemonProcess(tmp, config)
    yield d
    assert d.stop() == 0, d.logs()


def test_a_working_capture_says_it_is_streaming_without_being_asked(two_models, tmp_path):
    video = encode_video(tmp_path / "v.mp4", ["red"], per_colour=5)
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "capture", "--url", str(video), "--to", two_models.router,
         "--to-type", "router", "--model", "colour", "--pace", "asap"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{video}: streaming" in proc.stderr and "5 sent, 5 accepted by inferd" in proc.stderr


def test_refusals_are_logged_counted_and_a_file_all_refused_fails(two_models, tmp_path):
    video = encode_video(tmp_path / "v.mp4", ["red", "green"], per_colour=4)
    args = ["--url", str(video), "--to", two_models.router, "--to-type", "router", "--pace", "asap"]
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "capture", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    refusals = [
        line for line in proc.stderr.splitlines() if "inferd refused a frame: multiple_models:" in line
    ]
    assert len(refusals) == 1, proc.stderr  # rate-limited: one line for eight refusals
    assert "refused: 8 multiple_models" in proc.stderr
    assert "inferd capture: inferd refused every frame of" in proc.stderr
    # counted in capture's metrics, by inferd's reason
    cfg = load_capture_config(None, {"url": str(video), "to": two_models.router, "to_type": "router",
                                     "pace": "asap"})  # fmt: skip
    capture = Capture(cfg)
    assert capture.run() == 1
    assert capture.metrics.dropped.labels("multiple_models")._value.get() == 8
    assert capture.link.accepted == 0 and capture.link.refused == {"multiple_models": 8}


def test_nobody_at_a_pull_address_is_said_and_frames_flow_once_inferd_is_there(tmp_path):
    video = encode_video(tmp_path / "v.mp4", ["blue"], per_colour=30)
    address = f"ipc://{tmp_path}/frames.sock"  # where the DaemonProcess below binds its pull
    proc, lines = start("--url", str(video), "--to", address, "--source", "late", "--loop")
    try:
        line = wait_line(lines, "no inferd at")
        assert f"no inferd at {address} yet (nothing answered for 5 s: no socket file" in line
        assert "still trying" in line
        d = DaemonProcess(tmp_path, colour_model_config(tmp_path))
        try:
            with ResultSubscriber(d.results, "colour/late") as sub:
                assert sub.recv(60).classes[0]["label"] == "blue"
            wait_line(lines, "takes frames again")
        finally:
            assert d.stop() == 0
        assert stop(proc, lines) == 0
    finally:
        proc.kill()


def colour_model_config(tmp_path) -> str:
    return colour_config(colour_model(tmp_path / "colour.onnx"))


def test_nobody_at_a_router_address_is_said_and_sigterm_is_quick(tmp_path):
    video = encode_video(tmp_path / "v.mp4", ["blue"], per_colour=30)
    port = free_port()
    proc, lines = start("--url", str(video), "--to", f"tcp://127.0.0.1:{port}", "--to-type", "router",
                        "--loop")  # fmt: skip
    try:
        line = wait_line(lines, "no inferd at")
        assert f"no inferd at tcp://127.0.0.1:{port} yet (nothing answered for" in line
        assert f"127.0.0.1:{port} refused the connection" in line
        assert stop(proc, lines) == 0
    finally:
        proc.kill()


def test_a_camera_host_that_is_not_there_gets_a_sentence(tmp_path):
    port = free_port()
    for url, says in (
        (f"rtsp://127.0.0.1:{port}/stream", f"127.0.0.1:{port} refused the connection"),
        ("rtsp://no-such-camera.invalid/stream", "the host 'no-such-camera.invalid' did not resolve"),
    ):
        proc, lines = start("--url", url, "--to", f"ipc://{tmp_path}/x.sock")
        try:
            line = wait_line(lines, "reconnecting (")
            assert says in line, line
            assert stop(proc, lines) == 0
        finally:
            proc.kill()


def test_a_capture_owned_by_a_killed_process_stops(tmp_path):
    """`inferd demo` owns the capture it starts (INFERD_PARENT_PID): when the demo is killed with
    SIGKILL, the capture gets SIGTERM and stops instead of playing its clip to nobody."""
    video = encode_video(tmp_path / "v.mp4", ["blue"], per_colour=30)
    port = free_port()
    owner = subprocess.Popen(
        [sys.executable, "-c", f"""
import os, subprocess, sys, time
env = {{**os.environ, "INFERD_PARENT_PID": str(os.getpid())}}
child = subprocess.Popen([sys.executable, "-m", "inferd", "capture", "--url", {str(video)!r},
                          "--to", "tcp://127.0.0.1:{port}", "--loop"], env=env)
print(child.pid, flush=True)
time.sleep(600)
"""],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = int(owner.stdout.readline())
    try:
        time.sleep(3)  # the capture is up and trying
        assert _running(pid)
        owner.kill()
        owner.wait()
        end = time.monotonic() + 20
        while _running(pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert not _running(pid), "inferd capture still running after its owner was killed"
    finally:
        owner.kill()
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether the process is alive (a zombie nobody reaped yet has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
