"""`inferd bench`: a load generator against a running daemon (like Triton's perf_analyzer).

N sources, each a DEALER socket sending frames at a fixed rate to a router endpoint without
waiting for answers (open loop), so overload shows as drops and latency, not as a slower sender.
Rate 0 is closed loop instead: each source sends its next frame when the last one is answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import zmq

from inferd.client import frame_message


@dataclass
class Load:
    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    messages: dict = field(default_factory=dict)  # reason -> the first message given for it
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _source(ctx, endpoint, model, name, rate, duration, frame, load: Load, stop: threading.Event) -> None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(endpoint)
    pending: dict[str, float] = {}
    period = 1.0 / rate if rate > 0 else 0.0
    start = time.perf_counter()
    next_send, seq = start, 0
    end = start + duration
    while not stop.is_set():
        now = time.perf_counter()
        if now < end and now >= next_send and (period or not pending):  # rate 0: one request at a time
            rid = f"{name}-{seq}"
            pending[rid] = now
            sock.send_multipart([b"", *frame_message(frame, name, seq, model, request_id=rid)], copy=False)
            seq += 1
            with load.lock:
                load.sent += 1
            next_send = next_send + period if period else now
            continue
        if now >= end and (not pending or now > end + 5.0):
            break
        wait_ms = max(0.0, (next_send - now) * 1000) if now < end else 100
        if sock.poll(min(wait_ms, 100)):
            while sock.poll(0):
                _, head, *_ = sock.recv_multipart()
                h = json.loads(head)
                sent_at = pending.pop(h.get("id"), None)
                with load.lock:
                    if h.get("status") == "ok":
                        load.ok += 1
                        if sent_at is not None:
                            load.latencies.append(time.perf_counter() - sent_at)
                    else:
                        err = h.get("error") or {}
                        load.errors[err.get("reason", "?")] += 1
                        load.messages.setdefault(err.get("reason", "?"), err.get("message", ""))
    if pending:
        with load.lock:
            load.errors["no_answer"] += len(pending)
            load.messages.setdefault(
                "no_answer", f"no answer from {endpoint} within 5 s of the end: is inferd running there?"
            )
    sock.close()


def run_bench(
    endpoint: str, model: str | None, sources: int, rate: float, duration: float,
    shape: tuple[int, ...], out=print, progress: bool = True,
) -> dict:  # fmt: skip
    ctx = zmq.Context()
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    load, stop = Load(), threading.Event()
    threads = [
        threading.Thread(
            target=_source, args=(ctx, endpoint, model, f"bench{i}", rate, duration, frame, load, stop)
        )
        for i in range(sources)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            if progress:
                with load.lock:
                    el = time.perf_counter() - start
                    out(f"  {el:5.1f} s  sent {load.sent}  ok {load.ok}  errors {sum(load.errors.values())}")
    except KeyboardInterrupt:
        stop.set()
    for t in threads:
        t.join()
    elapsed = min(time.perf_counter() - start, duration) or duration
    lat = np.asarray(load.latencies) * 1000
    result = {
        "sources": sources, "rate_per_source": rate, "duration_s": duration, "frame": list(shape),
        "sent": load.sent, "ok": load.ok, "throughput_fps": round(load.ok / elapsed, 1),
        "errors": dict(load.errors), "messages": load.messages,
        **({f"p{q}_ms": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)} if lat.size else {}),
    }  # fmt: skip
    ctx.term()
    return result
