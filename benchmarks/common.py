"""Shared pieces of the benchmarks: a daemon in a subprocess, percentiles, results files."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
RESULTS = ROOT / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(latencies_s: list[float]) -> dict:
    a = np.asarray(latencies_s) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 4) for q in (50, 90, 99)} if len(a) else {}


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": len(os.sched_getaffinity(0)), "arch": platform.machine(),
            "python": platform.python_version()}  # fmt: skip


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    """`inferd run` in a subprocess on a generated config (ipc sockets in a temp dir)."""

    def __init__(
        self, models_yaml: str, extra_yaml: str = "", endpoints_yaml: str = "", metrics_yaml: str = ""
    ) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="inferd-bench-")
        d = self.tmp.name
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pull, self.results = f"ipc://{d}/frames.sock", f"ipc://{d}/results.sock"
        self.metrics = f"127.0.0.1:{free_port()}"
        cfg = Path(d) / "inferd.yaml"
        cfg.write_text(
            f'models:\n{models_yaml}\nendpoints:\n  - {{type: router, bind: "{self.router}"}}\n'
            f'  - {{type: pull, bind: "{self.pull}", rcvhwm: 64}}\n{endpoints_yaml}results:\n  bind: "{self.results}"\n'
            f'  sndhwm: 100000\nmetrics:\n  listen: "{self.metrics}"\n{metrics_yaml}logging: {{level: warning}}\n{extra_yaml}'
        )
        self.log = open(Path(d) / "log", "w+")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "inferd", "--log-level", "info", "run", "-c", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        while "ready:" not in Path(d, "log").read_text():
            if self.proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(Path(d, "log").read_text())
            time.sleep(0.01)
        self.ready_s = time.monotonic() - t0

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def scrape(self) -> dict:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        body = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(body) for s in fam.samples}  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        code = self.proc.wait(30)
        if code != 0:  # a benchmark of a daemon that crashed says so
            print(f"inferd exited {code}:\n{Path(self.tmp.name, 'log').read_text()[-3000:]}", flush=True)
        self.tmp.cleanup()
