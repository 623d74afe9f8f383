"""An HTTP camera as most cheap IP cameras (ESP32-CAM, many webcams' web servers) serve one: an
MJPEG stream (multipart/x-mixed-replace), from a real HTTP server in the test. It alternates red
and green; then it stalls (the connection stays open, nothing more comes), then it resumes:
`inferd capture` notices the stall, reconnects, and frames flow again through a real inferd."""

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from inferd.client import ResultSubscriber
from tests.capture.harness import start_capture
from tests.capture.media import colour_config, colour_model, solid
from tests.capture.test_rtsp import labels_until, wait_log
from tests.daemon_harness import DaemonProcess

pytest.importorskip("av")

BOUNDARY = "frame"


def jpeg(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(solid(colour, 160, 120)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class MjpegCamera:
    """10 fps, red for 1 s then green for 1 s; `stalled` holds every connection open, silent."""

    def __init__(self) -> None:
        self.stalled = threading.Event()
        self.frames = {c: jpeg(c) for c in ("red", "green")}
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                try:
                    while True:
                        if camera.stalled.is_set():
                            time.sleep(0.05)
                            continue
                        body = camera.frames["red" if int(time.time()) % 2 == 0 else "green"]
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                            + body
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_mjpeg_http_camera_that_stalls_is_reconnected(tmp_path):
    camera = MjpegCamera()
    d = DaemonProcess(tmp_path, colour_config(colour_model(tmp_path / "colour.onnx")))
    capture, log = start_capture(
        tmp_path,
        f"url: {camera.url}\nto: {d.pull}\nsource: esp32\nstall_timeout_s: 2\nreconnect_max_s: 1\n",
    )
    try:
        with ResultSubscriber(d.results, "colour/esp32") as sub:
            labels_until(sub, lambda got: {"red", "green"} <= set(got), why="both colours before")
            camera.stalled.set()  # connected, silent: only a timeout can tell
            wait_log(log, "reconnecting")
            camera.stalled.clear()
            wait_log(log, "streaming", count=2)
            labels_until(
                sub, lambda got: len(got) >= 20 and {"red", "green"} <= set(got), why="frames after the stall"
            )
    finally:
        capture.terminate()
        capture.wait(15)
        camera.close()
        assert d.stop() == 0
