"""The running daemon: models, queues, workers, sockets and metrics wired together; reload; stop."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

import zmq

from inferd.config import Config, ModelConfig, load_config
from inferd.engine.models import Model, file_sha256, load_instances, log_failure, resolve_path
from inferd.engine.pipeline import ModelQueue, SourcePolicies, Worker
from inferd.engine.procs import Hub, RemoteModel, WorkerPool
from inferd.engine.zones import ZoneConfig
from inferd.errors import InferdError, ModelLoadError
from inferd.ingest.routing import Dispatcher
from inferd.ingest.security import Authenticator
from inferd.ingest.transport import Transport
from inferd.outputs.live import LiveView
from inferd.outputs.live import app as live_routes
from inferd.outputs.replies import Replies
from inferd.service.health import HttpServer
from inferd.service.metrics import Metrics
from inferd.service.probes import Probes
from inferd.service.systemd import Notifier, reload_status_path, write_reload_status

log = logging.getLogger("inferd")
LOAD_TIMEOUT_S = 60.0  # EXTEND_TIMEOUT_USEC granted per model while it loads
SWITCH_INTERVAL_S = 0.0002


def raw_models(config: Config) -> set[str]:
    """Models whose results MQTT publishes only when asked (`raw`: tensors, summarised)."""
    return {m.name for m in config.models if m.postprocess.type == "raw"}


def zone_layout(config: Config) -> dict[tuple[str, str], dict[str, ZoneConfig]]:
    """(model, source) -> its zones by name: what Home Assistant's zone entities are made from."""
    out: dict[tuple[str, str], dict[str, ZoneConfig]] = {}
    for m in config.models:
        for z in getattr(m.postprocess, "zones", ()):
            out.setdefault((m.name, z.source), {})[z.name] = z
    return out


class Daemon:
    def __init__(
        self,
        config: Config,
        base_dir: Path,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config, self.base_dir, self.config_path = config, base_dir, config_path
        self.notifier = notifier or Notifier("")
        self.probes = Probes(self)
        self.metrics = metrics or Metrics(
            buckets=config.metrics.latency_buckets,
            sysfs=config.metrics.sysfs,
            queue_depths=self.probes.queue_depths,
        )
        self.ctx = zmq.Context()
        self.models: dict[str, list[Model]] = {}  # name -> instances (ONNX: one shared session)
        self.failed: dict[str, ModelLoadError] = {}
        self.queues: dict[str, ModelQueue] = {}
        self.workers: dict[str, list[Worker]] = {}  # worker threads of thread-served models
        self.pools: dict[str, WorkerPool] = {}  # process-served models
        self.hub: Hub | None = None
        self._old_pools: list[WorkerPool] = []  # retired by a reload, finishing their frames
        self.policies = SourcePolicies(config.sources)
        self.replies = Replies(self.ctx, self.metrics)
        self.transport: Transport | None = None
        self.io_thread: threading.Thread | None = None
        self.http: HttpServer | None = None
        self.ready = threading.Event()
        self._stopped = False
        self._retiring: list[threading.Thread] = []
        self._reload_lock = threading.Lock()
        self.status_path = reload_status_path(os.getpid())  # each reload's verdict, for `inferd reload`
        self.auth: Authenticator | None = None
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)

    # ---- models ------------------------------------------------------------------------------

    def _load(self, cfgs: list[ModelConfig], base_dir: Path, runtime_level: str) -> dict[str, list[Model]]:
        """Load and warm `cfgs` (with their instances). Failures go to self.failed; a required
        one raises after closing whatever this call loaded."""
        loaded: dict[str, list[Model]] = {}
        failed: dict[str, ModelLoadError] = {}
        for cfg in cfgs:
            self.notifier.status(f"loading model {cfg.name}")
            self.notifier.extend_timeout(LOAD_TIMEOUT_S)
            try:
                if cfg.in_processes:  # loaded by its worker processes only (_serve starts them)
                    loaded[cfg.name] = [RemoteModel(cfg, resolve_path(cfg.path, base_dir))]
                else:
                    loaded[cfg.name] = load_instances(cfg, base_dir, runtime_level)
            except ModelLoadError as e:
                log_failure(cfg, e)
                failed[cfg.name] = e
                if cfg.required:
                    close_all(loaded)
                    raise
        self.failed.update(failed)
        return loaded

    def _serve(
        self, name: str, instances: list[Model], base_dir: Path
    ) -> tuple[ModelQueue, list[Worker] | WorkerPool]:
        """A queue and its (not yet started) worker threads, or its worker processes (started:
        raises ModelLoadError when one cannot load the model)."""
        model = instances[0]
        if model.cfg.in_processes:
            q = ModelQueue(name, self.policies, self._dropped(name))  # the IO thread takes, and retries
            if self.hub is None:
                self.hub = Hub(self.metrics)
            pool = WorkerPool(
                model, q, self.replies, self.metrics, self.policies, self._worker_spec(base_dir),
                self.config.service.hang_after_s,
            )  # fmt: skip
            self.notifier.extend_timeout(LOAD_TIMEOUT_S)
            pool.start()
            self.metrics.model_up(model)
            return q, pool
        q = ModelQueue(name, self.policies, self._dropped(name), on_room=self.replies.wake)
        workers = [
            Worker(m, q, self.replies, self.metrics, self.policies, i) for i, m in enumerate(instances)
        ]
        self.metrics.model_up(model)
        return q, workers

    def _worker_spec(self, base_dir: Path) -> dict:
        """What every worker process is told besides its model (engine/child.py)."""
        return {
            "base_dir": str(base_dir),
            "runtime_level": self.config.logging.runtime_level,
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
            "buckets": list(self.config.metrics.latency_buckets or []),
        }

    def _not_served(self, name: str, instances: list[Model], error: ModelLoadError) -> None:
        """A model whose worker processes could not load it: failed like a model that did not load."""
        cfg = instances[0].cfg
        close_all({name: instances})
        self.models.pop(name, None)
        log_failure(cfg, error)
        if cfg.required:
            raise error
        self.failed[name] = error
        self.metrics.model_loaded.labels(name).set(0)

    def _keep(self, name: str, served: list[Worker] | WorkerPool) -> None:
        if isinstance(served, WorkerPool):
            self.pools[name] = served
        else:
            self.workers[name] = served

    # ---- start -------------------------------------------------------------------------------

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
        # Workers hand the GIL back after each inference; with the default 5 ms switch interval a
        # busy IO thread would keep them waiting that long for it (measured: benchmarks/overhead).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        live_app = None
        if self.config.metrics.live_view:  # outputs/live.py, docs/live-view.md
            self.replies.live = LiveView(self.config.metrics.live_fps, self.config.models)
            live_app = live_routes(self.replies.live)
        if self.config.metrics.listen:
            self.http = HttpServer(
                self.config.metrics.listen, self.metrics.registry, self.health, self.readiness,
                self.config.security.http, live_app,
            )  # fmt: skip
        self.models = self._load(self.config.models, self.base_dir, self.config.logging.runtime_level)
        for name in self.failed:
            self.metrics.model_loaded.labels(name).set(0)
        if self.failed:
            log.warning("running degraded: optional model(s) not loaded: %s", ", ".join(sorted(self.failed)))
        for name, instances in list(self.models.items()):
            try:
                self.queues[name], served = self._serve(name, instances, self.base_dir)
            except ModelLoadError as e:
                self._not_served(name, instances, e)
                continue
            self._keep(name, served)
        dispatcher = Dispatcher(self.config, self.queues, self.replies, self.policies)
        if needs_auth(self.config):
            self.start_auth()
        self.transport = Transport(self.ctx, self.config, dispatcher, self.replies, self.metrics, self.auth)
        self.transport.hub = self.hub
        self.metrics.before_collect = self.probes.sync_workers
        self.metrics.worker_pids = self.probes.worker_pids
        for pool in self.pools.values():
            self.hub.add(pool)
        self.transport.bind()
        if self.config.mqtt is not None:
            self.replies.sink = self._mqtt(self.config)
            self.replies.sink.start()
        for workers in self.workers.values():
            for w in workers:
                w.start()
        self.io_thread = threading.Thread(target=self.transport.run, name="io", daemon=True)
        self.io_thread.start()
        self.ready.set()
        self.notifier.ready(self.status_line())
        log.info(
            "ready: %d model(s), %d endpoint(s), results on %s",
            len(self.models), len(self.config.endpoints), self.config.results.bind or "(none)",
        )  # fmt: skip
        for problem in reachability_problems(self.config):
            log.warning("%s", problem)

    def _mqtt(self, config: Config):
        """The MQTT sink for `config.mqtt`, not started: building it reads the password and TLS
        files, so a broken section fails here (a reload then keeps everything as it was)."""
        from inferd.outputs.homeassistant import Discovery
        from inferd.outputs.mqtt import MqttSink

        sink = MqttSink(config.mqtt, self.metrics, raw_models(config))
        if config.mqtt.home_assistant is not None:
            models = {m.name for m in config.models}
            sink.discovery = Discovery(
                sink.client, config.mqtt, sink.status_topic, models, zone_layout(config)
            )
        return sink

    def start_auth(self) -> None:
        """The ZAP authenticator thread (CURVE keys and address allowlists)."""
        if self.auth is None:
            self.auth = Authenticator(self.ctx, on_denied=self.metrics.connections_refused_inc)
            self.auth.start()

    # ---- reload ------------------------------------------------------------------------------

    def reload(self, path: Path | None = None) -> bool:
        """Re-read the config; load changed models beside the running ones, then swap atomically.

        Unchanged models keep their queues, workers and sessions; in-flight and queued frames of a
        replaced model finish on it. Sockets that did not change stay bound. Anything failing
        leaves the running set untouched. Returns whether the new config is now serving.
        """
        path = path or self.config_path
        with self._reload_lock:
            started = time.monotonic()
            self.notifier.reloading()
            log.info("reloading %s", path)
            try:
                self._reload(path)
            except (InferdError, OSError, TimeoutError) as e:
                log.error("reload failed, still serving the previous config: %s", e)
                self.metrics.config_reloads.labels("failed").inc()
                write_reload_status(
                    self.status_path, started, False, f"{e}; still serving the previous config"
                )
                self.notifier.ready(f"{self.status_line()}; last reload failed")
                return False
            self.metrics.config_reloads.labels("ok").inc()
            write_reload_status(self.status_path, started, True, self.status_line())
            self.notifier.ready(self.status_line())
            log.info("reloaded: %s", self.status_line())
            return True

    def _reload(self, path: Path | None) -> None:
        if path is None:
            raise InferdError("no config file to reload from")
        config, base_dir = load_config(path)
        old_config = self.config
        # a new MQTT connection is built (not started) first: a broken section fails the reload
        sink = self._mqtt(config) if config.mqtt is not None and config.mqtt != old_config.mqtt else None
        old = {m.name: m for m in self.config.models}
        keep, fresh = [], []
        for cfg in config.models:
            running = self.models.get(cfg.name)
            if (
                running
                and old.get(cfg.name) == cfg
                and base_dir == self.base_dir
                and _same_file(running[0], base_dir)
            ):
                keep.append(cfg.name)
            else:
                fresh.append(cfg)
        previous_failed, self.failed = self.failed, {}
        try:
            loaded = self._load(fresh, base_dir, config.logging.runtime_level)
        except ModelLoadError:
            self.failed = previous_failed
            raise
        self.policies.update(config.sources)
        queues = {name: self.queues[name] for name in keep}
        new_workers: dict[str, list[Worker]] = {}
        new_pools: dict[str, WorkerPool] = {}
        try:
            for name, instances in list(loaded.items()):
                try:
                    queues[name], served = self._serve(name, instances, base_dir)
                except ModelLoadError as e:  # its worker processes could not load it
                    if instances[0].cfg.required:
                        raise
                    log_failure(instances[0].cfg, e)
                    self.failed[name] = e
                    del loaded[name]
                    continue
                if isinstance(served, WorkerPool):
                    new_pools[name] = served
                else:
                    new_workers[name] = served
        except ModelLoadError:
            for pool in new_pools.values():
                pool.close()
            close_all(loaded)
            self.failed = previous_failed
            raise
        hub = self.hub

        def swap() -> list[str]:
            added = self.transport.reconfigure(config, dispatcher)
            self.transport.hub = hub
            for pool in new_pools.values():
                hub.add(pool)
            return added

        dispatcher = Dispatcher(config, queues, self.replies, self.policies)
        if needs_auth(config):
            self.start_auth()
            self.transport.auth = self.auth
        try:
            added = self.transport.call(swap)
        except (OSError, TimeoutError):
            for workers in new_workers.values():
                for w in workers:
                    w.queue.close()
            for pool in new_pools.values():
                pool.close()
            close_all(loaded)
            self.failed = previous_failed
            raise
        # swapped: frames now go to `queues`; retire what was replaced or removed
        retired = {n: q for n, q in self.queues.items() if queues.get(n) is not q}
        old_models = {n: self.models[n] for n in retired if n in self.models}
        old_workers = {n: self.workers.pop(n, []) for n in retired}
        old_pools = {n: self.pools.pop(n) for n in retired if n in self.pools}
        self.workers.update(new_workers)
        self.pools.update(new_pools)
        for workers in new_workers.values():
            for w in workers:
                w.start()
        self.models = {n: self.models[n] for n in keep} | loaded
        if self.replies.live is not None:
            self.replies.live.configure(config.models)
        self.queues, self.config, self.base_dir, self.config_path = queues, config, base_dir, path
        for name in retired:
            if name not in queues:
                self.metrics.forget_model(name)
            else:
                self.metrics.forget_tracks(name)
        for name in self.failed:
            self.metrics.model_loaded.labels(name).set(0)
        if added:
            log.info("new endpoints: %s", ", ".join(added))
        self._reload_mqtt(old_config, config, set(retired) - set(queues), sink, set(retired) & set(queues))
        self._retire(retired, old_workers, old_models, old_pools)

    def _reload_mqtt(self, old: Config, new: Config, removed: set[str], fresh, replaced: set[str]) -> None:
        """Entities of removed models leave Home Assistant, replaced ones are announced again (their
        zones may have changed) at their next result; a changed `mqtt:` section reconnects
        (models and sockets untouched): the old connection says `offline` and closes before the
        new one connects (same client id: the broker would otherwise cut one of them off)."""
        sink = self.replies.sink
        if sink is not None:
            if sink.discovery is not None:
                sink.discovery.remove(removed)
                sink.discovery.configure({m.name for m in new.models}, zone_layout(new), replaced)
            sink.raw_models = raw_models(new)
        if old.mqtt == new.mqtt:
            return
        self.replies.sink = None
        if sink is not None:
            sink.stop()
        if fresh is not None:
            fresh.start()
            self.replies.sink = fresh
            log.info("mqtt: now publishing to %s", new.mqtt.broker)

    def _retire(self, queues: dict[str, ModelQueue], workers: dict, models: dict, pools: dict) -> None:
        """Let replaced models finish their queued frames in the background, then close them."""
        for q in queues.values():
            q.close()

        def wait() -> None:
            for ws in workers.values():
                for w in ws:
                    w.join()
            for pool in pools.values():
                self._old_pools.append(pool)
                pool.join(None)
                if self.transport is not None and not self.transport.stopped.is_set():
                    with contextlib.suppress(TimeoutError):
                        self.transport.call(lambda p=pool: self.hub.remove(p))
                pool.close()
            close_all(models)
            log.info("retired model(s): %s", ", ".join(sorted(queues)) or "-")

        t = threading.Thread(target=wait, name="retire", daemon=True)
        t.start()
        self._retiring.append(t)

    # ---- health: service/probes.py ----------------------------------------------------------

    def health(self) -> tuple[bool, dict]:
        return self.probes.health()

    def readiness(self) -> tuple[bool, dict]:
        return self.probes.readiness()

    def all_workers(self) -> list:
        return self.probes.workers()

    def status_line(self) -> str:
        text = f"serving {len(self.models)} model(s)"
        if self.failed:
            text += f", degraded: {', '.join(sorted(self.failed))} not loaded"
        return text

    def _dropped(self, model: str):
        return lambda frame, reason: self.replies.drop(frame, model, reason)

    # ---- stop --------------------------------------------------------------------------------

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, serve what is queued within `drain_timeout`, answer the rest, close.

        Safe to call on a daemon that only partly started, and more than once.
        """
        if self._stopped:
            return
        self._stopped = True
        if drain_timeout is None:
            drain_timeout = self.config.service.drain_timeout_s
        self.ready.clear()
        if self.transport is not None:  # first: once "stopping" is said, what arrives is refused
            self.transport.stop_accepting()
        self.notifier.stopping(f"stopping: draining queues (up to {drain_timeout:g} s)")
        log.info("stopping: draining queues (up to %.1f s)", drain_timeout)
        for q in self.queues.values():
            q.close()
        deadline = time.monotonic() + drain_timeout
        threads = [w for ws in self.workers.values() for w in ws]
        pools = [*self.pools.values(), *self._old_pools]
        for w in threads:
            if w.ident is not None:
                w.join(max(0.0, deadline - time.monotonic()))
        for pool in pools:
            pool.join(max(0.0, deadline - time.monotonic()))
        for name, q in self.queues.items():
            for frame, reason in q.remove_if(lambda f: "shutdown"):
                self.replies.drop(frame, name, reason)
        for w in threads:  # still inside an inference after the drain time: answer now
            frames = w.current
            if w.is_alive() and frames:
                w.abandoned = True
                for frame in frames:
                    self.replies.drop(frame, w.model.name, "shutdown")
        if pools and self.io_thread is not None and self.io_thread.is_alive():
            try:  # what worker processes still hold is answered by the IO thread, which owns them
                self.transport.call(lambda: [p.abandon() for p in pools])
            except TimeoutError:
                log.warning("the IO thread did not answer; frames held by worker processes are lost")
        self.replies.release()  # this thread's socket: the shutdown answers above are in the outbox
        if self.transport is not None:
            self.transport.close()
            if self.io_thread is not None:
                self.io_thread.join(5.0)
            self.transport.close_sockets()
        for pool in pools:
            pool.close()
            pool.drained.set()  # a retiring pool's thread stops waiting
        if self.hub is not None:
            self.hub.close()
        if self.replies.sink is not None:
            self.replies.sink.stop()
            self.replies.sink = None
        if self.http is not None:
            self.http.shutdown()
            self.http = None
        if self.auth is not None:
            self.auth.stop()
        self.status_path.unlink(missing_ok=True)
        for t in self._retiring:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = {w.model.name for w in self.all_workers() if w.is_alive()}
        if busy:
            # a session cannot be freed under a running inference: leave it to process exit
            log.warning("stopped with model(s) still inside an inference: %s", ", ".join(sorted(busy)))
            close_all({n: m for n, m in self.models.items() if n not in busy})
        else:
            close_all(self.models)
            self.ctx.destroy(linger=0)
        log.info("stopped")

    @property
    def busy(self) -> bool:
        """True when a worker thread is still inside an inference (after stop: exit without cleanup)."""
        return any(w.is_alive() for ws in self.workers.values() for w in ws)


def reachability_problems(config: Config) -> list[str]:
    """What makes a config that loads fine useless: no way in, or streamed results with no way out."""
    if not config.endpoints:
        return [
            "no endpoints: nothing can send frames to this inferd; add an `endpoints:` list "
            "(router for requests, pull or sub for streams; see examples/inferd.yaml)"
        ]
    streams = [ep.type for ep in config.endpoints if ep.type in ("pull", "sub")]
    if streams and not config.results.bind:
        return [
            f"{streams[0]} endpoint(s) but no results.bind: results of streamed frames are published "
            "nowhere (only router requests get answers); set results.bind"
        ]
    return []


def needs_auth(config: Config) -> bool:
    socks = [*config.endpoints, config.results]
    return any(s.curve or s.allow_ips is not None for s in socks)


def _same_file(model: Model, base_dir: Path) -> bool:
    """True when the model file on disk is still the one that is loaded."""
    path = resolve_path(model.cfg.path, base_dir)
    try:
        return path == model.path and file_sha256(path) == model.sha256
    except OSError:
        return False


def close_all(models: dict[str, list[Model]]) -> None:
    for instances in models.values():
        for m in {id(x): x for x in instances}.values():
            m.close()
