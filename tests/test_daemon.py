"""`inferd run` end to end: real sockets, the real runtimes, results checked against the runtime."""

import contextlib
import io
import json
import signal
import threading
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inferd.client import FramePublisher, InferClient, ResultSubscriber
from inferd.errors import RequestError, RequestTimeout
from tests.conftest import MODELS, bare_session
from tests.daemon_harness import DaemonProcess, raw_header
from tests.slow_model import Busy, build_slow_model

CONFIG = """
models:
  - name: raw
    path: {models}/classifier_int8.onnx
    threads: 1
  - name: cls
    path: {models}/classifier_int8.tflite
    labels: {models}/labels.txt
    threads: 1
    preprocess: {resize: [64, 64], scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
    postprocess: {type: classify, top_k: 3}
  - name: slow
    path: {models}/larger_float.onnx
    threads: 1
    warmup: 1
endpoints:
  - {type: router, bind: "{router}", max_message_bytes: 2000000}
  - {type: pull, bind: "{pull}", max_message_bytes: 2000000}
  - {type: sub, connect: "{camera_pub}", topics: ["cam"]}
results:
  bind: "{results}"
metrics:
  listen: "{metrics}"
routes:
  - {sources: ["cam*"], models: [cls]}
  - {sources: ["sensor*"], models: [raw]}
  - {sources: ["burst*", "quiet*"], models: [slow]}
sources:
  - {match: "sensor*", policy: fifo, queue_size: 4}
  - {match: "burst*", policy: latest, queue_size: 1}
  - {match: "load*", policy: fifo, queue_size: 8}
"""

RNG = np.random.default_rng(2024)
TENSOR = RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("daemon"), CONFIG)
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture(scope="module")
def onnx_session():
    return bare_session(str(MODELS / "classifier_int8.onnx"))


def subscriber(daemon, topic=""):
    return ResultSubscriber(daemon.results, topic)  # returns once inferd has the subscription


def test_raw_pyzmq_request_gets_the_runtimes_exact_output(daemon, onnx_session):
    header, parts = daemon.request([raw_header(TENSOR, model="raw", source="cam9", seq=5, id="a1"), TENSOR])
    assert (
        header["status"] == "ok" and header["model"] == "raw" and header["seq"] == 5 and header["id"] == "a1"
    )
    assert set(header["timings"]) == {"queue_ms", "preprocess_ms", "inference_ms", "total_ms"}
    (spec,) = header["outputs"]
    out = np.frombuffer(parts[0], dtype=spec["dtype"]).reshape(spec["shape"])
    np.testing.assert_array_equal(out, onnx_session.run(None, {"input": TENSOR})[0])


def test_the_documented_client_call(daemon, onnx_session):
    with InferClient(daemon.router) as client:
        result = client.infer(TENSOR, model="raw", source="cam0")
        np.testing.assert_array_equal(result.outputs[0], onnx_session.run(None, {"input": TENSOR})[0])
        frame = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        result = client.infer(frame, model="cls", source="cam0")
        assert [c["label"] for c in result.classes][:1] and len(result.classes) == 3
        with pytest.raises(RequestError) as e:
            client.infer(frame, model="nope")
        assert e.value.reason == "unknown_model"


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def test_push_frames_results_on_pub_with_model_source_topics(daemon):
    frame = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    with subscriber(daemon, "cls/cam1") as sub, FramePublisher(daemon.pull, source="cam1") as pub:
        results = []
        for i in range(6):  # one at a time: the default `latest` policy would drop a burst
            pub.send(frame if i < 5 else png_bytes(frame), seq=i)
            results.append(sub.recv(10))
    assert all(r.topic == "cls/cam1" and r.ok for r in results)
    assert [r.seq for r in results] == list(range(6))
    with InferClient(daemon.router) as client:  # the same frame by request gives the same answer
        expected = client.infer(frame, model="cls", source="check").classes
    assert results[0].classes == expected and results[5].classes == expected  # PNG is lossless


def test_a_new_subscriber_gets_the_first_result_every_time(daemon):
    """The README's streaming example, 20 times: subscribe, send one frame, receive its result.
    ZeroMQ's slow joiner lost it about 8 times in 20 before the subscriber waited for inferd's hello."""
    got = 0
    for i in range(20):
        with (
            ResultSubscriber(daemon.results, f"raw/joiner{i}") as sub,
            FramePublisher(daemon.pull, source=f"joiner{i}") as pub,
        ):
            pub.send(TENSOR, model="raw")
            got += sub.recv(10).ok
    assert got == 20


def test_hellos_are_control_messages_that_result_readers_skip(daemon):
    everything = daemon.socket(zmq.SUB, daemon.results, SUBSCRIBE=b"")
    with subscriber(daemon) as sub:  # all topics: its hello reaches `everything` too
        assert everything.poll(30000)
        topic, body = everything.recv_multipart()
        assert topic.startswith(b"!hello/") and json.loads(body)["status"] == "hello"
        with subscriber(daemon, "raw/other"), FramePublisher(daemon.pull, source="hello-test") as pub:
            pub.send(TENSOR, model="raw")  # `sub` has the other subscriber's hello before this result
            r = sub.recv(10)
        assert r.topic == "raw/hello-test" and r.ok
    with pytest.raises(RequestTimeout, match="did not confirm the subscription"):
        ResultSubscriber(f"ipc://{daemon.tmp}/nobody.sock", wait=0.5)
    everything.close()


def test_sub_endpoint_reads_a_camera_publisher(daemon):
    frame = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with (
        subscriber(daemon, "cls/cam2") as sub,
        FramePublisher(daemon.camera_pub, source="cam2", mode="pub") as pub,
    ):
        got, i, end = None, 0, time.monotonic() + 60
        while got is None:  # the daemon connects to us: publish until the subscription is live
            assert time.monotonic() < end, "the sub endpoint never received from the test's camera"
            pub.send(frame, seq=i)
            i += 1
            try:
                got = sub.recv(0.2)
            except RequestTimeout:
                continue
        assert got.ok and got.source == "cam2"


def bad_messages(frame):
    big = np.zeros(1_999_000, np.uint8)
    return {
        "header": [b"not json", frame],
        "parts": [raw_header(frame, model="raw")],
        "size": [raw_header(frame, model="raw"), frame.tobytes()[:-4]],
        "dtype": [raw_header(frame, model="raw", dtype="complex128"), frame],
        "unknown_model": [raw_header(frame, model="nope"), frame],
        "decode": [
            json.dumps({"v": 1, "source": "s", "encoding": "jpeg", "model": "cls"}).encode(),
            b"\xff\xd8junk",
        ],
        "shape": [raw_header(np.zeros((48, 48, 3), np.uint8), model="raw"), np.zeros((48, 48, 3), np.uint8)],
        "too_large": [raw_header(big, model="raw", pad="x" * 2000), big],
        "multiple_models": [raw_header(frame, model=["raw", "cls"]), frame],
        "deadline": [raw_header(frame, model="raw", deadline=time.time() - 1), frame],
    }


def test_every_bad_request_gets_a_reason_and_the_daemon_keeps_serving(daemon, onnx_session):
    before = daemon.scrape()
    for reason, parts in bad_messages(TENSOR).items():
        header, tensors = daemon.request(parts)
        assert header["status"] == "error", reason
        assert header["error"]["reason"] == reason, (reason, header)
        assert header["error"]["message"] and tensors == []
    after = daemon.scrape()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("inferd_frames_rejected_total", source="unknown", reason="header") == 1
    assert delta("inferd_frames_rejected_total", source="test", reason="size") == 1
    assert delta("inferd_frames_dropped_total", source="test", reason="deadline") == 1
    header, parts = daemon.request([raw_header(TENSOR, model="raw"), TENSOR])
    assert header["status"] == "ok"
    np.testing.assert_array_equal(
        np.frombuffer(parts[0], np.float32).reshape(1, 10), onnx_session.run(None, {"input": TENSOR})[0]
    )


def test_bad_pushed_frames_are_answered_on_the_results_socket(daemon):
    with subscriber(daemon) as sub:
        push = daemon.socket(zmq.PUSH, daemon.pull)
        push.send_multipart([b"{broken"])
        push.send_multipart([raw_header(TENSOR, source="sensor1", model="raw"), TENSOR.tobytes()[:10]])
        first, second = sub.recv(10), sub.recv(10)
        push.close()
    assert (first.topic, first.reason) == ("_/unknown", "header")
    assert (second.topic, second.reason, second.source) == ("raw/sensor1", "size", "sensor1")


def fuzz_part():
    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
            st.sampled_from(["v", "source", "seq", "shape", "dtype", "encoding", "model", "parts", "ts", "deadline"]),
            st.one_of(st.integers(-5, 5), st.text(max_size=6), st.lists(st.integers(-2, 70), max_size=4),
                      st.sampled_from([1, "uint8", "float32", "raw", "jpeg", "raw", "cls", "sensor0", [1, 3, 64, 64]])),
            max_size=7)),
    )  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.lists(fuzz_part(), min_size=0, max_size=4), min_size=1, max_size=5))
def test_random_messages_on_every_ingest_mode_do_not_disturb_valid_frames(daemon, onnx_session, messages):
    push = daemon.socket(zmq.PUSH, daemon.pull)
    dealer = daemon.socket(zmq.DEALER, daemon.router)
    with FramePublisher(daemon.camera_pub.replace("camera", "fuzz"), mode="pub") as pub:
        for parts in messages:
            if parts:
                push.send_multipart(parts)
                pub.socket.send_multipart([b"cam", *parts])
            dealer.send_multipart([b"", *parts] if parts else [b""])
    header, parts = daemon.request([raw_header(TENSOR, model="raw", source="after-fuzz"), TENSOR])
    assert header["status"] == "ok", header
    np.testing.assert_array_equal(
        np.frombuffer(parts[0], np.float32).reshape(1, 10), onnx_session.run(None, {"input": TENSOR})[0]
    )
    push.close()
    dealer.close()
    assert daemon.proc.poll() is None


def test_latest_policy_serves_the_newest_frames_and_counts_drops(daemon):
    frame = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    n = 40
    with (
        subscriber(daemon, "slow/burst0") as sub,
        FramePublisher(daemon.pull, source="burst0", sndhwm=1000) as pub,
    ):
        for i in range(n):
            pub.send(frame, seq=i)
        seqs, dropped, end = [], 0.0, time.monotonic() + 60
        while len(seqs) + dropped < n:  # every frame is served or counted as dropped
            assert time.monotonic() < end, f"{len(seqs)} served + {dropped} dropped of {n}"
            with contextlib.suppress(RequestTimeout):
                seqs.append(sub.recv(0.5).seq)
            dropped = daemon.metric("inferd_frames_dropped_total", source="burst0", reason="queue_full")
    assert len(seqs) < n, "precondition not met: the model kept up with 40 frames pushed at once"
    assert seqs == sorted(seqs) and seqs[-1] == n - 1  # in order, and the newest frame was served
    assert dropped == n - len(seqs)
    assert daemon.metric("inferd_frames_received_total", source="burst0") == n


def test_fifo_policy_loses_nothing_under_backpressure(daemon):
    n = 60
    with subscriber(daemon, "raw/sensor0") as sub, FramePublisher(daemon.pull, source="sensor0") as pub:
        sender = threading.Thread(target=lambda: [pub.send(TENSOR, seq=i) for i in range(n)])
        sender.start()
        seqs = [sub.recv(10).seq for _ in range(n)]
        sender.join(10)
    assert seqs == list(range(n))
    assert daemon.metric("inferd_frames_dropped_total", source="sensor0", reason="queue_full") == 0


def test_a_flooding_source_does_not_starve_a_quiet_one(daemon):
    frame = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    with (
        subscriber(daemon, "slow/quiet0") as sub,
        FramePublisher(daemon.pull, source="burst1", sndhwm=1000) as flood,
    ):
        stop = threading.Event()

        def flooding():
            while not stop.is_set():
                flood.send(frame, block=False)
                time.sleep(0.0005)

        t = threading.Thread(target=flooding)
        t.start()
        try:
            with InferClient(daemon.router, source="quiet0") as client:
                for _ in range(5):
                    assert client.infer(frame, timeout=30).ok
        finally:
            stop.set()
            t.join()
    sub.close()


def test_send_command_prints_results(daemon, tmp_path):
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", TENSOR)
    (tmp_path / "f.png").write_bytes(png_bytes(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "small.png").write_bytes(png_bytes(RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)))

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "inferd", "send", *a], capture_output=True, text=True, timeout=30
        )

    proc = run("--endpoint", daemon.router, "--model", "raw", str(tmp_path / "x.npy"))
    assert proc.returncode == 0, proc.stderr
    assert "logits [1, 10] float32" in proc.stdout
    proc = run("-c", str(daemon.config_path), "--model", "cls", "--json", str(tmp_path / "f.png"))
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["result"]["classes"]) == 3
    proc = run("--endpoint", daemon.router, "--model", "raw", str(tmp_path / "small.png"))
    assert proc.returncode == 1 and "shape: frame 48x48 but model 'raw' takes 64x64" in proc.stderr, (
        proc.stderr
    )


def wait_received(d: DaemonProcess, n: int, timeout: float = 30.0) -> None:
    """Until inferd has read `n` frames off its sockets (they are accepted: each is owed an answer)."""
    d.wait_metric("inferd_frames_received_total", n, timeout)


def collect_replies(sockets, n: int, timeout: float = 20.0) -> dict:
    replies = {}
    end = time.monotonic() + timeout
    while len(replies) < n and time.monotonic() < end:
        for s in sockets:
            while s.poll(10):
                _, head, *_ = s.recv_multipart()
                h = json.loads(head)
                replies[h["id"]] = h["status"] if h["status"] == "ok" else h["error"]["reason"]
    return replies


def test_sigterm_under_load_answers_every_accepted_request(tmp_path):
    """Every request inferd read gets an answer, and more stop signals during the drain (systemd
    before its SIGKILL, Ctrl-C twice) neither kill it nor cut the drain short: exit 0."""
    d = DaemonProcess(tmp_path, CONFIG)
    frame = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    sockets = [d.socket(zmq.DEALER, d.router) for _ in range(8)]
    for i, s in enumerate(sockets):
        for j in range(3):
            s.send_multipart([b"", raw_header(frame, model="slow", source=f"load{i}", id=f"{i}-{j}"), frame])
    wait_received(d, 24)
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
        d.proc.send_signal(sig)
    replies = collect_replies(sockets, 24)
    assert len(replies) == 24, (replies, d.logs())
    assert set(replies.values()) <= {"ok", "shutdown"}
    for s in sockets:
        s.close()
    assert d.proc.wait(20) == 0, d.logs()
    assert d.stop() == 0
    assert "stopped" in d.logs()
    assert not (tmp_path / "frames.sock").exists() and not (tmp_path / "results.sock").exists()


def slow_daemon(tmp_path, extra: str = "") -> tuple[DaemonProcess, Busy]:
    """A daemon with `raw` and `slowmo` (busy for as long as its frame asks: tests/slow_model.py)
    behind a router endpoint, and the Busy that sizes slowmo's work on this machine."""
    slow = build_slow_model(tmp_path / "slowmo.onnx")
    config = f"""
models:
  - {{name: raw, path: "{{models}}/classifier_int8.onnx", threads: 1}}
  - {{name: slowmo, path: "{slow}", threads: 1, warmup: 0}}
endpoints:
  - {{type: router, bind: "{{router}}"}}
"""
    return DaemonProcess(tmp_path, config + extra), Busy(slow)


def test_requests_arriving_while_draining_are_answered_shutdown(tmp_path):
    """A stopping inferd still reads its sockets: what arrives then is answered at once, not lost."""
    d, slow = slow_daemon(tmp_path, "service: {drain_timeout_s: 120}\n")
    busy = d.socket(zmq.DEALER, d.router)
    work = slow.frame(4.0)  # ~4 s of inference on this machine: the drain lasts that long
    busy.send_multipart([b"", raw_header(work, model="slowmo", source="busy", id="work"), work])
    wait_received(d, 1)
    d.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 30
    while "stopping" not in d.logs():
        assert time.monotonic() < end, f"no 'stopping' 30 s after SIGTERM:\n{d.logs()}"
        time.sleep(0.005)
    # inferd stops accepting before it logs "stopping": from here on, what arrives is refused
    late = d.socket(zmq.DEALER, d.router)
    for j in range(5):
        late.send_multipart([b"", raw_header(TENSOR, model="raw", source="late", id=f"late{j}"), TENSOR])
    replies = collect_replies([late], 5, timeout=30)
    # the precondition: the drain was still going on (the slow work unanswered) when those came back
    assert not busy.poll(0) and d.proc.poll() is None, (
        f"precondition not met: the drain ended before the late requests were answered\n{d.logs()}"
    )
    assert replies == {f"late{j}": "shutdown" for j in range(5)}, d.logs()
    assert collect_replies([busy], 1, timeout=120) == {"work": "ok"}
    assert d.proc.wait(30) == 0
    d.stop()


def test_a_slow_model_does_not_stall_the_others(tmp_path, onnx_session):
    """A model busy for seconds (by construction: tests/slow_model.py) with more work queued
    behind it: another model's request is answered meanwhile."""
    d, slow = slow_daemon(tmp_path, 'sources:\n  - {match: "load*", policy: fifo, queue_size: 8}\n')
    dealer = d.socket(zmq.DEALER, d.router)
    work = slow.frame(5.0)
    for i in range(3):  # ~15 s of work for slowmo, one inference running and two queued
        dealer.send_multipart([b"", raw_header(work, model="slowmo", source="load", id=f"s{i}"), work])
    d.wait_metric("inferd_queue_depth", 2, source="load")
    with InferClient(d.router, timeout=30) as client:
        result = client.infer(TENSOR, model="raw", source="fast")
    np.testing.assert_array_equal(result.outputs[0], onnx_session.run(None, {"input": TENSOR})[0])
    assert not dealer.poll(0), "precondition not met: the slow model's work ended first"
    got = 0
    while got < 3 and dealer.poll(120_000):
        dealer.recv_multipart()
        got += 1
    assert got == 3
    dealer.close()
    assert d.stop() == 0


CONTRACT = """
models:
  - name: classifier
    path: examples/models/classifier_int8.onnx
    postprocess: raw            # tensors as the runtime returns them
endpoints:
  - {type: router, bind: "tcp://127.0.0.1:5555"}
  - {type: pull, bind: "ipc:///run/inferd/frames.sock"}
results:
  bind: "ipc:///run/inferd/results.sock"
metrics:
  listen: "127.0.0.1:9464"
"""


def test_the_documented_contract_config_works(tmp_path, monkeypatch, onnx_session):
    """The config the docs show first, verbatim but for ports and the runtime folder."""
    from tests.conftest import ROOT
    from tests.daemon_harness import free_port

    monkeypatch.chdir(ROOT)  # the model path is relative to the repository
    router, metrics = free_port(), free_port()
    text = (
        CONTRACT.replace("5555", str(router)).replace("9464", str(metrics))
        .replace("/run/inferd", str(tmp_path / "run" / "inferd"))
    )  # fmt: skip
    d = DaemonProcess(tmp_path, text)
    try:
        result = InferClient(f"tcp://127.0.0.1:{router}").infer(TENSOR, model="classifier", source="cam0")
        np.testing.assert_array_equal(result.outputs[0], onnx_session.run(None, {"input": TENSOR})[0])
        with (
            ResultSubscriber(f"ipc://{tmp_path}/run/inferd/results.sock") as sub,
            FramePublisher(f"ipc://{tmp_path}/run/inferd/frames.sock", source="cam0") as pub,
        ):
            pub.send(TENSOR)
            r = sub.recv(10)
        assert r.topic == "classifier/cam0" and r.ok
        np.testing.assert_array_equal(r.outputs[0], result.outputs[0])
    finally:
        assert d.stop() == 0


def test_bench_command_loads_the_daemon_and_reports(daemon):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "bench", "--endpoint", daemon.router, "--model", "raw", "--sources", "2",
         "--rate", "20", "--duration", "1.5", "--frame", "64x64x3", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["sources"] == 2 and r["frame"] == [64, 64, 3]
    # paced: never more than 1.5 s x 20/s x 2 sources (a late thread sends less, never more)
    assert 0 < r["sent"] <= 62 and r["ok"] == r["sent"] and r["errors"] == {}
    assert 0 < r["p50_ms"] <= r["p99_ms"]


def bench(*args: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "inferd", "bench", *args], capture_output=True, text=True, timeout=60
    )


def test_bench_takes_a_config_and_rate_0_is_as_fast_as_answered(daemon):
    proc = bench("-c", str(daemon.config_path), "--model", "raw", "--rate", "0", "--duration", "1",
                 "--frame", "64x64x3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{daemon.router}: 1 source(s) x as fast as answered, 64x64x3, 1 s: sent" in proc.stdout
    assert "latency p50" in proc.stdout


def test_bench_that_gets_nothing_served_says_why_and_fails(daemon):
    proc = bench("--endpoint", daemon.router, "--model", "nope", "--duration", "0.5", "--frame", "64x64x3")
    assert proc.returncode == 1
    assert "nothing was served:" in proc.stderr
    assert "unknown_model: " in proc.stderr and "'nope'" in proc.stderr
    proc = bench("--endpoint", daemon.router, "--model", "raw", "--duration", "0.5", "--frame", "7x5x1")
    assert proc.returncode == 1 and "shape: frame 5x7 has 1 channel; model 'raw' takes 3" in proc.stderr


def test_the_daemon_writes_nothing_to_its_home(tmp_path):
    """Under systemd HOME is the state directory (/var/lib/inferd, on the SD card): start, inference
    on both runtimes and a reload leave nothing there (onnxruntime's telemetry wrote a device id and
    a 750 kB event store under ~/.cache/Microsoft before inferd set ORT_DISABLE_TELEMETRY)."""
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run.mkdir()
    env = {"HOME": str(state), "XDG_CACHE_HOME": None, "ORT_DISABLE_TELEMETRY": None}
    d = DaemonProcess(run, CONFIG, env=env)
    try:
        with InferClient(d.router, timeout=30) as client:
            assert client.infer(TENSOR, model="raw").ok
            assert client.infer(np.zeros((64, 64, 3), np.uint8), model="cls").ok
        d.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while "reloaded" not in d.logs() and time.monotonic() < end:
            time.sleep(0.05)
        assert "reloaded" in d.logs()
    finally:
        assert d.stop() == 0
    assert [p for p in state.rglob("*")] == []
