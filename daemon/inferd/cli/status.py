"""`inferd status`: a terminal table of fps, latency, drops and temperature from /metrics."""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Snapshot:
    at: float
    samples: Samples

    def select(self, name: str, **match: str) -> list[tuple[dict, float]]:
        out = []
        for (n, labels), value in self.samples.items():
            if n == name:
                d = dict(labels)
                if all(d.get(k) == v for k, v in match.items()):
                    out.append((d, value))
        return out

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, v in self.select(name, **match))


def scrape(url: str, timeout: float = 5.0) -> Snapshot:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read().decode()
    samples: Samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Snapshot(time.monotonic(), samples)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (upper bound, count) pairs, as Prometheus computes it."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def _latency(prev: Snapshot | None, cur: Snapshot, model: str) -> tuple[float | None, float | None]:
    by_le: dict[float, float] = defaultdict(float)
    for labels, value in cur.select("inferd_frame_latency_seconds_bucket", model=model):
        by_le[float(labels["le"])] += value
    if prev is not None:
        delta = dict(by_le)
        for labels, value in prev.select("inferd_frame_latency_seconds_bucket", model=model):
            delta[float(labels["le"])] -= value
        if max(delta.values(), default=0) > 0:  # recent frames only, when there are any
            by_le = delta
    pairs = list(by_le.items())
    return quantile(0.5, pairs), quantile(0.99, pairs)


def render(prev: Snapshot | None, cur: Snapshot) -> str:
    dt = (cur.at - prev.at) if prev else None

    def rate(name: str, **match: str) -> float | None:
        if prev is None or not dt:
            return None
        return max(0.0, cur.total(name, **match) - prev.total(name, **match)) / dt

    def fmt(v: float | None, scale: float = 1.0, unit: str = "") -> str:
        return "-" if v is None else f"{v * scale:.1f}{unit}"

    lines = []
    models = sorted({lab["model"] for lab, _ in cur.select("inferd_model_loaded")})
    lines.append(f"{'MODEL':20} {'LOADED':>6} {'FPS':>8} {'P50':>10} {'P99':>10} {'OK':>10} {'ERRORS':>7}")
    for m in models:
        p50, p99 = _latency(prev, cur, m)
        loaded = "yes" if cur.total("inferd_model_loaded", model=m) else "NO"
        fps = fmt(rate("inferd_inferences_total", model=m, status="ok"))
        lines.append(
            f"{m:20} {loaded:>6} {fps:>8} "
            f"{fmt(p50, 1000, ' ms'):>10} {fmt(p99, 1000, ' ms'):>10} "
            f"{cur.total('inferd_inferences_total', model=m, status='ok'):>10.0f} "
            f"{cur.total('inferd_inferences_total', model=m, status='error'):>7.0f}"
        )
    sources = sorted({lab["source"] for lab, _ in cur.select("inferd_frames_received_total")})
    lines.append("")
    lines.append(f"{'SOURCE':20} {'FPS IN':>8} {'QUEUED':>7} {'DROPPED':>8} {'REJECTED':>9}  REASONS")
    for s in sources:
        reasons = defaultdict(float)
        for kind in ("inferd_frames_dropped_total", "inferd_frames_rejected_total"):
            for lab, v in cur.select(kind, source=s):
                reasons[lab["reason"]] += v
        text = ", ".join(f"{r} {v:.0f}" for r, v in sorted(reasons.items()) if v)
        lines.append(
            f"{s:20} {fmt(rate('inferd_frames_received_total', source=s)):>8} "
            f"{cur.total('inferd_queue_depth', source=s):>7.0f} "
            f"{cur.total('inferd_frames_dropped_total', source=s):>8.0f} "
            f"{cur.total('inferd_frames_rejected_total', source=s):>9.0f}  {text}"
        )
    temps = cur.select("inferd_device_temperature_celsius")
    freqs = cur.select("inferd_cpu_frequency_hertz")
    maxes = {lab["cpu"]: v for lab, v in cur.select("inferd_cpu_frequency_max_hertz")}
    if temps or freqs:
        lines.append("")
        device = [f"{lab['zone']} {v:.1f} °C" for lab, v in sorted(temps, key=lambda t: t[0]["zone"])]
        for lab, v in sorted(freqs, key=lambda t: int(t[0]["cpu"]) if t[0]["cpu"].isdigit() else 0):
            top = maxes.get(lab["cpu"])
            throttled = " (throttled)" if top and v < 0.9 * top else ""
            device.append(f"cpu{lab['cpu']} {v / 1e6:.0f}/{(top or 0) / 1e6:.0f} MHz{throttled}")
        lines.append("DEVICE  " + "   ".join(device))
    return "\n".join(lines)


def run_status(url: str, watch: bool, interval: float, out=print) -> int:
    prev = scrape(url)
    while True:
        time.sleep(interval)
        cur = scrape(url)
        text = render(prev, cur)
        if watch:
            out("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S") + f"  {url}\n\n" + text)
        else:
            out(text)
            return 0
        prev = cur
