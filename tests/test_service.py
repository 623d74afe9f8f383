"""systemd integration: a real NOTIFY_SOCKET, the watchdog, SIGHUP reload, graceful stop, the unit."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from inferd.client import InferClient, ResultSubscriber
from inferd.service.systemd import Notifier
from tests.conftest import MODELS, ROOT, bare_session
from tests.daemon_harness import DaemonProcess, raw_header
from tests.slow_model import Busy, build_slow_model

TENSOR = np.random.default_rng(11).standard_normal((1, 3, 64, 64)).astype(np.float32)


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0, after: int = 0) -> int:
        """Index of the first message from `after` on that has key (=value)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i, (_, m) in enumerate(self.messages[after:], after):
                if key in m and (value is None or m[key] == value):
                    return i
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} after message {after}: {[m for _, m in self.messages]}")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_notifier_is_a_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notifier_reaches_path_and_abstract_sockets(tmp_path, kind):
    address = str(tmp_path / "notify") if kind == "path" else f"@inferd-test-{os.getpid()}"
    listener = NotifySocket(address)
    try:
        n = Notifier(address)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert n.ready("serving") and n.reloading() and n.watchdog() and n.extend_timeout(2.5)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        listener.wait_for("EXTEND_TIMEOUT_USEC")  # the last one sent
        msgs = [m for _, m in listener.messages]
        assert msgs[0] == {"READY": "1", "STATUS": "serving"}
        assert msgs[2] == {"WATCHDOG": "1"}
        # systemd's clock (CLOCK_MONOTONIC) at the time of the call
        assert msgs[1]["RELOADING"] == "1" and before <= int(msgs[1]["MONOTONIC_USEC"]) <= after
        assert msgs[3] == {"EXTEND_TIMEOUT_USEC": "2500000"}
    finally:
        listener.close()


CONFIG = """
models:
  - name: raw
    path: {models}/classifier_int8.onnx
    threads: 1
  - name: slowmo
    path: {slow}
    threads: 1
    warmup: 1
    workers: threads  # a hung worker thread stops the watchdog (a hung process is replaced: test_workers.py)
endpoints:
  - {type: router, bind: "{router}", max_message_bytes: 40000000}
  - {type: pull, bind: "{pull}"}
results:
  bind: "{results}"
metrics:
  listen: "{metrics}"
sources:
  - {match: "*", policy: fifo, queue_size: 64}
service:
  hang_after_s: 1.0
  drain_timeout_s: 0.5
"""


@pytest.fixture(scope="module")
def slow_path(tmp_path_factory) -> Path:
    return build_slow_model(tmp_path_factory.mktemp("slow") / "slowmo.onnx")


@pytest.fixture(scope="module")
def busy(slow_path) -> Busy:
    return Busy(slow_path)


def start(tmp_path, env: dict, config: str = CONFIG, slow: Path | None = None) -> DaemonProcess:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return DaemonProcess(tmp_path, config.replace("{slow}", str(slow)))
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_sequence_ready_reload_stop(tmp_path, slow_path, kind):
    address = str(tmp_path / "notify") if kind == "path" else f"@inferd-notify-{os.getpid()}"
    listener = NotifySocket(address)
    d = start(tmp_path, {"NOTIFY_SOCKET": address}, slow=slow_path)
    try:
        ready = listener.wait_for("READY", "1")
        msgs = [m for _, m in listener.messages]
        loading = [m["STATUS"] for m in msgs[:ready] if m.get("STATUS", "").startswith("loading model")]
        assert loading == ["loading model raw", "loading model slowmo"]
        assert any("EXTEND_TIMEOUT_USEC" in m for m in msgs[:ready])
        assert msgs[ready]["STATUS"].startswith("serving 2 model(s)")
        # READY came after warm-up: the daemon answers right away
        assert InferClient(d.router, timeout=30).infer(TENSOR, model="raw").ok
        d.proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1", after=ready + 1)
        assert int(listener.messages[reloading][1]["MONOTONIC_USEC"]) > 0
        listener.wait_for("READY", "1", after=reloading + 1)
        d.proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING", "1", after=reloading + 1)
        assert d.proc.wait(20) == 0
        assert stopping > reloading
    finally:
        d.stop()
        listener.close()


def test_watchdog_stops_pinging_while_a_model_hangs(tmp_path, slow_path, busy):
    listener = NotifySocket(str(tmp_path / "notify"))
    d = start(
        tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}, slow=slow_path
    )

    def pings() -> list[float]:
        return [t for t, m in listener.messages if m.get("WATCHDOG") == "1"]

    try:
        listener.wait_for("READY", "1")
        end = time.monotonic() + 30
        while len(pings()) < 3:
            assert time.monotonic() < end, "no watchdog pings from a healthy daemon"
            time.sleep(0.05)
        dealer = d.socket(zmq.DEALER, d.router)
        hang = busy.frame(6.0)  # one inference of ~6 s on this machine: ~5 s seen stuck
        dealer.send_multipart([b"", raw_header(hang, model="slowmo", source="hang"), hang])
        # the window is bracketed by what the daemon itself says: from the first /healthz that
        # calls the model stuck to the last one that still does, not one ping may be sent
        stuck_from = stuck_until = None
        end = time.monotonic() + 300
        while not dealer.poll(0):
            assert time.monotonic() < end, "the slow inference never finished"
            now = time.monotonic()
            status, body = d.probe("/healthz")
            if status == 503 and any("slowmo stuck in one inference" in p for p in body["problems"]):
                stuck_from = stuck_from or now
                stuck_until = time.monotonic()
            time.sleep(0.05)
        assert json.loads(dealer.recv_multipart()[1])["status"] == "ok"
        dealer.close()
        assert stuck_from is not None and stuck_until - stuck_from > 2.0, (
            f"precondition not met: the model was seen stuck for {stuck_from=} .. {stuck_until=}"
        )
        done = time.monotonic()
        end = done + 30
        while not any(t > done for t in pings()):
            assert time.monotonic() < end, "pings did not resume once the model was healthy again"
            time.sleep(0.05)
        # (half a second for this listener thread to read a ping sent just before the flip)
        during = [t for t in pings() if stuck_from + 0.5 < t < stuck_until]
        assert during == [], (stuck_from, stuck_until, during)
        logs = d.logs()
        assert "watchdog: not pinging systemd: model slowmo stuck in one inference" in logs
    finally:
        d.stop()
        listener.close()


def wait_for_more(results: list, n: int, timeout: float = 60) -> None:
    """Until `n` more answers than now are in `results` (a stream_requests list)."""
    want, end = len(results) + n, time.monotonic() + timeout
    while len(results) < want:
        assert time.monotonic() < end, f"{len(results)} answers, not {want}, within {timeout} s"
        time.sleep(0.01)


def stream_requests(d: DaemonProcess, stop: threading.Event, out: list) -> threading.Thread:
    def run() -> None:
        with InferClient(d.router, source="stream", timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.infer(TENSOR, model="raw")
                    out.append(r.outputs[0])
                except Exception as e:  # recorded, and asserted on below
                    out.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_reload_with_a_broken_config_keeps_serving_everything(tmp_path, slow_path):
    d = start(tmp_path, {}, slow=slow_path)
    good = d.config_path.read_text()
    results: list = []
    stop = threading.Event()
    t = stream_requests(d, stop, results)
    try:
        wait_for_more(results, 5)
        for i, broken in enumerate((
            good.replace("classifier_int8.onnx", "missing.onnx"),  # a required model that cannot load
            good + "\nbogus_key: 1\n",  # fails validation
            "models: [\n",  # not YAML
        )):  # fmt: skip
            d.config_path.write_text(broken)
            d.proc.send_signal(signal.SIGHUP)
            d.wait_metric("inferd_config_reloads_total", i + 1, result="failed")
            wait_for_more(results, 5)  # served across and after each failed reload
    finally:
        stop.set()
        t.join(60)
    expected = bare_session(str(MODELS / "classifier_int8.onnx")).run(None, {"input": TENSOR})[0]
    try:
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors and len(results) >= 20
        assert all(np.array_equal(r, expected) for r in results)
        assert d.metric("inferd_config_reloads_total", result="failed") == 3
        assert d.metric("inferd_config_reloads_total", result="ok") == 0
        logs = d.logs()
        assert logs.count("reload failed, still serving the previous config") == 3
        assert "unknown key 'bogus_key'" in logs and "missing.onnx does not exist" in logs
    finally:
        assert d.stop() == 0


def test_reload_swaps_a_changed_model_without_losing_a_frame(tmp_path, slow_path):
    d = start(tmp_path, {}, slow=slow_path)
    sess = {
        name: bare_session(str(MODELS / name)) for name in ("classifier_int8.onnx", "classifier_float.onnx")
    }
    old_out = sess["classifier_int8.onnx"].run(None, {"input": TENSOR})[0]
    new_out = sess["classifier_float.onnx"].run(None, {"input": TENSOR})[0]
    assert not np.array_equal(old_out, new_out)
    push = d.socket(zmq.PUSH, d.pull)
    results: list = []
    stop = threading.Event()
    t = stream_requests(d, stop, results)
    try:
        wait_for_more(results, 3)  # answers from the old model first
        text = d.config_path.read_text().replace("classifier_int8.onnx", "classifier_float.onnx")
        text = text.replace(
            '  - {type: pull, bind: "' + d.pull + '"}',
            '  - {type: pull, bind: "' + d.pull + '"}\n'
            '  - {type: pull, bind: "ipc://' + str(tmp_path) + '/extra.sock"}',
        )
        d.config_path.write_text(text)
        d.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 60
        while time.monotonic() < end and "reloaded:" not in d.logs():
            time.sleep(0.05)
        while not any(isinstance(r, np.ndarray) and np.array_equal(r, new_out) for r in results):
            assert time.monotonic() < end, "no answer from the new model"
            time.sleep(0.01)
        wait_for_more(results, 3)  # and more after the first new one
    finally:
        stop.set()
        t.join(60)
    try:
        assert "reloaded:" in d.logs(), d.logs()
        assert not [r for r in results if isinstance(r, Exception)]
        kinds = [
            "old" if np.array_equal(r, old_out) else "new" if np.array_equal(r, new_out) else "?"
            for r in results
        ]
        assert "?" not in kinds and kinds[0] == "old" and kinds[-1] == "new"
        assert kinds == sorted(kinds, key=lambda k: k == "new")  # old ones, then new ones: one swap
        assert d.metric("inferd_config_reloads_total", result="ok") == 1
        # the unchanged pull socket stayed bound: the client connected before the reload still works
        with zmq.Context() as ctx, ResultSubscriber(d.results, "raw/") as sub:
            push.send_multipart([raw_header(TENSOR, model="raw", source="kept"), TENSOR])
            extra = ctx.socket(zmq.PUSH)
            extra.connect(f"ipc://{tmp_path}/extra.sock")
            extra.send_multipart([raw_header(TENSOR, model="raw", source="added"), TENSOR])
            got = set()
            while len(got) < 2:
                got.add(sub.recv(30).topic)
            extra.close(0)
        assert got == {"raw/kept", "raw/added"}
        sha = [
            dict(k[1])["sha256"]
            for k in d.scrape()
            if k[0] == "inferd_model_info" and ("model", "raw") in k[1]
        ]
        import hashlib

        assert sha == [hashlib.sha256((MODELS / "classifier_float.onnx").read_bytes()).hexdigest()]
    finally:
        push.close(0)
        assert d.stop() == 0


def test_sigterm_drains_then_answers_the_rest_with_shutdown(tmp_path, slow_path, busy):
    d = start(tmp_path, {}, slow=slow_path)
    dealer = d.socket(zmq.DEALER, d.router)
    frame = busy.frame(0.5)  # 12 of them: ~6 s of work, far more than drain_timeout_s (0.5 s) serves
    n = 12
    for i in range(n):
        dealer.send_multipart([b"", raw_header(frame, model="slowmo", source="drain", id=str(i)), frame])
    d.wait_metric("inferd_frames_received_total", n, source="drain")
    d.proc.send_signal(signal.SIGTERM)
    replies = {}
    end = time.monotonic() + 60
    while len(replies) < n and time.monotonic() < end:
        if dealer.poll(200):
            h = json.loads(dealer.recv_multipart()[1])
            replies[int(h["id"])] = h["status"] if h["status"] == "ok" else h["error"]["reason"]
    dealer.close()
    assert d.proc.wait(60) == 0
    d.stop()
    assert sorted(replies) == list(range(n)), replies  # every accepted request answered once
    statuses = [replies[i] for i in range(n)]
    assert statuses[-1] == "shutdown", f"precondition not met: the drain served everything: {statuses}"
    assert set(statuses) <= {"ok", "shutdown"}
    assert statuses == sorted(statuses, key=lambda s: s == "shutdown")  # served in order, then the rest


def test_journal_lines_carry_syslog_priorities(tmp_path, slow_path):
    d = start(tmp_path, {"JOURNAL_STREAM": "8:12345"}, slow=slow_path)
    d.request([b"{broken", TENSOR])
    assert d.stop() == 0
    lines = [line for line in d.logs().splitlines() if line.strip()]
    assert lines and all(re.match(r"^<[0-7]>inferd[.\w]*: ", line) for line in lines), lines[:5]
    assert any(line.startswith("<6>inferd: ready:") for line in lines)
    assert any(line.startswith("<4>inferd.transport: rejected") for line in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines)  # no own timestamps


def reload_command(pid: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferd", "reload", "--pid", str(pid), "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_reload_command_waits_for_the_verdict_and_fails_with_the_reason(tmp_path, slow_path):
    """`systemctl reload` runs `inferd reload --pid $MAINPID`: its exit code is the reload's."""
    run = tmp_path / "run"
    run.mkdir()
    d = start(tmp_path, {"RUNTIME_DIRECTORY": str(run)}, slow=slow_path)
    try:
        proc = reload_command(d.proc.pid)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"inferd (pid {d.proc.pid}) reloaded: serving 2 model(s)"
        assert (run / f"inferd-{d.proc.pid}.reload.json").exists()  # in $RUNTIME_DIRECTORY
        good = d.config_path.read_text()
        d.config_path.write_text(good + "bogus_key: 1\n")
        proc = reload_command(d.proc.pid)
        assert proc.returncode == 1
        assert "inferd reload: failed:" in proc.stderr and "unknown key 'bogus_key'" in proc.stderr
        assert "still serving the previous config" in proc.stderr
        assert InferClient(d.router, timeout=30).infer(TENSOR, model="raw").ok  # still serving
        d.config_path.write_text(good)
        assert reload_command(d.proc.pid).returncode == 0  # the verdict is this reload's, not the last
    finally:
        assert d.stop() == 0
    assert list(run.iterdir()) == []  # the verdict file goes with the daemon


UNIT = ROOT / "systemd" / "inferd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_clean_and_is_hardened(tmp_path):
    # verify checks that ExecStart exists: point it at this venv's inferd
    unit = tmp_path / "inferd.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/inferd/bin/inferd", str(Path(sys.executable).parent / "inferd"))
    )
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "inferd.service" in line]
    assert proc.returncode == 0 and problems == [], proc.stdout + proc.stderr
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True
    )
    exposure = float(re.search(r"Overall exposure level for inferd.service: ([\d.]+)", proc.stdout).group(1))
    assert exposure <= 2.0, proc.stdout
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "ExecReload=",
                 "TimeoutStopSec=", "User=inferd", "RuntimeDirectory=inferd", "RuntimeDirectoryMode=0750",
                 "StateDirectory=inferd", "ConfigurationDirectory=inferd", "ProtectSystem=strict",
                 "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                 "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes"):  # fmt: skip
        assert line in text, line


MDWE_SCRIPT = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    print("unsupported", ctypes.get_errno()); sys.exit(3)
import numpy as np
from pathlib import Path
from inferd.config import load_config
from inferd.engine.models import load_models
config, base = load_config(sys.argv[1])
loaded, failed = load_models(config, base)
assert not failed, failed
frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
for name, model in loaded.items():
    outputs, decoded = model.predict([frame], "cam0")
    print(name, model.runtime, decoded["classes"][0]["label"])
"""


def test_the_runtimes_work_under_memory_deny_write_execute():
    """The unit sets MemoryDenyWriteExecute=yes; the kernel's PR_SET_MDWE enforces the same rule."""
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_SCRIPT, str(ROOT / "examples" / "inferd.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode == 3:
        pytest.skip(f"kernel without PR_SET_MDWE: {proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runtimes = {line.split()[1] for line in proc.stdout.splitlines()}
    assert runtimes == {"onnx", "tflite"}


CAPTURE_UNIT = ROOT / "systemd" / "inferd-capture@.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_capture_template_unit_verifies_clean_and_is_hardened(tmp_path):
    unit = tmp_path / "inferd-capture@cam0.service"
    unit.write_text(
        CAPTURE_UNIT.read_text().replace(
            "/opt/inferd/bin/inferd", str(Path(sys.executable).parent / "inferd")
        )
    )
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "inferd-capture" in line]
    assert proc.returncode == 0 and problems == [], proc.stdout + proc.stderr
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(CAPTURE_UNIT)], capture_output=True, text=True
    )
    exposure = float(
        re.search(r"Overall exposure level for inferd-capture@\S*: ([\d.]+)", proc.stdout).group(1)
    )
    assert exposure <= 2.0, proc.stdout
    text = CAPTURE_UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "-c /etc/inferd/capture/%i.yaml",
                 "DevicePolicy=closed", "DeviceAllow=char-video4linux rw", "SupplementaryGroups=video",
                 "IPAddressDeny=any", "IPAddressAllow=localhost", "MemoryDenyWriteExecute=yes"):  # fmt: skip
        assert line in text, line
