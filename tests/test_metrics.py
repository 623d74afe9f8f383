"""The HTTP endpoint of a running daemon: exact counts, readiness, health, bad HTTP input."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import zmq

from tests.daemon_harness import DaemonProcess, raw_header

CONFIG = """
models:
  - name: raw
    path: {models}/classifier_int8.onnx
    threads: 1
  - name: slow
    path: {models}/larger_float.onnx
    threads: 1
    warmup: 1
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


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("metrics"), CONFIG)
    yield d
    assert d.stop() == 0


def get(d, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{d.metrics_port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
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
    while len(reasons) < 12 and dealer.poll(10000):
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
    dealer = daemon.socket(zmq.DEALER, daemon.router)
    for i in range(6):
        dealer.send_multipart([b"", raw_header(BIG, model="slow", source=f"depth{i % 2}", id=str(i)), BIG])
    depths = [
        daemon.metric("inferd_queue_depth", source="depth0")
        + daemon.metric("inferd_queue_depth", source="depth1")
        for _ in range(20)
    ]
    got = 0
    while got < 6 and dealer.poll(10000):
        dealer.recv_multipart()
        got += 1
    dealer.close()
    assert max(depths) >= 1 and got == 6
    assert daemon.metric("inferd_queue_depth", source="depth0") == 0


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


def test_readiness_flips_only_after_warm_up(tmp_path):
    config = CONFIG.replace("    warmup: 1\n", "    warmup: 400\n")  # ~2 s of warm-up for `slow`
    import threading

    seen = []
    result = {}

    def start():
        result["d"] = DaemonProcess(tmp_path, config)

    t = threading.Thread(target=start)
    t.start()
    port = None
    end = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < end:
        cfg = tmp_path / "inferd.yaml"
        if port is None and cfg.exists():
            port = int(cfg.read_text().split('listen: "127.0.0.1:')[1].split('"')[0])
        if port:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    seen.append((r.status, json.loads(r.read())))
            except urllib.error.HTTPError as e:
                seen.append((e.code, json.loads(e.read())))
            except OSError:
                pass
        time.sleep(0.05)
    t.join()
    d = result["d"]
    try:
        assert seen, "never reached /readyz while starting"
        not_ready = [b for code, b in seen if code == 503]
        assert not_ready and not_ready[0]["ready"] is False
        assert any(b["models"]["slow"]["state"] == "loading" for b in not_ready)
        assert get(d, "/readyz")[0] == 200
        assert d.metric("inferd_ready") == 1
    finally:
        assert d.stop() == 0
