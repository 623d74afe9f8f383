"""The HTTP endpoint of a running daemon: exact counts, readiness, health, bad HTTP input."""

import errno
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import zmq

from tests.daemon_harness import DaemonProcess, raw_header
from tests.slow_model import Busy, build_slow_model, work

CONFIG = """
models:
  - name: raw
    path: {models}/classifier_int8.onnx
    threads: 1
  - name: slow
    path: {models}/larger_float.onnx
    threads: 1
    warmup: 1
  - name: busy
    path: {tmp}/busy.onnx
    threads: 1
endpoints:
  - {type: router, bind: "{router}", max_message_bytes: 2000000}
  - {type: pull, bind: "{pull}"}
results:
  bind: "{results}"
metrics:
  listen: "{metrics}"
  latency_buckets: [0.001, 0.01, 0.1, 1]
sources:
  - {match: "stale*", max_age_ms: 1000}
  - {match: "burst*", policy: latest, queue_size: 1}
"""

TENSOR = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
BIG = np.random.default_rng(6).standard_normal((1, 3, 224, 224)).astype(np.float32)


def start(tmp, config: str = CONFIG) -> DaemonProcess:
    build_slow_model(tmp / "busy.onnx")  # busy for as long as a frame asks (tests/slow_model.py)
    return DaemonProcess(tmp, config)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start(tmp_path_factory.mktemp("metrics"))
    yield d
    assert d.stop() == 0


def get(d, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{d.metrics_port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_counts_match_a_known_sequence_of_frames_exactly(daemon):
    ok = lambda parts: daemon.request(parts)[0]  # noqa: E731
    for i in range(5):
        assert ok([raw_header(TENSOR, model="raw", source="good", seq=i), TENSOR])["status"] == "ok"
    for _ in range(3):
        h = ok([raw_header(TENSOR, model="raw", source="stale0", ts=time.time() - 10), TENSOR])
        assert h["error"]["reason"] == "stale"
    for _ in range(2):
        h = ok([raw_header(TENSOR, model="raw", source="late", deadline=time.time() - 1), TENSOR])
        assert h["error"]["reason"] == "deadline"
    assert ok([b"{nope", TENSOR])["error"]["reason"] == "header"
    for _ in range(2):
        assert ok([raw_header(TENSOR, model="raw", source="bad"), b"xx"])["error"]["reason"] == "size"
    assert ok([raw_header(TENSOR, model="what", source="bad"), TENSOR])["error"]["reason"] == "unknown_model"
    # a burst into a latest queue of one: every request is answered, ok or queue_full
    dealer = daemon.socket(zmq.DEALER, daemon.router)
    for i in range(12):
        dealer.send_multipart([b"", raw_header(BIG, model="slow", source="burst0", id=str(i)), BIG])
    reasons = []
    while len(reasons) < 12 and dealer.poll(30000):
        h = json.loads(dealer.recv_multipart()[1])
        reasons.append("ok" if h["status"] == "ok" else h["error"]["reason"])
    dealer.close()
    assert len(reasons) == 12 and set(reasons) <= {"ok", "queue_full"}
    served, full = reasons.count("ok"), reasons.count("queue_full")

    m = daemon.metric
    assert m("inferd_frames_received_total", source="good") == 5
    assert m("inferd_frames_received_total", source="stale0") == 3
    assert m("inferd_frames_received_total", source="late") == 2
    assert m("inferd_frames_received_total", source="bad") == 3
    assert m("inferd_frames_received_total", source="burst0") == 12
    assert m("inferd_frames_dropped_total", source="stale0", reason="stale") == 3
    assert m("inferd_frames_dropped_total", source="late", reason="deadline") == 2
    assert m("inferd_frames_dropped_total", source="burst0", reason="queue_full") == full
    assert m("inferd_frames_rejected_total", source="unknown", reason="header") == 1
    assert m("inferd_frames_rejected_total", source="bad", reason="size") == 2
    assert m("inferd_frames_rejected_total", source="bad", reason="unknown_model") == 1
    assert m("inferd_inferences_total", model="raw", status="ok") == 5
    assert m("inferd_inferences_total", model="slow", status="ok") == served
    assert m("inferd_inference_seconds_count", model="raw") == 5
    assert m("inferd_preprocess_seconds_count", model="raw") == 5
    assert m("inferd_batch_size_sum", model="raw") == 5
    assert m("inferd_frame_latency_seconds_count", model="raw", source="good") == 5
    assert m("inferd_frame_latency_seconds_bucket", model="raw", source="good", le="+Inf") == 5
    assert m("inferd_model_loaded", model="raw") == 1 and m("inferd_ready") == 1
    assert m("inferd_model_load_seconds", model="slow") > 0
    info = [k for k in daemon.scrape() if k[0] == "inferd_model_info" and ("model", "raw") in k[1]]
    labels = dict(info[0][1])
    assert labels["runtime"] == "onnx" and labels["quantized"] == "true" and len(labels["sha256"]) == 64
    build = dict(next(k for k in daemon.scrape() if k[0] == "inferd_build_info")[1])
    assert build["numpy"] == np.__version__ and build["pyzmq"] == zmq.__version__, build


def test_queue_depth_is_exported_per_source(daemon):
    """Frames waiting behind a long inference show as queue depth, per source, exactly."""
    busy = Busy(daemon.tmp / "busy.onnx")
    dealer = daemon.socket(zmq.DEALER, daemon.router)

    def send(source: str, frame, rid: str) -> None:
        dealer.send_multipart([b"", raw_header(frame, model="busy", source=source, id=rid), frame])

    def depths() -> tuple[float, float]:
        scrape = daemon.scrape()
        return tuple(scrape.get(("inferd_queue_depth", (("source", s),)), 0.0) for s in ("depth0", "depth1"))

    send("hold", busy.frame(5), "hold")  # the worker is inside this one for seconds
    for i, source in enumerate(["depth0", "depth0", "depth1"]):  # queued behind it (2 fit a queue)
        send(source, work(1), str(i))
    end, seen = time.monotonic() + 30, None
    while seen != (2, 1):
        assert not dealer.poll(0), (
            f"precondition not met: the long inference ended before the queue was seen ({seen})"
        )
        assert time.monotonic() < end, f"queue depths {seen}, not (2, 1)"
        seen = depths()
    got = []
    while len(got) < 4 and dealer.poll(60000):
        got.append(json.loads(dealer.recv_multipart()[1]))
    dealer.close()
    assert sorted(h["id"] for h in got if h["status"] == "ok") == ["0", "1", "2", "hold"], got
    assert depths() == (0, 0)


def test_health_and_readiness_bodies(daemon):
    code, body = get(daemon, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, body = get(daemon, "/readyz")
    ready = json.loads(body)
    assert code == 200 and ready["ready"] is True
    assert ready["models"]["raw"]["state"] == "ready" and ready["models"]["slow"]["runtime"] == "onnx"


def test_bad_http_requests_get_4xx_and_no_crash(daemon):
    assert get(daemon, "/nope")[0] == 404
    assert get(daemon, "/metrics/../../etc/passwd")[0] == 404
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.metrics_port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    conn = http.client.HTTPConnection("127.0.0.1", daemon.metrics_port, timeout=5)
    conn.putrequest("GET", "/metrics")
    conn.putheader("X-Huge", "a" * 70000)
    conn.endheaders()
    assert conn.getresponse().status in (400, 431)
    conn.close()
    with socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01garbage that is not http\r\n\r\n")
        assert b"Error code: 400" in s.recv(400)  # answered as HTTP/0.9, the server lives on
    with socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n")
        assert b" 431 " in s.recv(200)
    assert get(daemon, "/metrics")[0] == 200 and daemon.proc.poll() is None


def test_status_command_shows_the_daemon(daemon):
    import subprocess
    import sys

    daemon.request([raw_header(TENSOR, model="raw", source="statuscam"), TENSOR])
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "status", "--url", f"http://127.0.0.1:{daemon.metrics_port}", "--interval", "0.2"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    raw = next(line for line in lines if line.startswith("raw "))
    assert raw.split()[1] == "yes"
    assert any(line.startswith("statuscam ") for line in lines)
    assert any(line.startswith("stale0 ") and "stale 3" in line for line in lines)
    proc = subprocess.run([sys.executable, "-m", "inferd", "status", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 1 and "cannot scrape" in proc.stderr


def readyz(port: int) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None  # not listening yet


def test_readiness_flips_only_after_warm_up(tmp_path):
    """/readyz says 503 while a model loads and 200 only once it is warm. The state is made, not
    waited for: `slow`'s labels file is a FIFO the test keeps shut, so the daemon stays inside
    loading `slow` (before its warm-up) until the test writes the labels."""
    gate = tmp_path / "labels.fifo"
    os.mkfifo(gate)
    # ~2 s of warm-up; in this process (a worker process would read the FIFO a second time)
    config = CONFIG.replace("    warmup: 1\n", f"    warmup: 400\n    labels: {gate}\n    workers: threads\n")
    result = {}

    def run():
        try:
            result["d"] = start(tmp_path, config)
        except BaseException as e:
            result["error"] = e

    def open_gate() -> int | None:  # the write end, once the daemon has opened the read end
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            assert e.errno == errno.ENXIO, e  # ENXIO: nobody reads it yet
            return None

    t = threading.Thread(target=run, daemon=True)
    t.start()
    end = time.monotonic() + 30
    cfg, log = tmp_path / "inferd.yaml", tmp_path / "inferd.log"
    try:
        while not cfg.exists() or "127.0.0.1:" not in cfg.read_text():
            assert time.monotonic() < end and t.is_alive(), result.get("error", "no config written")
            time.sleep(0.02)
        port = int(cfg.read_text().split('listen: "127.0.0.1:')[1].split('"')[0])
        # 1. the gate shut: not ready, `slow` loading, for as long as it takes to see it
        while (seen := readyz(port)) is None or seen[1]["models"]["slow"]["state"] != "loading":
            assert seen is None or seen[0] == 503, f"ready while a model was loading: {seen}"
            assert time.monotonic() < end and t.is_alive(), f"never saw `slow` loading: {seen} {result}"
            time.sleep(0.02)
        assert seen[0] == 503 and seen[1]["ready"] is False, seen
        # 2. open the gate: the daemon reads the labels, then warms `slow` up
        while (fd := open_gate()) is None:
            assert time.monotonic() < end and t.is_alive(), f"the labels were never read: {result}"
            time.sleep(0.02)
        os.write(fd, "".join(f"class{i}\n" for i in range(1000)).encode())
        os.close(fd)
        # 3. until the daemon is ready: 503, or a 200 given after the warm-up ended (logged)
        while t.is_alive():
            if (seen := readyz(port)) is not None and seen[0] != 503:
                assert seen[0] == 200 and "loaded model slow" in log.read_text(), f"ready too early: {seen}"
            time.sleep(0.02)
        t.join()
        assert "error" not in result, result["error"]
        d = result["d"]
        assert get(d, "/readyz")[0] == 200
        assert d.metric("inferd_ready") == 1
    finally:
        if t.is_alive() and (fd := open_gate()) is not None:  # a failure above: let the start end
            os.close(fd)
        t.join(60)
        if "d" in result:
            assert result["d"].stop() == 0
