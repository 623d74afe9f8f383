"""Ways in, at their limits: an oversized message on every ingest type, an ipc path in use."""

import json
import socket
import time

import numpy as np
import pytest
import zmq

from inferd.client import InferClient, ResultSubscriber
from inferd.errors import RequestError, RequestTimeout
from inferd.ingest.endpoints import HARD_LIMIT_FACTOR, Endpoint
from inferd.ingest.ipc import unlink_ipc
from tests.daemon_harness import DaemonProcess, raw_header

LIMIT = 1_000_000
TENSOR = np.random.default_rng(7).standard_normal((1, 3, 64, 64)).astype(np.float32)
BIG = np.zeros(int(LIMIT * 1.5), np.uint8)  # over the limit, under libzmq's hard limit (4x)

CONFIG = f"""
models:
  - {{name: raw, path: "{{models}}/classifier_int8.onnx", threads: 1}}
  - {{name: det, path: "{{models}}/classifier_int8.onnx", threads: 1}}
endpoints:
  - {{type: router, bind: "{{router}}", max_message_bytes: {LIMIT}}}
  - {{type: pull, bind: "{{pull}}", max_message_bytes: {LIMIT}}}
  - {{type: sub, connect: "{{camera_pub}}", max_message_bytes: {LIMIT}}}
  - {{type: frigate, bind: "ipc://{{tmp}}/frigate.sock", model: raw, max_message_bytes: {LIMIT}}}
results:
  bind: "{{results}}"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("limits"), CONFIG)
    yield d
    assert d.stop() == 0, d.logs()


def test_an_oversized_request_is_answered_too_large(daemon):
    with InferClient(daemon.router, timeout=30, source="big") as client:
        with pytest.raises(RequestError) as e:
            client.infer(BIG, model="raw")
        assert e.value.reason == "too_large"
        assert f"the limit is {LIMIT}" in str(e.value) and "max_message_bytes" in str(e.value)
        assert client.infer(TENSOR, model="raw").ok  # the same connection goes on working
    assert daemon.metric("inferd_frames_rejected_total", source="big", reason="too_large") == 1
    assert "rejected a frame from big for raw: message is" in daemon.logs()


def test_oversized_streamed_frames_are_counted_and_reported_on_the_results_socket(daemon):
    with ResultSubscriber(daemon.results, "raw/") as results:
        push = daemon.socket(zmq.PUSH, daemon.pull)
        push.send_multipart([raw_header(BIG, model="raw", source="pushed"), BIG])
        got = results.recv(30)
        assert (got.topic, got.reason, got.source) == ("raw/pushed", "too_large", "pushed")
        camera = daemon.socket(zmq.PUB, daemon.camera_pub, bind=True)
        # a SUB connects on its own schedule: send until the small frame's result shows it is in place
        end = time.monotonic() + 60
        while True:
            assert time.monotonic() < end, "the sub endpoint never received from the test's camera"
            camera.send_multipart([b"cam", raw_header(TENSOR, model="raw", source="cam"), TENSOR])
            if results.socket.poll(100) and results.recv(30).source == "cam":
                break
        camera.send_multipart([b"cam", raw_header(BIG, model="raw", source="subbed"), BIG])
        while (got := results.recv(30)).source != "subbed":
            pass
        assert (got.topic, got.reason) == ("raw/subbed", "too_large")
        push.close()
        camera.close()
    for source in ("pushed", "subbed"):
        assert daemon.metric("inferd_frames_rejected_total", source=source, reason="too_large") == 1


def test_an_oversized_frigate_request_gets_frigates_error_reply(daemon):
    sock = daemon.socket(zmq.REQ, f"ipc://{daemon.tmp}/frigate.sock", RCVTIMEO=30000)
    image = np.zeros((1, 640, 800, 3), np.uint8)  # 1.5 MB
    sock.send_multipart([json.dumps({"shape": list(image.shape), "dtype": "uint8"}).encode(), image])
    head, body = sock.recv_multipart()
    head = json.loads(head)
    assert head["reason"] == "too_large" and head["error"].startswith("too_large: message is")
    assert np.frombuffer(body, np.float32).reshape(20, 6).tolist() == np.zeros((20, 6)).tolist()
    sock.close()
    assert daemon.metric("inferd_frames_rejected_total", source="frigate", reason="too_large") == 1


def test_a_message_over_the_hard_limit_disturbs_nobody_else(daemon):
    """Over HARD_LIMIT_FACTOR x max_message_bytes libzmq cuts the sender's connection before
    inferd reads a byte of it (nothing can be answered then); everyone else goes on, and so does
    the sender once it reconnects."""
    huge = np.zeros(LIMIT * HARD_LIMIT_FACTOR + 1, np.uint8)
    with InferClient(daemon.router, timeout=60, source="huge") as client:
        with pytest.raises(RequestTimeout) as e:  # not the timeout: the connection closed at once
            client.infer(huge, model="raw")
        assert e.value.reason == "disconnected", e.value
        assert "closed the connection before answering: this 4.0 MB request is over libzmq's hard" in str(
            e.value
        )
        with InferClient(daemon.router, timeout=30, source="other") as other:
            assert other.infer(TENSOR, model="raw").ok
        assert client.infer(TENSOR, model="raw", timeout=30).ok


def stale_socket_file(path) -> None:
    """A Unix socket file nobody listens on: what a killed process leaves behind."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


SHARED = """
models:
  - {{name: raw, path: "{{models}}/classifier_int8.onnx", threads: 1}}
endpoints:
  - {{type: pull, bind: "ipc://{shared}/frames.sock"}}
  - {{type: router, bind: "{{router}}"}}
results:
  bind: "ipc://{shared}/results.sock"
"""


def test_an_ipc_path_a_live_daemon_serves_is_refused_and_a_stale_one_reused(tmp_path):
    shared = tmp_path / "run"
    shared.mkdir()
    stale_socket_file(shared / "frames.sock")  # left by a killed daemon: taken over
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = DaemonProcess(tmp_path / "a", SHARED.format(shared=shared))
    try:
        with pytest.raises(RuntimeError) as e:  # the harness: inferd exited before it was ready
            DaemonProcess(tmp_path / "b", SHARED.format(shared=shared))
        message = str(e.value)
        assert f"ipc://{shared}/frames.sock: in use by another process (pid {first.proc.pid})" in message
        # the first daemon still owns its sockets and serves on them
        assert (shared / "frames.sock").exists() and (shared / "results.sock").exists()
        with ResultSubscriber(f"ipc://{shared}/results.sock", "raw/") as results:
            push = first.socket(zmq.PUSH, f"ipc://{shared}/frames.sock")
            push.send_multipart([raw_header(TENSOR, model="raw", source="cam"), TENSOR])
            assert results.recv(30).ok
            push.close()
        unlink_ipc(f"ipc://{shared}/frames.sock")  # from this process: not its socket to remove
        assert (shared / "frames.sock").exists()
    finally:
        assert first.stop() == 0
    assert not (shared / "frames.sock").exists()  # its own files removed at exit


def test_a_reply_that_takes_in_a_waiting_requests_signal_wakes_the_io_thread_on_any_thread():
    """A ROUTER is polled by its edge-triggered FD: a reply's send can take in the signal of a
    request that arrived meanwhile. Endpoint.reply must say so (the endpoint's id to `wake`) from
    any thread, the IO thread's own replies (worker processes' answers, rejects) included: the
    IO loop would otherwise not read that request while other endpoints keep its poll busy."""
    import threading

    from inferd.config import EndpointConfig
    from inferd.ingest.parts import readable

    ctx = zmq.Context()
    router, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://reply-wake")
    client.connect("inproc://reply-wake")
    woken: list[int] = []
    ep = Endpoint(7, EndpointConfig(type="router", bind="inproc://reply-wake"), router, wake=woken.append)
    try:
        client.send_multipart([b"", b"first"])
        first = router.recv_multipart()
        client.send_multipart([b"", b"second"])  # arrives, unread, before the reply below
        end = time.monotonic() + 5
        while not readable(router):
            assert time.monotonic() < end, "the second request never arrived"
            time.sleep(0.01)
        ep.reply([first[0], b"", b"answer"])  # on this thread, as the IO thread answers
        assert woken == [7]
        other = threading.Thread(target=ep.reply, args=([first[0], b"", b"again"],))
        other.start()
        other.join(5)
        assert woken == [7, 7]
        assert client.recv_multipart()[-1] == b"answer"
        assert router.recv_multipart()[-1] == b"second"
        ep.reply([first[0], b"", b"late"])  # nothing waits now: nobody is woken
        assert woken == [7, 7]
    finally:
        ctx.destroy(linger=0)
