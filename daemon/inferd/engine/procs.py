"""Worker processes as the daemon sees them: spawn, feed, answer, restart (the IO thread's side).

A model served by processes has a `WorkerPool`: its queue (pipeline.ModelQueue, unchanged: the
same policies, drops and fairness as for threads) and one `WorkerProcess` per instance. The IO
thread feeds them (`pump`: a frame taken from the queue goes into a free slot of a worker with room,
and a small message tells the worker where), forwards their answers (`Hub.read`), and restarts
the ones that died (`Hub.sweep`). Everything here runs on the IO thread, except `start` (the
thread that loads models, before the pool is handed to the IO thread) and `join`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from itertools import count
from pathlib import Path

import zmq

from inferd.engine import messages as m
from inferd.engine.channel import Channel, pair
from inferd.engine.pipeline import Frame, ModelQueue
from inferd.engine.slots import Slot
from inferd.engine.tally import apply
from inferd.errors import ModelLoadError

log = logging.getLogger("inferd.workers")
START_TIMEOUT_S = 120.0
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # restart delays after quick deaths in a row
STABLE_S = 30.0  # a worker that ran this long before dying starts the backoff over
SILENT_S = 5.0  # an idle worker beats every second (child.py): this long without a word, it is stopped
_tokens = count(1)
_lives = count(1)  # a worker's identity (its name in logs and syncs) is new for each process


class RemoteModel:
    """A model its worker processes load: the daemon itself loads nothing (no runtime imported,
    no second session); what /readyz, the metrics and a reload need comes from the first
    worker's ready line (`describe()`, file digest, load time)."""

    def __init__(self, cfg, path: Path) -> None:
        self.cfg, self.name, self.path = cfg, cfg.name, path
        self.sha256: str | None = None
        self.info: dict = {"name": cfg.name, "path": str(path)}
        self.load_seconds = 0.0

    def described(self, answer: dict) -> None:
        self.info = answer.get("describe") or self.info
        self.sha256 = self.info.get("sha256")
        self.load_seconds = float(self.info.get("load_seconds") or 0.0)

    def describe(self) -> dict:
        return self.info

    def keeps_state(self) -> bool:
        """Whether results depend on the source's earlier frames (smoothing, tracking): then one worker
        process serves all of a source's frames."""
        post = self.cfg.postprocess
        return getattr(post, "smooth", None) is not None or getattr(post, "track", None) is not None

    def close(self) -> None:
        pass


class WorkerProcess:
    """One instance in its own process. Looks like a pipeline.Worker to the daemon's health and stop."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.model, self.queue = pool.model, pool.queue
        self.name = f"worker-{pool.name}-{index}"
        self.slots = [Slot(f"inferd-{pool.name}-{index}-{i}") for i in range(pool.depth)]
        self.free = list(range(pool.depth))
        self.inflight: dict[int, tuple[Frame, int, float]] = {}  # token -> frame, slot, sent at
        self.proc: subprocess.Popen | None = None
        self.identity = b""
        self.channel: Channel | None = None  # frames out, answers in (channel.py)
        self.tally: Channel | None = None  # the tally thread's line: counts and heartbeats
        self.connected = False  # its hello arrived: frames can be sent
        self.started = 0.0
        self.deaths = 0  # quick deaths in a row
        self.restart_at: float | None = None
        self.abandoned = False
        self.hung: str | None = None  # why the pool killed it, until it is seen dead
        self.last_progress = time.monotonic()

    # what the daemon's health() and stop() read
    @property
    def busy_since(self) -> float | None:
        return min((sent for _, _, sent in list(self.inflight.values())), default=None)

    @property
    def current(self) -> list[Frame]:
        return [frame for frame, _, _ in list(self.inflight.values())]

    @property
    def ident(self) -> int | None:
        """The pid while the process runs (one that died is the pool's to restart, not a problem)."""
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def loading(self) -> bool:
        """Started and not yet said hello: loading its model (slow boards, big models: not a stall)."""
        return not self.connected and self.is_alive()

    def spawn(self) -> int:
        """Start the process; the read end of its ready pipe."""
        self.identity = f"{self.name}.{next(_lives)}".encode()
        self.connected = False
        read_fd, write_fd = os.pipe()
        (ours, theirs), (tally_ours, tally_theirs) = pair(), pair()
        spec = dict(self.pool.spec, index=self.index, identity=self.identity.decode(),
                    slots=[s.fd for s in self.slots], ready_fd=write_fd,
                    channel=theirs.fileno(), tally=tally_theirs.fileno())  # fmt: skip
        env = dict(os.environ, INFERD_WORKER=json.dumps(spec))
        try:
            self.proc = subprocess.Popen(
                # the model's name is only for ps/top: which process serves what
                [sys.executable, "-m", "inferd.engine.child", self.pool.name, str(self.index)],
                env=env, close_fds=True, stdin=subprocess.DEVNULL,
                pass_fds=(write_fd, theirs.fileno(), tally_theirs.fileno(), *(s.fd for s in self.slots)),
            )  # fmt: skip
        except BaseException:
            ours.close()
            tally_ours.close()
            raise
        finally:
            os.close(write_fd)
            theirs.close()
            tally_theirs.close()
        self.channel, self.tally = Channel(ours, blocking=False), Channel(tally_ours, blocking=False)
        self.started = time.monotonic()
        if self.pool.hub is not None:  # a restart: the hub reads it from now on
            self.pool.hub.watch(self)
        return read_fd

    @property
    def lines(self) -> list[tuple[Channel, bool]]:
        """Its open lines to the daemon: (line, whether it is the tally's)."""
        pairs = ((self.channel, False), (self.tally, True))
        return [(line, tally) for line, tally in pairs if line is not None]

    def close_lines(self) -> None:
        for line, _ in self.lines:
            if self.pool.hub is not None:
                self.pool.hub.unwatch(line)
            line.close()
        self.channel = self.tally = None

    def send(self, frame: Frame, how: int, header: bytes) -> None:
        slot = self.free.pop()
        spans = self.slots[slot].write(frame.payloads)
        token = next(_tokens)
        max_age = self.pool.policies(frame.source).max_age_ms
        data = m.pack_frame(
            token, frame.received, frame.received_wall, -1 if max_age is None else int(max_age),
            -1 if frame.max_elements is None else frame.max_elements, slot, how, spans, header,
        )  # fmt: skip
        self.inflight[token] = (frame, slot, time.monotonic())
        self.channel.send([data])

    def done(self, token: int) -> Frame | None:
        entry = self.inflight.pop(token, None)
        if entry is None:
            return None  # answered already (shutdown, or the worker was declared dead)
        self.free.append(entry[1])
        self.last_progress = time.monotonic()
        return entry[0]

    def close(self) -> None:
        """Kill the process (it holds nothing unanswered by now) and free the slots."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10.0)
        self.close_lines()
        for slot in self.slots:
            slot.close()
        self.slots = []


class WorkerPool:
    """One model's worker processes and their queue."""

    def __init__(
        self, model, queue: ModelQueue, replies, metrics, policies, spec: dict, hang_after: float = 30.0
    ) -> None:
        self.model, self.name, self.queue = model, model.name, queue
        self.hang_after = hang_after  # service.hang_after_s: a worker this long in one inference is killed
        self.replies, self.metrics, self.policies = replies, metrics, policies
        cfg = model.cfg
        # a worker holds one batch, plus one frame of a `fifo` source waiting for it (so it never
        # waits for the IO thread between frames). A `latest` frame waits in the model's queue until
        # a worker is free, where a newer frame can still replace it (docs/architecture.md)
        self.batch = cfg.batching.max_batch
        self.depth = self.batch + 1
        self.stateful = model.keeps_state()
        self.owner: dict[str, WorkerProcess] = {}  # source -> its worker (stateful models only)
        self.spec = dict(spec, model=cfg.model_dump(mode="json"))
        self.hub: Hub | None = None  # set when the hub reads this pool's workers (Hub.add)
        self.workers = [WorkerProcess(self, i) for i in range(cfg.instances)]
        self.restarts = metrics.worker_restarts.labels(self.name)
        self.stopping = False
        self.drained = threading.Event()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Spawn every worker and wait until each loaded its model (any thread but the IO thread)."""
        pipes = {w.spawn(): w for w in self.workers}
        try:
            answers = _wait_ready(pipes, time.monotonic() + timeout, self.name)
        except ModelLoadError:
            self.close()
            raise
        self.model.described(answers[0])
        log.info("model %s: %d worker process(es) ready (pids %s)", self.name, len(self.workers),
                 ", ".join(str(w.ident) for w in self.workers))  # fmt: skip

    # ---- IO thread ---------------------------------------------------------------------------

    def pump(self) -> None:
        """Hand queued frames to workers with room: first up to a batch each, then one `fifo` frame
        ahead to workers that are busy (only when every worker has its batch)."""
        queue, policies, batch = self.queue, self.policies, self.batch
        owner = self.owner if self.stateful else None
        for ahead in (False, True):
            for w in self.workers:
                if not queue.size:
                    break
                if not w.connected or not w.free:
                    continue
                while w.free and (ahead or len(w.inflight) < batch):

                    def accept(source: str, w=w, ahead=ahead) -> bool:
                        if ahead and policies(source).policy != "fifo":
                            return False
                        return owner is None or owner.setdefault(source, w) is w

                    frame = queue.take_nowait(accept if ahead or owner is not None else None)
                    if frame is None:
                        break
                    self._send(w, frame)
        if queue.closed and not queue.size and not any(w.inflight for w in self.workers):
            self.drained.set()

    def waiting(self) -> list[str]:
        """Any thread: the sources of frames sent ahead, waiting in a worker for its batch to end."""
        out = []
        for w in self.workers:
            held = list(w.inflight.values())
            out += [frame.source for frame, _, _ in held[self.batch :]]
        return out

    def _send(self, w: WorkerProcess, frame: Frame) -> None:
        if frame.codec is not None:
            how, header = m.FRIGATE, json.dumps(frame.header.to_json()).encode()
        else:
            how = m.STREAM if frame.reply_to is None else m.ROUTER
            header = frame.raw_header
            header = header.bytes if isinstance(header, zmq.Frame) else bytes(header)
        try:
            w.send(frame, how, header)
        except OSError as e:  # the worker went away between its death and our noticing (it holds
            log.debug("worker %s unreachable: %s", w.name, e)  # the frame: answered when seen dead)

    def answer(self, w: WorkerProcess, kind: bytes, token: int, parts: list) -> None:
        frame = w.done(token)
        if frame is None:
            return
        replies = self.replies
        if kind == m.RESULT:
            replies.forward_result(frame, self.name, parts)
        elif kind == m.REPLY:
            if replies.live is not None and frame.codec is None:
                replies.live.offer_wire(self.name, frame, parts[0], parts[1:])
            replies.send_parts(frame.reply_to, parts)
        else:
            reason, message = parts[0].decode(), parts[1].decode()
            if kind == m.DROP:
                replies.drop(frame, self.name, reason)
            elif kind == m.REJECT:
                replies.reject(frame, self.name, reason, message)
            else:
                replies.error(frame, self.name, reason, message)

    def died(self, w: WorkerProcess, now: float) -> None:
        """A worker's process ended: answer what it held, free its sources, plan its restart."""
        code = w.proc.returncode if w.proc is not None else None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        reason, message = "worker_died", f"worker process died ({how})"
        if w.hung is not None:
            reason, message, how = "worker_hung", f"worker process killed: {w.hung}", w.hung
        w.hung = None
        if self.hub is not None:  # what it said before it died still counts
            self.hub.drain(w)
        w.close_lines()
        held = list(w.inflight)
        for token in held:
            frame = w.done(token)
            if frame is not None:
                self.replies.drop(frame, self.name, reason, message)
        for source in [s for s, o in self.owner.items() if o is w]:
            del self.owner[source]
        w.connected, w.proc = False, None
        if self.stopping:
            return
        w.deaths = 1 if now - w.started > STABLE_S else w.deaths + 1
        delay = BACKOFF_S[min(w.deaths, len(BACKOFF_S)) - 1]
        w.restart_at = now + delay
        log.error("model %s: worker process %d %s holding %d frame(s); restarting in %.1f s",
                  self.name, w.index, how, len(held), delay)  # fmt: skip

    def sweep(self, now: float) -> None:
        for w in self.workers:
            if w.proc is not None and w.hung is None and not self.stopping:
                busy = w.busy_since
                if busy is not None and now - busy > self.hang_after:
                    self._kill(w, f"hung in one inference for {now - busy:.1f} s")
                elif busy is None and w.connected and now - w.last_progress > SILENT_S:
                    self._kill(w, f"silent for {now - w.last_progress:.1f} s while idle (stopped?)")
                elif not w.connected and now - w.started > START_TIMEOUT_S:
                    self._kill(w, f"did not load its model within {START_TIMEOUT_S:g} s")
            if w.proc is not None and w.proc.poll() is not None:
                self.died(w, now)
            if w.proc is None and w.restart_at is not None and now >= w.restart_at and not self.stopping:
                w.restart_at = None
                os.close(w.spawn())  # its hello says it is ready; a failed load exits and is seen here
                self.restarts.inc()

    def _kill(self, w: WorkerProcess, why: str) -> None:
        """A hung worker cannot be asked to stop: it is killed, its frames answered when it is gone."""
        log.error("model %s: worker process %d (pid %s) %s: killing it", self.name, w.index, w.ident, why)
        w.hung = why
        with contextlib.suppress(OSError):
            w.proc.kill()

    def abandon(self, reason: str = "shutdown") -> None:
        """Answer every frame the workers hold (stop after the drain time)."""
        for w in self.workers:
            w.abandoned = True
            for token in list(w.inflight):
                frame = w.done(token)
                if frame is not None:
                    self.replies.drop(frame, self.name, reason)

    # ---- any thread --------------------------------------------------------------------------

    def join(self, timeout: float) -> None:
        """Wait until the closed queue is empty and every worker answered what it held."""
        self.drained.wait(timeout)

    def close(self) -> None:
        """Stop the processes (their frames were answered or will be ignored)."""
        self.stopping = True
        for w in self.workers:
            w.close()


class Hub:
    """The daemon's end of the worker processes' lines (channel.py): one epoll set over all of
    them, whose descriptor the IO loop polls with its sockets."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.epoll = select.epoll()
        self.fd = self.epoll.fileno()
        self.pools: list[WorkerPool] = []
        self._lines: dict[int, tuple[WorkerProcess, Channel, bool]] = {}  # fd -> worker, line, tally?
        self._sync = 0  # the last scrape's request for counts (request_sync)
        self._synced: dict[bytes, int] = {}  # worker identity -> the last request it answered
        self._synced_cond = threading.Condition()

    def add(self, pool: WorkerPool) -> None:
        """IO thread (or before it runs): read this pool's workers from now on."""
        self.pools.append(pool)
        pool.hub = self
        for w in pool.workers:
            self.watch(w)

    def remove(self, pool: WorkerPool) -> None:
        if pool in self.pools:
            self.pools.remove(pool)
        for w in pool.workers:
            for line, _ in w.lines:
                self.unwatch(line)

    def watch(self, w: WorkerProcess) -> None:
        for line, tally in w.lines:
            if line.open and line.fileno() not in self._lines:
                self._lines[line.fileno()] = (w, line, tally)
                self.epoll.register(line.fileno(), select.EPOLLIN)

    def unwatch(self, line: Channel) -> None:
        fd = line.fileno()
        if fd >= 0 and self._lines.get(fd, (None, None))[1] is line:
            del self._lines[fd]
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)

    def read(self) -> None:
        """Forward what the workers sent (IO thread)."""
        for fd, _ in self.epoll.poll(0):
            entry = self._lines.get(fd)
            if entry is not None:
                w, line, tally = entry
                if not line.read():  # its process ended (sweep answers what it held)
                    self.unwatch(line)
                self._deliver(w, line, tally)

    def drain(self, w: WorkerProcess) -> None:
        """A worker is dead: take in the answers it sent before it died."""
        for line, tally in w.lines:
            if line.open:
                while line.read() and line.messages:
                    self._deliver(w, line, tally)
                self._deliver(w, line, tally)

    def _deliver(self, w: WorkerProcess, line: Channel, tally: bool) -> None:
        messages = line.messages
        while messages:
            msg = messages.popleft()
            try:
                self._handle(w, msg, tally)
            except Exception:  # a bug here must not end the IO thread: every other frame needs it
                log.exception("model %s: bad message from worker process %d", w.pool.name, w.index)

    def _handle(self, w: WorkerProcess, msg: list, tally: bool) -> None:
        head = msg[0]
        if tally:  # [METRICS sync id, rows]: a scrape's answer or the heartbeat
            sync = m.SYNC_ID.unpack(head)[1]
            apply(self.metrics, json.loads(msg[1]))
            w.last_progress = time.monotonic()
            if sync:
                with self._synced_cond:
                    self._synced[w.identity] = sync
                    self._synced_cond.notify_all()
        elif head == m.HELLO:
            w.connected = True
            w.last_progress = time.monotonic()
        else:
            kind, token = m.TOKEN.unpack(head)
            if kind == m.EVENTS:  # the frame's answer follows
                w.pool.replies.publish([[msg[1], body] for body in msg[2:]])
            else:
                w.pool.answer(w, kind, token, msg[1:])

    def request_sync(self) -> tuple[int, set[bytes]]:
        """IO thread: ask every worker process for its counts now; (the request's id, who was asked)."""
        self._sync += 1
        asked = set()
        live = {w.identity for pool in self.pools for w in pool.workers}
        with self._synced_cond:  # forget the workers that are gone (restarted, retired)
            self._synced = {i: n for i, n in self._synced.items() if i in live}
        for pool in self.pools:
            for w in pool.workers:
                if w.connected and w.is_alive() and w.tally is not None:
                    try:
                        w.tally.send([m.SYNC_ID.pack(m.SYNC, self._sync)])
                    except OSError:  # it is dying: the sweep will see it
                        continue
                    asked.add(w.identity)
        return self._sync, asked

    def wait_sync(self, sync: int, asked: set[bytes], timeout: float) -> bool:
        """Any thread: until every worker asked has answered `sync` (False: one did not in time)."""
        with self._synced_cond:
            return self._synced_cond.wait_for(
                lambda: all(self._synced.get(i, 0) >= sync for i in asked), timeout
            )

    def pump(self) -> None:
        for pool in self.pools:
            if pool.queue.size or pool.queue.closed:
                pool.pump()

    def sweep(self, now: float) -> None:
        for pool in self.pools:
            for w in pool.workers:  # what a full socket refused (rare: the next send flushes too)
                for line, _ in w.lines:
                    if line.backlog:
                        line.flush()
            pool.sweep(now)

    def close(self) -> None:
        self.epoll.close()


def _wait_ready(pipes: dict[int, WorkerProcess], deadline: float, name: str) -> list[dict]:
    """Read each worker's ready line; a ModelLoadError for the first that failed."""
    buffers = {fd: b"" for fd in pipes}
    answers: list[dict] = []
    try:
        while buffers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelLoadError(name, f"worker processes did not load within {START_TIMEOUT_S:g} s")
            readable, _, _ = select.select(list(buffers), [], [], left)
            for fd in readable:
                chunk = os.read(fd, 65536)
                buffers[fd] += chunk
                if chunk and not buffers[fd].endswith(b"\n"):
                    continue
                line = buffers.pop(fd).strip()
                os.close(fd)
                answer = json.loads(line) if line else {"error": "the worker process exited while loading"}
                if "error" in answer:
                    w = pipes[fd]
                    log.error("model %s: worker process %d could not load it", name, w.index)
                    raise ModelLoadError(name, answer["error"])
                answers.append(answer)
    finally:
        for fd in buffers:
            os.close(fd)
    return answers
