"""Start `inferd run` as a subprocess with a real config, and talk to it over real sockets."""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from tests.conftest import MODELS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STARTED: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed before its stop() leaves its daemon running: not past the test run
    (worker processes die with their daemon)."""
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class DaemonProcess:
    def __init__(self, tmp: Path, config: str, env: dict | None = None, python: str | None = None) -> None:
        self.tmp = tmp
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        self.pull = f"ipc://{tmp}/frames.sock"
        self.results = f"ipc://{tmp}/results.sock"
        self.camera_pub = f"ipc://{tmp}/camera.sock"
        text = config
        for key, value in {
            "models": MODELS, "router": self.router, "pull": self.pull, "results": self.results,
            "camera_pub": self.camera_pub, "metrics": f"127.0.0.1:{self.metrics_port}", "tmp": tmp,
        }.items():  # fmt: skip
            text = text.replace("{" + key + "}", str(value))
        if not re.search(r"^metrics:", text, re.M):  # never the default port: another daemon may have it
            text += f'\nmetrics: {{listen: "127.0.0.1:{self.metrics_port}"}}\n'
        self.config_path = tmp / "inferd.yaml"
        self.config_path.write_text(text)
        self.log = open(tmp / "inferd.log", "w+")  # noqa: SIM115
        env = {
            k: v for k, v in dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})).items() if v is not None
        }
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "inferd", "run", "-c", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        _STARTED[:] = [p for p in _STARTED if p.poll() is None] + [self.proc]
        self.ctx = zmq.Context()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inferd exited {self.proc.returncode}:\n{self.logs()}")
            if "ready:" in self.logs():
                return
            time.sleep(0.05)
        raise TimeoutError(f"inferd not ready within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.tmp / "inferd.log").read_text()

    def socket(self, kind: int, addr: str, bind: bool = False, **opts) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        for k, v in opts.items():
            s.setsockopt(getattr(zmq, k), v)
        s.bind(addr) if bind else s.connect(addr)
        return s

    def request(self, parts: list, timeout: float = 10.0) -> tuple[dict, list]:
        """One raw REQ round trip: returns (header, tensor parts)."""
        req = self.socket(zmq.REQ, self.router)
        try:
            req.send_multipart(parts, copy=False)
            assert req.poll(timeout * 1000), "no reply from inferd"
            head, *rest = req.recv_multipart()
            return json.loads(head), rest
        finally:
            req.close()

    def scrape(self) -> dict[tuple, float]:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        )
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def probe(self, path: str = "/healthz") -> tuple[int, dict]:
        """GET /healthz or /readyz: (status code, JSON body), a 503 included."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name: str, **labels) -> float:
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.scrape().items() if n == name and want <= set(lab))

    def wait_metric(self, name: str, at_least: float, timeout: float = 30.0, **labels) -> float:
        """Until the metric (summed as in `total`) reaches `at_least`; fails with what it reached."""
        end = time.monotonic() + timeout
        while (got := self.total(name, **labels)) < at_least:
            if time.monotonic() > end:
                raise AssertionError(f"{name}{labels} reached {got}, not {at_least}, in {timeout} s")
            time.sleep(0.02)
        return got

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ctx.destroy(linger=0)
        self.log.close()
        return self.proc.returncode


def raw_header(frame: np.ndarray, **fields) -> bytes:
    h = {"v": 1, "source": "test", "seq": 0, "shape": list(frame.shape), "dtype": frame.dtype.name}
    h.update(fields)
    return json.dumps(h).encode()
