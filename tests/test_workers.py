"""Worker processes (`workers: processes`, the default for `instances` > 1): one model instance per
process, fed by the daemon's IO thread through shared memory. Real daemon, real processes, real
signals: a worker killed or stopped costs exactly the frames it held, is restarted, and every
other frame keeps flowing."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from inferd.client import InferClient
from inferd.errors import RequestError
from tests.conftest import MODELS, bare_session
from tests.daemon_harness import DaemonProcess, raw_header
from tests.slow_model import Busy, build_slow_model, work

CONFIG = """
models:
  - {name: cls, path: "{models}/classifier_int8.onnx", instances: 2, threads: 1, workers: processes}
  - {name: busy, path: "{tmp}/busy.onnx", instances: 2, threads: 1, workers: processes}
  - {name: one, path: "{models}/classifier_int8.onnx", threads: 1, workers: threads}
endpoints:
  - {type: router, bind: "{router}"}
  - {type: pull, bind: "{pull}"}
results:
  bind: "{results}"
sources:
  - {match: "*", queue_size: 64, policy: fifo}
service: {hang_after_s: HANG}
"""
TENSOR = np.zeros((1, 3, 64, 64), np.float32)


def children(pid: int) -> list[int]:
    """The daemon's child processes (its worker processes), by each process's parent pid.

    Not /proc/PID/task/*/children: a thread that ends between the listing and the read (the
    reload's old threads do) makes that racy.
    """
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # a process may end between the listing and the read
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: ppid
            out.append(int(entry.name))
    return sorted(out)


def workers_of(daemon: DaemonProcess, model: str) -> list[int]:
    """The pids of a model's worker processes (`python -m inferd.engine.child MODEL INDEX`)."""
    pids = []
    for pid in children(daemon.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"inferd.engine.child" in argv and argv[argv.index(b"inferd.engine.child") + 1] == model.encode():
            pids.append(pid)
    return pids


def start(tmp: Path, hang: float = 30.0) -> DaemonProcess:
    build_slow_model(tmp / "busy.onnx")  # busy for as long as a frame asks (tests/slow_model.py)
    return DaemonProcess(tmp, CONFIG.replace("HANG", str(hang)))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start(tmp_path_factory.mktemp("workers"))
    yield d
    assert d.stop() == 0, d.logs()


def test_instances_run_in_worker_processes_and_serve_the_same_results(daemon):
    pids = workers_of(daemon, "cls")
    assert len(pids) == 2 and len(children(daemon.proc.pid)) == 4, daemon.logs()  # `one`: a thread
    rng = np.random.default_rng(1)
    frames = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(40)]
    bare = bare_session(MODELS / "classifier_int8.onnx")
    name = bare.get_inputs()[0].name
    with InferClient(daemon.router, timeout=30) as client:
        for i, f in enumerate(frames):
            r = client.infer(f, model="cls", source=f"s{i % 4}")
            assert r.ok, r.header
            np.testing.assert_array_equal(r.outputs[0], bare.run(None, {name: f})[0])
    assert daemon.metric("inferd_inferences_total", model="cls", status="ok") == 40
    for index in ("0", "1"):  # each worker process's own CPU and memory (process_* is the daemon's)
        assert daemon.metric("inferd_worker_resident_memory_bytes", model="cls", index=index) > 10e6
        assert daemon.metric("inferd_worker_cpu_seconds_total", model="cls", index=index) > 0
    assert daemon.metric("inferd_inference_seconds_count", model="cls") == 40
    assert daemon.total("inferd_frame_latency_seconds_count", model="cls") == 40


def test_frames_are_spread_over_the_workers(daemon):
    """Two long inferences run at the same time: each in its own process."""
    busy = Busy(daemon.tmp / "busy.onnx")
    dealer = daemon.socket(zmq.DEALER, daemon.router)
    before = {p: _cpu(p) for p in workers_of(daemon, "busy")}
    for i in range(2):
        dealer.send_multipart([b"", raw_header(work(1), model="busy", source=f"b{i}", id=str(i)),
                               busy.frame(1.0)])  # fmt: skip
    got = [json.loads(dealer.recv_multipart()[1]) for _ in range(2) if dealer.poll(60000)]
    dealer.close()
    assert sorted(h["id"] for h in got if h["status"] == "ok") == ["0", "1"], got
    used = {p: _cpu(p) - t for p, t in before.items()}
    assert all(u >= 0.5 for u in used.values()), f"CPU seconds per worker process: {used}"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hold_both(daemon: DaemonProcess, dealer, busy: Busy, seconds: float) -> None:
    """Both busy workers inside a long inference (the queue empty), as a precondition."""
    for i in range(2):
        dealer.send_multipart([b"", raw_header(work(1), model="busy", source="hold", id=f"hold{i}"),
                               busy.frame(seconds)])  # fmt: skip
    end = time.monotonic() + 20
    while daemon.metric("inferd_queue_depth", source="hold") or not _both_busy(daemon):
        assert not dealer.poll(0), "precondition not met: an inference ended before the kill"
        assert time.monotonic() < end, "the workers never took the frames"
        time.sleep(0.02)


def _both_busy(daemon: DaemonProcess) -> bool:
    return all(_state(p) == "R" for p in workers_of(daemon, "busy"))


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_killed_worker_costs_only_its_frames_and_comes_back(daemon):
    busy = Busy(daemon.tmp / "busy.onnx")
    dealer = daemon.socket(zmq.DEALER, daemon.router)
    push = daemon.socket(zmq.PUSH, daemon.pull)
    victim, other = workers_of(daemon, "busy")
    restarts = daemon.metric("inferd_worker_restarts_total", model="busy")
    served = daemon.metric("inferd_inferences_total", model="busy", status="ok")
    _hold_both(daemon, dealer, busy, 4.0)
    for i in range(6):  # queued behind the two held frames, on both endpoints
        dealer.send_multipart([b"", raw_header(work(1), model="busy", source="after", id=f"a{i}"), work(1)])
        push.send_multipart([raw_header(work(1), model="busy", source="pushed", seq=i), work(1)])
    os.kill(victim, signal.SIGKILL)
    got = {}
    while len(got) < 8 and dealer.poll(60000):
        h = json.loads(dealer.recv_multipart()[1])
        got[h["id"]] = h
    dealer.close()
    push.close()
    assert len(got) == 8, got  # every request answered, once
    died = {k: h for k, h in got.items() if h["status"] != "ok"}
    # the victim held its long frame, and perhaps one frame sent ahead (fifo sources)
    assert len([k for k in died if k.startswith("hold")]) == 1 and len(died) <= 2, got
    for h in died.values():
        assert h["error"]["reason"] == "worker_died", h
        assert "killed by signal 9" in h["error"]["message"]
    lost = len(died) - 1
    # every streamed frame is counted: served, or dropped `worker_died` (at most the one sent ahead)
    end = time.monotonic() + 60
    while True:
        pushed_ok = (
            daemon.metric("inferd_inferences_total", model="busy", status="ok") - served - (8 - len(died))
        )
        pushed_died = daemon.metric("inferd_frames_dropped_total", source="pushed", reason="worker_died")
        if pushed_ok + pushed_died == 6:
            break
        assert time.monotonic() < end, (pushed_ok, pushed_died)
        time.sleep(0.05)
    assert lost + pushed_died <= 1
    assert daemon.metric("inferd_frames_dropped_total", source="hold", reason="worker_died") == 1
    daemon.wait_metric("inferd_worker_restarts_total", restarts + 1, model="busy")
    end = time.monotonic() + 30
    while (pids := workers_of(daemon, "busy")) and (len(pids) != 2 or victim in pids):
        assert time.monotonic() < end, f"no new worker: {pids}"
        time.sleep(0.05)
    assert other in pids
    with InferClient(daemon.router, timeout=30) as client:  # the new worker serves
        for i in range(4):
            assert client.infer(work(1), model="busy", source=f"new{i}").ok
    ready = daemon.probe("/readyz")[1]
    workers = ready["models"]["busy"]["workers"]
    assert workers["processes"] == workers["serving"] == 2 and sorted(workers["pids"]) == sorted(pids), (
        workers
    )
    assert daemon.probe("/healthz")[0] == 200


def test_a_hung_worker_is_killed_and_replaced(tmp_path):
    """A worker inside one inference longer than service.hang_after_s is killed (a thread could
    not be): its frame is answered `worker_hung`, the other worker's frames keep flowing."""
    d = start(tmp_path, hang=2.0)
    try:
        busy = Busy(tmp_path / "busy.onnx")
        dealer = d.socket(zmq.DEALER, d.router)
        dealer.send_multipart([b"", raw_header(work(1), model="busy", source="long", id="long"),
                               busy.frame(30.0)])  # fmt: skip
        with InferClient(d.router, timeout=30) as client:  # the other worker keeps serving
            for _ in range(3):
                assert client.infer(work(1), model="busy", source="short").ok
        assert dealer.poll(60000), "the hung frame was never answered"
        h = json.loads(dealer.recv_multipart()[1])
        dealer.close()
        assert h["status"] == "error" and h["error"]["reason"] == "worker_hung", h
        assert "hung in one inference for" in h["error"]["message"]
        d.wait_metric("inferd_worker_restarts_total", 1, model="busy")
        d.wait_metric("inferd_frames_dropped_total", 1, source="long", reason="worker_hung")
    finally:
        assert d.stop() == 0, d.logs()


def test_a_stopped_idle_worker_is_noticed_and_replaced(daemon):
    """SIGSTOP: the process is alive but silent. Its heartbeat stops; the pool kills and restarts it."""
    victim = workers_of(daemon, "cls")[0]
    restarts = daemon.metric("inferd_worker_restarts_total", model="cls")
    os.kill(victim, signal.SIGSTOP)
    daemon.wait_metric("inferd_worker_restarts_total", restarts + 1, model="cls", timeout=30)
    assert "silent for" in daemon.logs()
    with InferClient(daemon.router, timeout=30) as client:
        for i in range(6):
            assert client.infer(TENSOR, model="cls", source=f"x{i}").ok


def test_a_replacement_still_loading_its_model_keeps_the_daemon_healthy(daemon):
    """On a slow board a restarted worker takes seconds to load its model: that is not a stalled
    loop. /healthz (and with it the systemd watchdog) stays healthy while it loads; it serves
    once it says hello. (Found under qemu: a replacement 12 s in loading tripped the watchdog.)"""

    def serving() -> int:
        return daemon.probe("/readyz")[1]["models"]["cls"]["workers"]["serving"]

    def until_both_serve() -> None:
        end = time.monotonic() + 60
        while serving() != 2:
            assert time.monotonic() < end, daemon.logs()[-2000:]
            time.sleep(0.1)

    until_both_serve()  # an earlier test's replacement may still be loading
    old = set(workers_of(daemon, "cls"))
    restarts = daemon.metric("inferd_worker_restarts_total", model="cls")
    os.kill(min(old), signal.SIGKILL)
    end = time.monotonic() + 30
    while not (fresh := set(workers_of(daemon, "cls")) - old):  # caught while Python starts up
        assert time.monotonic() < end, "no replacement was started"
        time.sleep(0.002)
    loader = fresh.pop()
    os.kill(loader, signal.SIGSTOP)
    try:
        daemon.wait_metric("inferd_worker_restarts_total", restarts + 1, model="cls")
        assert serving() == 1
        for _ in range(8):  # longer than the 5 s after which a worker that does not turn is stalled
            code, body = daemon.probe("/healthz")
            assert code == 200, body
            time.sleep(1.0)
    finally:
        os.kill(loader, signal.SIGCONT)
    until_both_serve()
    assert loader in workers_of(daemon, "cls")  # the same process: loading is not killed
    with InferClient(daemon.router, timeout=30) as client:
        for i in range(4):
            assert client.infer(TENSOR, model="cls", source=f"slow{i}").ok
    assert daemon.probe("/healthz")[0] == 200


def test_reload_replaces_worker_processes(tmp_path):
    d = start(tmp_path)
    try:
        old = set(workers_of(d, "cls"))
        text = d.config_path.read_text().replace(
            'classifier_int8.onnx", instances: 2', 'classifier_int8.onnx", instances: 3', 1
        )
        assert text != d.config_path.read_text()
        d.config_path.write_text(text)
        d.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 60
        while "reloaded" not in d.logs():
            assert time.monotonic() < end, d.logs()
            time.sleep(0.05)
        end = time.monotonic() + 30
        while len(new := set(workers_of(d, "cls"))) != 3 or new & old:
            assert time.monotonic() < end, (old, new)
            time.sleep(0.05)
        with InferClient(d.router, timeout=30) as client:
            for i in range(6):
                assert client.infer(TENSOR, model="cls", source=f"r{i}").ok
    finally:
        assert d.stop() == 0, d.logs()


def test_a_reload_whose_workers_load_slowly_keeps_them(tmp_path):
    """A reload's new workers say hello before their pool is in service (their hellos wait, the
    ready pipes decide); the pool must not then judge them silent by how long the slowest one took
    to load: one new worker is held (SIGSTOP) 7 s while loading, and every new worker stays."""
    d = start(tmp_path)
    try:
        old = set(workers_of(d, "cls"))
        d.config_path.write_text(
            d.config_path.read_text().replace(
                'classifier_int8.onnx", instances: 2', 'classifier_int8.onnx", instances: 3', 1
            )
        )
        d.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 30
        while not (fresh := set(workers_of(d, "cls")) - old):
            assert time.monotonic() < end, d.logs()
            time.sleep(0.002)
        slow = min(fresh)
        os.kill(slow, signal.SIGSTOP)
        time.sleep(7.0)
        os.kill(slow, signal.SIGCONT)
        end = time.monotonic() + 60
        while "reloaded" not in d.logs():
            assert time.monotonic() < end, d.logs()
            time.sleep(0.05)
        end = time.monotonic() + 30
        while len(new := set(workers_of(d, "cls"))) != 3 or new & old:  # the old ones retire
            assert time.monotonic() < end, (old, new)
            time.sleep(0.05)
        assert slow in new
        time.sleep(3.0)  # several heartbeats and sweeps later: the same three
        assert set(workers_of(d, "cls")) == new, d.logs()[-3000:]
        assert "silent for" not in d.logs()
    finally:
        assert d.stop() == 0, d.logs()


def test_stop_drains_the_workers_and_leaves_no_process(tmp_path):
    """SIGTERM to the whole unit (as systemd sends it): the workers ignore it, the daemon serves
    what was queued within drain_timeout_s, then stops them; none is left behind."""
    d = start(tmp_path)
    pids = workers_of(d, "cls") + workers_of(d, "busy")
    ctx = zmq.Context()  # the harness's context ends with the daemon; the replies come after
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(d.router)
    for i in range(10):
        dealer.send_multipart([b"", raw_header(work(1), model="busy", source="drain", id=str(i)), work(1)])
    d.wait_metric("inferd_frames_received_total", 10, source="drain")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # systemd's KillMode=mixed signals the main process only;
    assert d.stop() == 0, d.logs()  # this is the harsher case: every process got it
    got = [json.loads(dealer.recv_multipart()[1]) for _ in range(10) if dealer.poll(10000)]
    ctx.destroy(linger=0)
    assert sorted(h["id"] for h in got if h["status"] == "ok") == sorted(str(i) for i in range(10)), got
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z", f"worker {pid} left running"


def test_an_optional_model_that_does_not_load_leaves_the_workers_of_others(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    d = DaemonProcess(
        tmp_path,
        "models:\n"
        '  - {name: cls, path: "{models}/classifier_int8.onnx", instances: 2, workers: processes}\n'
        '  - {name: bad, path: "{tmp}/broken.onnx", instances: 2, workers: processes, required: false}\n'
        'endpoints: [{type: router, bind: "{router}"}]\n',
    )
    try:
        with InferClient(d.router, timeout=30) as client:
            assert client.infer(TENSOR, model="cls").ok
            with pytest.raises(RequestError) as e:
                client.infer(TENSOR, model="bad")
            assert e.value.reason == "model_unavailable"
    finally:
        assert d.stop() == 0, d.logs()


SMOOTH = """
models:
  - name: two
    path: "{models}/classifier_int8.onnx"
    instances: 2
    threads: 1
    workers: processes
    postprocess: {type: classify, top_k: 3, softmax: true, smooth: {ema: 0.6, reset_after_s: 600}}
  - name: one
    path: "{models}/classifier_int8.onnx"
    threads: 1
    workers: threads
    postprocess: {type: classify, top_k: 3, softmax: true, smooth: {ema: 0.6, reset_after_s: 600}}
endpoints:
  - {type: router, bind: "{router}"}
sources:
  - {match: "*", queue_size: 64, policy: fifo}
"""


def test_smoothing_keeps_each_source_on_one_worker(tmp_path):
    """EMA smoothing is state per source: with two worker processes every frame of a source goes
    to the same one, so the smoothed scores equal one worker thread's, frame for frame."""
    d = DaemonProcess(tmp_path, SMOOTH)
    rng = np.random.default_rng(7)
    frames = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(16)]
    try:
        dealer = d.socket(zmq.DEALER, d.router)
        for model in ("two", "one"):
            for i, f in enumerate(frames):  # a burst from 4 sources: both workers get some
                dealer.send_multipart(
                    [b"", raw_header(f, model=model, source=f"s{i % 4}", id=f"{model}{i}"), f]
                )
        got = {}
        while len(got) < 2 * len(frames) and dealer.poll(30000):
            h = json.loads(dealer.recv_multipart()[1])
            assert h["status"] == "ok", h
            got[h["id"]] = h
        dealer.close()
        assert len(got) == 2 * len(frames)
        for i in range(len(frames)):
            two, one = got[f"two{i}"], got[f"one{i}"]
            assert [c["label"] for c in two["result"]["classes"]] == [
                c["label"] for c in one["result"]["classes"]
            ], (i, two, one)
            np.testing.assert_allclose([c["score"] for c in two["result"]["classes"]], [c["score"] for c in one["result"]["classes"]],
                                       rtol=1e-6)  # fmt: skip
        assert len(workers_of(d, "two")) == 2
    finally:
        assert d.stop() == 0, d.logs()


def test_slots_grow_and_the_reader_sees_the_bytes_in_place():
    """A slot is one memfd: a part larger than it grows it (next MiB); the worker's reader remaps
    and its payload views are the shared mapping itself, not a copy."""
    from inferd.engine.slots import Slot, SlotReader

    slot = Slot("test")
    reader = SlotReader(os.dup(slot.fd))
    try:
        small = [np.arange(10, dtype=np.uint8), np.arange(300_000, dtype=np.uint16)]
        spans = slot.write([memoryview(p).cast("B") for p in small])
        buf = reader.buffer(max(o + n for o, n in spans))
        views = [np.frombuffer(buf[o : o + n], p.dtype) for (o, n), p in zip(spans, small, strict=True)]
        for v, p in zip(views, small, strict=True):
            np.testing.assert_array_equal(v, p)
        big = np.full(3 << 20, 7, np.uint8)  # larger than the slot: it grows
        spans = slot.write([memoryview(big)])
        buf = reader.buffer(max(o + n for o, n in spans))
        view = np.frombuffer(buf[spans[0][0] : spans[0][0] + spans[0][1]], np.uint8)
        np.testing.assert_array_equal(view, big)
        again = np.frombuffer(reader.buffer(spans[0][1])[: spans[0][1]], np.uint8)
        assert np.shares_memory(view, again)  # the same mapping each time: no copy on the way
        slot.write([memoryview(np.full(3 << 20, 9, np.uint8))])
        assert view[0] == 9  # written by the daemon's side, seen in place by the worker's
    finally:
        slot.close()


def test_a_workers_tally_adds_up_to_what_observing_in_the_daemon_gives():
    """A worker process counts in a Tally; the daemon adds its drained rows into prometheus_client's
    histograms through their internals (no public call adds counts): the exposition must be the
    same as if the daemon had observed every value itself (this breaks if prometheus_client changes)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from inferd.engine.tally import Tally, apply
    from inferd.service.metrics import Metrics

    direct, merged = Metrics(CollectorRegistry(), sysfs=None), Metrics(CollectorRegistry(), sysfs=None)
    tally = Tally()
    rng = np.random.default_rng(3)
    for i, value in enumerate(rng.exponential(0.01, 500)):
        for m in (direct, tally):
            m.inference_seconds.labels("m").observe(value)
            m.frame_latency_seconds.labels("m", f"cam{i % 3}").observe(value * 2)
            m.batch_size.labels("m").observe(1 + i % 5)
            m.inferences.labels("m", "ok" if i % 7 else "error").inc()
        if i % 97 == 0:  # drained now and then, as the tally thread does
            apply(merged, tally.drain())
    apply(merged, tally.drain())
    assert tally.drain() == []

    def families(m: Metrics) -> list[str]:
        wanted = ("inferd_inference_seconds", "inferd_frame_latency_seconds", "inferd_batch_size",
                  "inferd_inferences_total")  # fmt: skip
        text = generate_latest(m.registry).decode().splitlines()
        return [line for line in text if line.startswith(wanted)]

    got, want = families(merged), families(direct)
    assert len(want) > 60 and [g.rsplit(" ", 1)[0] for g in got] == [w.rsplit(" ", 1)[0] for w in want]
    for g, w in zip(got, want, strict=True):  # counts exactly; sums added in another order
        assert float(g.rsplit(" ", 1)[1]) == pytest.approx(float(w.rsplit(" ", 1)[1]), rel=1e-12), (g, w)
        assert "_sum" in g or g == w
