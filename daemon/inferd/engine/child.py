"""A worker process: one model instance in its own interpreter (`python -m inferd.engine.child`).

Started by the daemon (procs.py) with its model config in INFERD_WORKER, its slots as inherited
memfds, its two lines to the daemon as inherited sockets (channel.py: frames and answers; counts
and heartbeats) and a pipe to say it loaded. It takes frames from its line, runs them through
the same `Worker.process` as a worker thread (checks, preprocessing, runtime, postprocessing,
result encoding) and sends each frame's answer back; the daemon forwards it and frees the slot.
It ignores SIGTERM/SIGINT/SIGHUP (systemd signals the whole unit: the daemon decides when its
workers stop, after the drain) and ends when its line does (the daemon closed it or died; also
PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from inferd.engine import messages as m
from inferd.engine.channel import Channel
from inferd.engine.pipeline import Frame, Worker
from inferd.engine.slots import SlotReader
from inferd.engine.tally import Tally
from inferd.errors import InferdError
from inferd.ingest.frigate import FrigateCodec
from inferd.outputs.replies import Replies
from inferd.protocol import decode_header, encode_header
from inferd.service.systemd import name_os_thread

log = logging.getLogger("inferd.worker")
BEAT_S = 1.0  # the tally thread says the process is alive this often (the daemon sees a stopped one)


class _Answer:
    """A frame's `reply_to` in a worker: what the frame's answer becomes on the way back."""

    __slots__ = ("out", "token", "topic")

    def __init__(self, token: int, topic: bytes | None, out: list) -> None:
        self.token, self.topic, self.out = token, topic, out

    def reply(self, parts: list) -> None:
        if self.topic is None:
            self.out.append([m.TOKEN.pack(m.REPLY, self.token), *parts])
        else:
            self.out.append([m.TOKEN.pack(m.RESULT, self.token), self.topic, *parts])


class Relay(Replies):
    """Replies that go back to the daemon: results and answers built here, counted there."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(None, tally)

    def _tell(self, kind: bytes, frame: Frame, reason: str, message: str) -> None:
        answer = frame.reply_to[0]
        answer.out.append([m.TOKEN.pack(kind, answer.token), reason.encode(), message.encode()])

    def drop(self, frame: Frame, model: str, reason: str) -> None:
        self._tell(m.DROP, frame, reason, "")

    def reject(self, frame: Frame, model: str, reason: str, message: str) -> None:
        self._tell(m.REJECT, frame, reason, message)

    def error(self, frame: Frame, model: str, reason: str, message: str) -> None:
        self._tell(m.ERROR, frame, reason, message)

    def events(self, frame: Frame, model: str, events: list[dict]) -> None:
        answer = frame.reply_to[0]
        topic = f"events/{model}/{frame.source}".encode()
        answer.out.append([m.TOKEN.pack(m.EVENTS, answer.token), topic, *map(encode_header, events)])

    def release(self) -> None:
        pass


class _Policy:
    __slots__ = ("max_age_ms",)

    def __init__(self) -> None:
        self.max_age_ms: float | None = None


class _Policies:
    """The daemon sends each frame's max_age_ms with it (its `sources:` may change on reload)."""

    def __init__(self) -> None:
        self.policy = _Policy()

    def __call__(self, source: str) -> _Policy:
        return self.policy


class Child:
    def __init__(self, spec: dict, model) -> None:
        self.model, self.name = model, model.name
        self.tally = Tally(spec.get("buckets"))
        self.relay = Relay(self.tally)
        self.policies = _Policies()
        self.worker = Worker(model, None, self.relay, self.tally, self.policies, spec["index"])
        self.slots = [SlotReader(fd) for fd in spec["slots"]]
        self.codec = FrigateCodec()
        self.out: list[list] = []
        self.line = Channel(socket.socket(fileno=spec["channel"]), blocking=True)
        self.line.send([m.HELLO])
        self.tally_line = Channel(socket.socket(fileno=spec["tally"]), blocking=True)
        self.tally_thread = threading.Thread(target=self._tally, name="tally", daemon=True)
        self.stopping = threading.Event()
        self.tally_thread.start()

    def _tally(self) -> None:
        """The tally thread: the counts when the daemon asks (a scrape), and every second (the
        heartbeat that says this process is alive, inference or not)."""
        name_os_thread(f"tally:{self.name}")
        line = self.tally_line
        while not self.stopping.is_set():
            sync = 0
            if line.wait(BEAT_S):
                msg = line.recv()
                if msg is None:  # the daemon is gone
                    return
                sync = m.SYNC_ID.unpack(msg[0][: m.SYNC_ID.size])[1]
            if not self.flush(sync):
                return

    def flush(self, sync: int = 0) -> bool:
        """Send the counts since the last flush; False when the daemon is gone."""
        rows = self.tally.drain()
        try:
            self.tally_line.send([m.SYNC_ID.pack(m.METRICS, sync), json.dumps(rows).encode()])
        except OSError:
            return False
        return True

    def frame(self, msg: list) -> Frame:
        token, received, wall, max_age, max_elements, slot, how, spans, raw = m.unpack_frame(msg[0])
        header = decode_header(raw)
        if slot >= 0:
            buf = self.slots[slot].buffer(max((o + n for o, n in spans), default=0))
            payloads = [buf[o : o + n] for o, n in spans]
        else:
            payloads = [memoryview(p) for p in msg[1:]]
        topic = f"{self.name}/{header.source}".encode() if how == m.STREAM else None
        frame = Frame(
            header, payloads, received, wall, (_Answer(token, topic, self.out), []),
            max_elements if max_elements >= 0 else None,
        )  # fmt: skip
        if how == m.FRIGATE:
            frame.codec = self.codec
        self.policies.policy.max_age_ms = max_age if max_age >= 0 else None
        return frame

    def run(self) -> None:
        line, batch = self.line, self.worker.max_batch
        delay = self.worker.max_delay
        stop = False
        while not stop:
            msg = line.recv()
            if msg is None:  # the daemon closed the line (or died): nothing more will come
                break
            frames = [self.frame(msg)]
            end = time.monotonic() + delay
            while len(frames) < batch and line.wait(max(0.0, end - time.monotonic())):
                msg = line.recv()
                if msg is None:
                    stop = True
                    break
                frames.append(self.frame(msg))
            self.serve(frames)
        self.stopping.set()
        self.tally_thread.join(BEAT_S * 2)
        self.flush()
        self.line.close()
        self.tally_line.close()

    def serve(self, frames: list[Frame]) -> None:
        self.worker.current = frames
        # frames held here already count against this process's policy: one per frame in turn
        try:
            self.worker.process(frames)
        except Exception:  # a bug must not kill the worker; the frames still get an answer
            log.exception("model %s: unexpected error on %d frame(s)", self.name, len(frames))
            answered = {int.from_bytes(a[0][1:9], "little") for a in self.out if a[0][:1] != m.EVENTS}
            for frame in frames:
                if frame.reply_to[0].token not in answered:
                    self.relay.error(frame, self.name, "internal", "internal error, see the daemon log")
        self.worker.current = []
        out, self.out[:] = list(self.out), []
        try:
            for parts in out:  # one system call each, the tensors gathered from where they are
                self.line.send(parts)
        except OSError:  # the daemon is gone: the next read ends the loop
            log.debug("model %s: the daemon closed the line", self.name)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        sys.exit(1)


def _tell(fd: int, what: dict) -> bool:
    """The ready line to the daemon, which reads it at start-up (a restarted worker's pipe is
    closed: its hello is what counts). False when nobody read it."""
    try:
        with os.fdopen(fd, "w") as ready:
            ready.write(json.dumps(what) + "\n")
    except OSError:
        return False
    return True


def main() -> int:
    spec = json.loads(os.environ.pop("INFERD_WORKER"))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    from inferd.config import ModelConfig
    from inferd.engine.models import load_model
    from inferd.service.logs import setup_logging

    setup_logging(spec.get("log_level", "info"))
    if spec["index"] > 0:  # an accelerator's fallback warning is the same for each instance: once
        for name in ("inferd.runtime.onnxruntime", "inferd.runtime.litert"):
            logging.getLogger(name).addFilter(lambda r: "(fallback: cpu)" not in r.getMessage())
    try:
        cfg = ModelConfig.model_validate(spec["model"])
        model = load_model(cfg, Path(spec["base_dir"]), spec.get("runtime_level", "warning"))
    except (InferdError, OSError, ValueError) as e:
        if not _tell(spec["ready_fd"], {"error": str(e).removeprefix(f"model {spec['model']['name']!r}: ")}):
            log.error("worker process %d: %s", spec["index"], e)  # a restart: nobody reads the pipe
        return 1
    name_os_thread(f"inferd:{cfg.name}")
    child = Child(spec, model)
    _tell(spec["ready_fd"], {"ok": True, "pid": os.getpid(), "describe": model.describe()})
    child.run()
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
