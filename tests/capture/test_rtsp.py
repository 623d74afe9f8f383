"""A real RTSP server (Debian's rtsp-server-perl) fed by ffmpeg, stopped and restarted mid-stream:
`inferd capture` notices, reconnects, and frames flow again through a real inferd, with results
for the frames' content (the stream alternates red and green every two seconds)."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from inferd.client import ResultSubscriber
from inferd.errors import RequestTimeout
from tests.capture.harness import start_capture
from tests.capture.media import colour_config, colour_model
from tests.daemon_harness import DaemonProcess, free_port

TOOLS = ("rtsp-server-perl", "ffmpeg")
if any(shutil.which(t) is None for t in TOOLS):
    if os.environ.get("INFERD_CI"):  # CI installs them (make test): missing there is a failure
        raise RuntimeError(f"CI needs {', '.join(TOOLS)} (make test installs them as root)")
    pytest.skip(f"needs {', '.join(TOOLS)} (make test installs them as root)", allow_module_level=True)
pytest.importorskip("av")

# red for 2 s, then green for 2 s, and so on; a keyframe every second so a reader joins quickly
COLOURS = "geq=r='if(lt(mod(T\\,4)\\,2)\\,220\\,20)':g='if(lt(mod(T\\,4)\\,2)\\,20\\,220)':b=20"


class RtspCamera:
    def __init__(self, tmp) -> None:
        self.tmp, self.client_port, self.source_port = tmp, free_port(), free_port()
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        log = open(self.tmp / "rtsp.log", "a")  # noqa: SIM115
        server = subprocess.Popen(
            ["rtsp-server-perl", "--clientport", str(self.client_port), "--serverport", str(self.source_port),
             "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_port(self.source_port)
        publisher = subprocess.Popen(
            ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "color=c=black:size=320x240:rate=10",
             "-vf", COLOURS, "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
             "-rtsp_transport", "udp", "-f", "rtsp", f"rtsp://127.0.0.1:{self.source_port}/cam"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs = [publisher, server]

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/cam"

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)
        self.procs = []


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < end, f"nothing listens on port {port} after {timeout} s"
            time.sleep(0.05)


def labels_until(sub: ResultSubscriber, done, timeout: float = 90, why: str = "") -> list[str]:
    """Labels of the results as they come, until `done(labels)` (or fail after `timeout` s)."""
    out, end = [], time.monotonic() + timeout
    while not done(out):
        assert time.monotonic() < end, f"{why}: got {out} in {timeout} s"
        try:
            out.append(sub.recv(0.5).classes[0]["label"])
        except RequestTimeout:
            continue
    return out


def wait_log(log, text: str, count: int = 1, timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while (got := log.read_text()).count(text) < count:
        assert time.monotonic() < end, f"{text!r} not {count}x in the log after {timeout} s:\n{got}"
        time.sleep(0.05)
    return got


def test_capture_survives_an_rtsp_server_restart(tmp_path):
    camera = RtspCamera(tmp_path)
    camera.start()
    d = DaemonProcess(tmp_path, colour_config(colour_model(tmp_path / "colour.onnx")))
    capture, log = start_capture(
        tmp_path,
        f"url: {camera.url}\nto: {d.pull}\nsource: rtsp\nrtsp_transport: udp\nstall_timeout_s: 2\n"
        "reconnect_max_s: 1\nsize: 160x120\n",
    )
    try:
        with ResultSubscriber(d.results, "colour/rtsp") as sub:
            labels_until(sub, lambda got: {"red", "green"} <= set(got), why="both colours before")
            camera.stop()  # the camera reboots
            wait_log(log, "reconnecting")
            camera.start()
            wait_log(log, "streaming", count=2)
            after = labels_until(sub, lambda got: len(got) >= 10, why="frames after the restart")
        assert {"red", "green"} & set(after), after
    finally:
        capture.terminate()
        capture.wait(15)
        camera.stop()
        assert d.stop() == 0
