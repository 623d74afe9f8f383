"""The running daemon: models, queues, workers, sockets and metrics wired together."""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from pathlib import Path

import zmq

from inferd.config import Config
from inferd.errors import ModelLoadError
from inferd.health import HttpServer
from inferd.metrics import Metrics
from inferd.models import Model, load_model, load_models
from inferd.pipeline import Frame, ModelQueue, SourcePolicies, Worker
from inferd.service import Notifier
from inferd.transport import Replies, Transport

log = logging.getLogger("inferd")
LOAD_TIMEOUT_S = 60.0  # EXTEND_TIMEOUT_USEC granted per model while it loads


class Dispatcher:
    """Decides which model queues a frame goes to, and answers what cannot be routed."""

    def __init__(self, config: Config, queues: dict[str, ModelQueue], replies: Replies) -> None:
        self.config, self.queues, self.replies = config, queues, replies
        self.known = {m.name for m in config.models}
        self._routes: dict[str, list[str]] = {}

    def route(self, source: str) -> list[str]:
        models = self._routes.get(source)
        if models is None:
            if not self.config.routes:
                models = [m.name for m in self.config.models]
            else:
                models = []
                for r in self.config.routes:
                    if any(fnmatch.fnmatchcase(source, pat) for pat in r.sources):
                        models += [m for m in r.models if m not in models]
            if len(self._routes) < 4096:
                self._routes[source] = models
        return models

    def submit(self, frame: Frame, router: bool = False) -> list[ModelQueue]:
        """Queue the frame for its models; returns the fifo queues that had no room (to retry)."""
        names = frame.header.models or self.route(frame.source)
        requested = frame.header.models[0] if frame.header.models else ""
        if not names:
            self.replies.reject(
                frame, requested, "no_route", f"no route sends source {frame.source!r} to a model"
            )
            return []
        for name in names:
            if name not in self.known:
                self.replies.reject(
                    frame,
                    name,
                    "unknown_model",
                    f"unknown model {name!r}; models: {', '.join(sorted(self.known))}",
                )
                return []
            if name not in self.queues:
                self.replies.reject(frame, name, "model_unavailable", f"model {name!r} is not loaded")
                return []
        if router and len(names) != 1:
            self.replies.reject(
                frame,
                requested,
                "multiple_models",
                f"a request gets one reply, so it must name one model (routed to {', '.join(names)})",
            )
            return []
        return [q for q in (self.queues[n] for n in names) if not q.put(frame)]

    def expire(self) -> None:
        """Answer queued router requests whose deadline passed, before the deadline is far gone."""
        now = time.time()

        def passed(frame: Frame) -> str | None:
            d = frame.header.deadline
            return "deadline" if d is not None and now > d else None

        for name, q in self.queues.items():
            if q.size:
                for frame, reason in q.remove_if(passed):
                    self.replies.drop(frame, name, reason)


class Daemon:
    def __init__(
        self, config: Config, base_dir: Path, metrics: Metrics | None = None, notifier: Notifier | None = None
    ) -> None:
        self.config, self.base_dir = config, base_dir
        self.notifier = notifier or Notifier("")
        self.metrics = metrics or Metrics(
            buckets=config.metrics.latency_buckets, sysfs=config.metrics.sysfs, queue_depths=self.queue_depths
        )
        self.ctx = zmq.Context()
        self.models: dict[str, list[Model]] = {}
        self.failed: dict[str, ModelLoadError] = {}
        self.queues: dict[str, ModelQueue] = {}
        self.workers: list[Worker] = []
        self.replies = Replies(self.ctx, self.metrics)
        self.transport: Transport | None = None
        self.io_thread: threading.Thread | None = None
        self.http = None
        self.ready = threading.Event()
        self._stopped = False
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)

    def load(self) -> None:
        """Load and warm every model; a required one that fails raises ModelLoadError."""

        def loading(cfg) -> None:
            self.notifier.status(f"loading model {cfg.name}")
            self.notifier.extend_timeout(LOAD_TIMEOUT_S)

        loaded, self.failed = load_models(self.config, self.base_dir, loading)
        for cfg in self.config.models:
            if cfg.name in self.failed and cfg.required:
                for m in loaded.values():
                    m.close()
                raise self.failed[cfg.name]
        for name, model in loaded.items():
            instances = [model]
            for _ in range(1, model.cfg.instances):
                # onnxruntime sessions are thread-safe and shared; a TFLite interpreter is not
                instances.append(
                    model
                    if model.runtime == "onnx"
                    else load_model(model.cfg, self.base_dir, self.config.logging.runtime_level)
                )
            self.models[name] = instances
            self.metrics.model_up(model)
        for name in self.failed:
            self.metrics.model_loaded.labels(name).set(0)
        if self.failed:
            log.warning("running degraded: optional model(s) not loaded: %s", ", ".join(sorted(self.failed)))

    def start(self) -> None:
        """Serve HTTP, load models, bind sockets, start workers and the IO thread. Ready when it returns.

        On failure everything started so far is stopped again before the error propagates.
        """
        try:
            self._start()
        except BaseException:
            self.stop(0)
            raise

    def _start(self) -> None:
        if self.config.metrics.listen:
            self.http = HttpServer(
                self.config.metrics.listen, self.metrics.registry, self.health, self.readiness
            )
        self.load()
        policies = SourcePolicies(self.config.sources)
        for name, instances in self.models.items():
            q = self.queues[name] = ModelQueue(name, policies, self._dropped(name))
            for i, model in enumerate(instances):
                self.workers.append(Worker(model, q, self.replies, self.metrics, policies, i))
        dispatcher = Dispatcher(self.config, self.queues, self.replies)
        self.transport = Transport(self.ctx, self.config, dispatcher, self.replies, self.metrics)
        self.transport.bind()
        for w in self.workers:
            w.start()
        self.io_thread = threading.Thread(target=self.transport.run, name="io", daemon=True)
        self.io_thread.start()
        self.ready.set()
        self.notifier.ready(self.status_line())
        log.info(
            "ready: %d model(s), %d endpoint(s), results on %s",
            len(self.models),
            len(self.config.endpoints),
            self.config.results.bind or "(none)",
        )

    def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for q in list(self.queues.values()):
            for source, n in q.depths().items():
                depths[source] = depths.get(source, 0) + n
        return depths

    def health(self) -> tuple[bool, dict]:
        """Alive and making progress: the IO loop turns and no worker is stuck in one inference."""
        now = time.monotonic()
        if self.transport is None:
            return True, {"status": "starting" if not self.ready.is_set() else "stopped"}
        problems = []
        if now - self.transport.last_loop > 5.0:
            problems.append(f"IO loop stalled for {now - self.transport.last_loop:.1f} s")
        for w in self.workers:
            busy = w.busy_since
            if busy is not None and now - busy > self.config.metrics.hang_after_s:
                problems.append(f"model {w.model.name} stuck in one inference for {now - busy:.1f} s")
            elif not w.is_alive() and not self.queues[w.model.name].closed:
                problems.append(f"worker {w.name} died")
        return not problems, {"status": "ok" if not problems else "unhealthy", "problems": problems}

    def readiness(self) -> tuple[bool, dict]:
        """Ready when every required model is loaded and warm and every socket is bound."""
        models = {}
        for cfg in self.config.models:
            if cfg.name in self.models:
                models[cfg.name] = {"state": "ready", "runtime": cfg.runtime.type, "required": cfg.required}
            elif cfg.name in self.failed:
                models[cfg.name] = {
                    "state": "failed",
                    "required": cfg.required,
                    "error": str(self.failed[cfg.name]),
                }
            else:
                models[cfg.name] = {"state": "loading", "required": cfg.required}
        ready = self.ready.is_set() and self.transport is not None and self.transport.accepting.is_set()
        body = {
            "ready": ready,
            "models": models,
            "endpoints": [ep.bind or ep.connect for ep in self.config.endpoints],
            "degraded": sorted(self.failed),
        }
        return ready, body

    def status_line(self) -> str:
        text = f"serving {len(self.models)} model(s)"
        if self.failed:
            text += f", degraded: {', '.join(sorted(self.failed))} not loaded"
        return text

    def _dropped(self, model: str):
        return lambda frame, reason: self.replies.drop(frame, model, reason)

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, serve what is queued within `drain_timeout`, answer the rest, close.

        Safe to call on a daemon that only partly started, and more than once.
        """
        if self._stopped:
            return
        self._stopped = True
        self.ready.clear()
        self.notifier.stopping(f"stopping: draining queues (up to {drain_timeout:g} s)")
        log.info("stopping: draining queues (up to %.1f s)", drain_timeout)
        if self.transport is not None:
            self.transport.stop_accepting()
        for q in self.queues.values():
            q.close()
        deadline = time.monotonic() + drain_timeout
        for w in self.workers:
            if w.ident is not None:
                w.join(max(0.0, deadline - time.monotonic()))
        for name, q in self.queues.items():
            for frame, reason in q.remove_if(lambda f: "shutdown"):
                self.replies.drop(frame, name, reason)
        self.replies.release()  # this thread's socket: the shutdown answers above are in the outbox
        if self.transport is not None:
            self.transport.close()
            if self.io_thread is not None:
                self.io_thread.join(5.0)
            self.transport.close_sockets()
        if self.http is not None:
            self.http.shutdown()
            self.http = None
        for instances in self.models.values():
            for m in {id(x): x for x in instances}.values():
                m.close()
        self.ctx.destroy(linger=0)
        log.info("stopped")
