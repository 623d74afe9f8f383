"""What /healthz, /readyz, the systemd watchdog and the metrics read from a running daemon."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("inferd")


class Probes:
    """Reads a `Daemon`'s state (any thread); changes nothing."""

    def __init__(self, daemon) -> None:
        self.d = daemon

    def sync_workers(self, timeout: float = 1.0) -> None:
        """Before a scrape: every worker process's counts, so a result already received is counted
        (a worker inside a long inference answers from its tally thread at once)."""
        hub, transport = self.d.hub, self.d.transport
        if hub is None or transport is None or transport.stopped.is_set() or not hub.pools:
            return
        try:
            sync, asked = transport.call(hub.request_sync, timeout)
        except (TimeoutError, OSError):
            return
        if not hub.wait_sync(sync, asked, timeout):
            log.debug("a worker process did not send its counts within %.1f s of a scrape", timeout)

    def worker_pids(self) -> list[tuple[str, int, int]]:
        return [(p.name, w.index, w.ident) for p in list(self.d.pools.values()) for w in p.workers if w.ident]

    def workers(self) -> list:
        """Worker threads and worker processes (procs.WorkerProcess looks like a Worker here)."""
        threads = [w for ws in list(self.d.workers.values()) for w in ws]
        return threads + [w for p in list(self.d.pools.values()) for w in p.workers]

    def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for q in list(self.d.queues.values()):
            for source, n in q.depths().items():
                depths[source] = depths.get(source, 0) + n
        for pool in list(self.d.pools.values()):  # a fifo frame waiting inside a worker is queued too
            for source in pool.waiting():
                depths[source] = depths.get(source, 0) + 1
        return depths

    def health(self) -> tuple[bool, dict]:
        """Alive and making progress: the IO loop turns and no worker is stuck in one inference."""
        now = time.monotonic()
        if self.d.transport is None or not self.d.ready.is_set():
            return not self.d._stopped, {"status": "stopped" if self.d._stopped else "starting"}
        problems = []
        if now - self.d.transport.last_loop > 5.0:
            problems.append(f"IO loop stalled for {now - self.d.transport.last_loop:.1f} s")
        hang = self.d.config.service.hang_after_s
        for w in self.workers():
            busy = w.busy_since
            if busy is not None and now - busy > hang:
                problems.append(f"model {w.model.name} stuck in one inference for {now - busy:.1f} s")
            elif w.ident is not None and not w.is_alive() and not w.queue.closed:
                problems.append(f"worker {w.name} died")
            elif busy is None and w.is_alive() and not w.loading and now - w.last_progress > 5.0:
                problems.append(f"worker {w.name} loop stalled for {now - w.last_progress:.1f} s")
        body = {"status": "ok" if not problems else "unhealthy", "problems": problems}
        sink = self.d.replies.sink
        if sink is not None:  # informative only: a broker never makes inferd unhealthy
            body["mqtt"] = sink.state()
        return not problems, body

    def readiness(self) -> tuple[bool, dict]:
        """Ready when every required model is loaded and warm and every socket is bound."""
        models = {}
        for cfg in self.d.config.models:
            if cfg.name in self.d.models:
                info = self.d.models[cfg.name][0].describe()
                models[cfg.name] = {
                    "state": "ready", "runtime": cfg.runtime.type, "required": cfg.required,
                    "accelerator": info.get("accelerator", "cpu"), "placement": info.get("placement", {}),
                }  # fmt: skip
                pool = self.d.pools.get(cfg.name)
                if pool is not None:  # worker processes: how many serve now (others restarting)
                    models[cfg.name]["workers"] = {
                        "processes": len(pool.workers), "serving": sum(w.connected for w in pool.workers),
                        "pids": [w.ident for w in pool.workers if w.ident],
                    }  # fmt: skip
            elif cfg.name in self.d.failed:
                models[cfg.name] = {
                    "state": "failed",
                    "required": cfg.required,
                    "error": str(self.d.failed[cfg.name]),
                }
            else:
                models[cfg.name] = {"state": "loading", "required": cfg.required}
        ready = self.d.ready.is_set() and self.d.transport is not None and self.d.transport.accepting.is_set()
        body = {
            "ready": ready,
            "models": models,
            "endpoints": [ep.bind or ep.connect for ep in self.d.config.endpoints],
            "degraded": sorted(self.d.failed),
        }
        return ready, body
