"""Fixtures for the ARM end-to-end tests (`make -C qemu test-system`, `pytest -m qemu qemu/tests`).

Session fixtures, in dependency order:

- ``guest``: the arm64 image booted under qemu-system-aarch64 (TCG, cortex-a72, 2 CPUs, 2 GiB,
  -snapshot), ssh/router/metrics forwarded from 127.0.0.1 (``guest.ports``), no route out
  (``restrict=on``). Finalizer: the guest journal is saved to build/artifacts/journal.txt, then
  ``systemctl poweroff`` (qemu killed if it does not exit). The console is build/artifacts/console.log.
- ``installed``: the .deb (default) or the bundle (``QEMU_INSTALL=bundle``) installed in the guest
  offline, with what the package did on its own (state of inferd.service on the default config).
- ``service``: inferd.service running the test config (``TEST_CONFIG``: the example models with raw
  outputs, a tcp router and metrics on 0.0.0.0 so slirp's forwards reach them) and the drop-in
  ``QEMU_DROPIN`` (IPAddressAllow= for the slirp gateway the forwarded connections come from).
  A :class:`Service` with ``show()``, ``main_pid()``, ``wait_active()``, ``journal()``,
  ``write_config()``, ``dropin()``, ``restart()``, ``reload()``.

Hooks (used by the reload and watchdog tests in test_system.py):
- ``systemctl reload`` (SIGHUP model swap): ``service.write_config(TEST_CONFIG.replace(...))``, then
  ``service.reload()`` (returns when systemd saw READY=1 again after RELOADING=1), then
  ``infer(...)`` / ``scrape()``; ``service.restore()`` puts the test config back.
- a watchdog trip: ``service.dropin("watchdog.conf", "[Service]\\nWatchdogSec=5\\n")`` (daemon-reload
  + restart), stall the daemon (e.g. ``guest.ssh(f"kill -STOP {service.main_pid()}")``), then
  ``service.wait_active(not_pid=old_pid)`` and check ``service.show("NRestarts", "Result")`` and
  ``service.journal()`` for "Watchdog timeout"; ``service.remove_dropin("watchdog.conf")`` after.
Function fixtures: ``infer`` (send one frame to a model over the forwarded router port),
``scrape`` (GET /metrics, parsed with prometheus_client.parser), ``reference`` (the same model
run on this x86 host with inferd's own load_model/predict).

Everything skips with a reason when the image or the package is not built, so a bare
``pytest -m qemu qemu/tests`` does not explode; ``make -C qemu test-system`` builds them first.
In CI (``INFERD_CI=1``, set by ``make -C qemu ci`` and .ci/run) a skip is a failure: a comparison
that cannot run (no image, no .venv-legacy for the x86 tflite-runtime reference, no root...) must
turn CI red, not pass unnoticed. Strict xfails keep their meaning.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guest import ARTIFACTS, Guest, GuestError, missing

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"
GUEST_MODELS = "/var/lib/inferd/models"
IMAGENET = "{scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split('"')[1]
    raise RuntimeError("no version in pyproject.toml")


DEB = ROOT / "dist" / f"inferd_{version()}_arm64.deb"
BUNDLE = ROOT / "dist" / f"inferd-{version()}-aarch64.tar.gz"
INSTALL = os.environ.get("QEMU_INSTALL", "deb")

# One entry per example model: raw outputs, so results compare tensor by tensor. The int8 TFLite
# model keeps its int8 output (dequantize_outputs: false): equality is then in quantization steps.
MODEL_ENTRIES = {
    "onnx_qdq": f"path: DIR/classifier_int8.onnx, preprocess: {IMAGENET}",
    "onnx_float": f"path: DIR/classifier_float.onnx, preprocess: {IMAGENET}",
    "onnx_uint8": "path: DIR/classifier_uint8_nhwc.onnx",
    "tflite": f"path: DIR/classifier_int8.tflite, dequantize_outputs: false, preprocess: {IMAGENET}",
}


def models_yaml(model_dir: str) -> str:
    return "models:\n" + "".join(
        f"  - {{name: {name}, {entry.replace('DIR', model_dir)}}}\n" for name, entry in MODEL_ENTRIES.items()
    )


TEST_CONFIG = (
    models_yaml(GUEST_MODELS)
    + """endpoints:
  - {type: router, bind: "tcp://*:5555"}
  - {type: pull, bind: "ipc:///run/inferd/frames.sock"}
results:
  bind: "ipc:///run/inferd/results.sock"
metrics:
  listen: "0.0.0.0:9464"
logging:
  level: info
"""
)
# The drop-in: slirp's port forwards arrive from its gateway 10.0.2.2 (the unit allows only
# localhost).
QEMU_DROPIN = """[Service]
# qemu tests: host port forwards arrive from slirp's gateway.
IPAddressAllow=10.0.2.2/32
"""


def log(msg: str) -> None:
    print(f"[qemu] {msg}", file=sys.__stderr__, flush=True)


CI = os.environ.get("INFERD_CI", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """INFERD_CI=1: every skip of a qemu test (in setup or in the test) is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and INFERD_CI=1 (CI must run every ARM test): {reason}"


@pytest.fixture(scope="session")
def guest():
    lack = missing()
    if lack:
        pytest.skip(
            "the arm64 image is not built (make -C qemu test-system builds it): missing " + ", ".join(lack)
        )
    package = DEB if INSTALL == "deb" else BUNDLE
    if not package.exists():
        pytest.skip(f"{package} is not built (make -C cross {'deb' if INSTALL == 'deb' else 'bundle'})")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    g = Guest(console=ARTIFACTS / "console.log").start()
    log(f"qemu-system-aarch64 started (TCG, cortex-a72); console: {g.console}; ports {g.ports}")
    try:
        secs = g.wait_ssh(timeout=300, progress=log)
        log(f"guest up: ssh after {secs:.1f} s")
        yield g
    finally:
        if g.alive():
            try:
                (ARTIFACTS / "journal.txt").write_text(
                    g.ssh("journalctl -b --no-pager", check=False, timeout=60).stdout
                )
            except Exception as e:  # the artifact is best effort; powering off is not
                log(f"could not save the guest journal: {e}")
        g.stop()
        log("guest powered off")


class Service:
    """inferd.service in the guest, seen through systemctl/journalctl over ssh."""

    def __init__(self, guest: Guest):
        self.guest = guest

    def show(self, *props: str) -> dict[str, str]:
        out = self.guest.ssh(f"systemctl show inferd -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def wait_active(self, timeout: float = 240, not_pid: int | None = None) -> dict[str, str]:
        """Until ActiveState=active (with a MainPID other than not_pid); raises on failed."""
        deadline = time.monotonic() + timeout
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = self.show("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "StatusText")
            if state["ActiveState"] == "active" and state["MainPID"] not in ("0", str(not_pid)):
                return state
            if state["ActiveState"] == "failed":
                break
            time.sleep(1)
        raise AssertionError(f"inferd not active: {state}\n--- journal ---\n{self.journal(80)}")

    def journal(self, lines: int = 200, since: str | None = None) -> str:
        extra = f" --since {shlex.quote(since)}" if since else ""
        return self.guest.ssh(f"journalctl -u inferd --no-pager -n {lines}{extra}", check=False).stdout

    def write_config(self, text: str) -> None:
        self.guest.write("/etc/inferd/inferd.yaml", text)

    def dropin(self, name: str, text: str, restart: bool = True) -> None:
        self.guest.write(f"/etc/systemd/system/inferd.service.d/{name}", text)
        self.guest.ssh("systemctl daemon-reload")
        if restart:
            self.restart()

    def remove_dropin(self, name: str, restart: bool = True) -> None:
        self.guest.ssh(
            f"rm -f /etc/systemd/system/inferd.service.d/{shlex.quote(name)} && systemctl daemon-reload"
        )
        if restart:
            self.restart()

    def restart(self, timeout: float = 240) -> dict[str, str]:
        # Type=notify: returns when READY=1 arrived (or the start failed). reset-failed: a unit that
        # hit StartLimitBurst refuses to start otherwise.
        self.guest.ssh(
            "systemctl reset-failed inferd; systemctl restart inferd", check=False, timeout=timeout
        )
        return self.wait_active(timeout)

    def reload(self, timeout: float = 240) -> dict[str, str]:
        self.guest.ssh("systemctl reload inferd", timeout=timeout)
        return self.wait_active(timeout)

    def restore(self) -> dict[str, str]:
        """Back to the test config and drop-in (for tests that changed them)."""
        self.write_config(TEST_CONFIG)
        self.guest.write("/etc/systemd/system/inferd.service.d/qemu-test.conf", QEMU_DROPIN)
        self.guest.ssh("systemctl daemon-reload")
        return self.restart()


@pytest.fixture(scope="session")
def installed(guest: Guest) -> dict:
    """The package installed offline; the service state the package left on the default config."""
    t0 = time.monotonic()
    if INSTALL == "deb":
        guest.put(DEB, f"/root/{DEB.name}")
        log(f"apt install ./{DEB.name} (offline guest; the postinst starts inferd on the default config)")
        out = guest.ssh(
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y /root/{DEB.name} 2>&1", timeout=900
        )
    else:
        guest.put(BUNDLE, f"/root/{BUNDLE.name}")
        log(f"tar xzf {BUNDLE.name} && ./install.sh")
        # install.sh exits non-zero when the service does not start: the state is checked below.
        cmd = f"cd /root && tar xzf {BUNDLE.name} && cd {BUNDLE.name[:-7]} && ./install.sh 2>&1"
        out = guest.ssh(cmd, check=False, timeout=900)
    seconds = time.monotonic() - t0
    (ARTIFACTS / "install.log").write_text(out.stdout)
    service = Service(guest)
    state = service.show("ActiveState", "SubState", "Type", "MainPID", "StatusText", "UnitFileState", "User")
    log(f"installed ({INSTALL}) in {seconds:.0f} s; inferd.service: {state}")
    journal = service.journal(15)
    rss_kb = None
    if state.get("MainPID", "0") != "0":  # memory at ready on the packaged default config
        status = guest.ssh(f"cat /proc/{state['MainPID']}/status", check=False).stdout
        rss_kb = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None
        )
    return {
        "seconds": seconds,
        "output": out.stdout,
        "default_state": state,
        "journal": journal,
        "rss_kb": rss_kb,
    }


@pytest.fixture(scope="session")
def service(guest: Guest, installed: dict) -> Service:
    s = Service(guest)
    s.write_config(TEST_CONFIG)
    guest.write("/etc/systemd/system/inferd.service.d/qemu-test.conf", QEMU_DROPIN)
    guest.ssh("systemctl daemon-reload")
    t0 = time.monotonic()
    state = s.restart()
    log(f"inferd active on the test config in {time.monotonic() - t0:.1f} s: {state}")
    return s


@pytest.fixture
def router(guest: Guest, service: Service) -> str:
    return f"tcp://127.0.0.1:{guest.ports['router']}"


@pytest.fixture
def infer(router: str):
    """infer(frame, model, source="qemu-e2e", timeout=60) -> inferd.client.Result."""
    from inferd.client import InferClient

    clients: list = []

    def send(frame: np.ndarray, model: str, source: str = "qemu-e2e", timeout: float = 60.0):
        if not clients:
            clients.append(InferClient(router, timeout=timeout, source=source))
        return clients[0].infer(frame, model=model, source=source, timeout=timeout)

    yield send
    for c in clients:
        c.close()


@pytest.fixture
def scrape(guest: Guest, service: Service):
    """scrape() -> {family name: prometheus_client Metric} from the forwarded metrics port."""
    from prometheus_client.parser import text_string_to_metric_families

    def get() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{guest.ports['metrics']}/metrics", timeout=30) as r:
            assert r.status == 200
            text = r.read().decode()
        return {m.name: m for m in text_string_to_metric_families(text)}

    return get


@pytest.fixture(scope="session")
def reference():
    """reference(model_name, frame) -> outputs of the same model and config on this x86 host."""
    from inferd.config import parse_config
    from inferd.engine.models import load_model

    cfg = parse_config(models_yaml(str(MODELS)))
    models = {m.name: load_model(m, MODELS) for m in cfg.models}

    def run(name: str, frame: np.ndarray) -> list[np.ndarray]:
        return models[name].predict([frame])[0]

    yield run
    for m in models.values():
        m.close()


def save_artifact(name: str, data) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=2, default=str) if not isinstance(data, str) else data)
    return path


__all__ = ["TEST_CONFIG", "GuestError", "Service", "save_artifact"]
