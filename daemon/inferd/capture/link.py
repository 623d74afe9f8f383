"""The way from capture to inferd, and what capture says about it.

A `pull` endpoint gets frames over PUSH with ZMQ_IMMEDIATE (nothing is queued for an inferd that
is not connected: the newest frame waits, older ones are dropped as stale at the source); a
`router` endpoint gets one request at a time and answers each. Either way the link never blocks
longer than a stop request takes to notice (0.1 s), says once when nothing answers at the address
(and why: the host did not resolve, nothing listens, no socket file), says when frames flow again,
and logs inferd's refusals of router requests at a bounded rate with its reason and message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from urllib.parse import urlsplit

import zmq

from inferd.capture.config import CaptureConfig
from inferd.capture.metrics import CaptureMetrics
from inferd.capture.sources import reach
from inferd.client import FramePublisher, InferClient
from inferd.errors import RequestError, RequestTimeout
from inferd.ingest.ipc import ipc_listener

log = logging.getLogger("inferd.capture")

WAIT_SAY_S = 5.0  # nothing taken or answered this long: say so (once per outage)
REFUSAL_LOG_S = 10.0  # at most one line per refusal reason this often
ANSWER_TIMEOUT_S = 5.0  # a router request unanswered this long counts as `no_answer`


def probe(address: str, timeout: float = 2.0) -> str | None:
    """Why nothing takes frames at a tcp:// or ipc:// address, in words a user can act on; None
    when something accepts connections there."""
    if address.startswith("ipc://"):
        path = address[len("ipc://") :]
        if path.startswith("@"):
            return "nothing listens on that abstract socket"
        if not os.path.exists(path):
            return f"no socket file {path} (is inferd running with that endpoint?)"
        if ipc_listener(path) is None:
            return f"nothing listens on {path} (a stale socket file?)"
        return None
    parts = urlsplit(address)
    return reach(parts.hostname or "", parts.port or 0, timeout)


class Link:
    def __init__(self, cfg: CaptureConfig, metrics: CaptureMetrics, stop: threading.Event) -> None:
        self.cfg, self.metrics, self.stop = cfg, metrics, stop
        self.client: InferClient | None = None
        self.publisher: FramePublisher | None = None
        if cfg.to_type == "router":
            self.client = InferClient(cfg.to, source=cfg.source, timeout=ANSWER_TIMEOUT_S)
        else:
            self.publisher = FramePublisher(cfg.to, source=cfg.source, immediate=True)
        self.accepted = 0  # frames inferd took (pull) or answered ok (router)
        self.refused: dict[str, int] = {}  # router: inferd's refusals by reason
        self.last_refusal = ""  # its words, for the summary
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last logged, suppressed since)
        self._waiting_since: float | None = None
        self._said_waiting = False

    def deliver(self, frame, seq: int, wall: float) -> bool:
        """Send one frame; False if a stop came first (the frame is not sent)."""
        if self.publisher is not None:
            return self._push(frame, seq, wall)
        return self._request(frame, seq, wall)

    def _push(self, frame, seq: int, wall: float) -> bool:
        pub, t0 = self.publisher, time.monotonic()
        while not pub.send(frame, model=self.cfg.model, seq=seq, ts=wall, block=False):
            self._waiting(t0)
            if self.stop.is_set():
                return False
            pub.socket.poll(100, zmq.POLLOUT)
        self._flowing()
        self.metrics.sent.inc()
        self.accepted += 1
        return True

    def _request(self, frame, seq: int, wall: float) -> bool:
        t0 = time.monotonic()
        try:
            self.client.infer(frame, model=self.cfg.model, seq=seq, ts=wall, cancel=self.stop)
        except RequestTimeout as e:
            if self.stop.is_set():
                return False
            if e.reason == "timeout":
                self.metrics.dropped.labels("no_answer").inc()
                self._waiting(t0)
                return True
            # refused at the handshake (allow_ips, CURVE) or the connection closed: say why, and
            # do not knock again at once (each attempt is a new connection)
            self.metrics.dropped.labels(e.reason).inc()
            self._log_refusal(e)
            self.stop.wait(1.0)
            return True
        except RequestError as e:
            self._flowing()
            self.metrics.sent.inc()
            self.metrics.dropped.labels(e.reason).inc()
            self.refused[e.reason] = self.refused.get(e.reason, 0) + 1
            self.last_refusal = str(e)
            self._log_refusal(e)
            return True
        self._flowing()
        self.metrics.sent.inc()
        self.accepted += 1
        return True

    def _waiting(self, since: float) -> None:
        """Nothing taken or answered since `since`: after WAIT_SAY_S, say so once, with why."""
        if self._waiting_since is None:
            self._waiting_since = since
        waited = time.monotonic() - self._waiting_since
        if self._said_waiting or waited < WAIT_SAY_S:
            return
        self._said_waiting = True
        why = probe(self.cfg.to)
        if why is not None:
            log.warning(
                "no inferd at %s yet (nothing answered for %.0f s: %s); still trying",
                self.cfg.to, waited, why,
            )  # fmt: skip
        else:
            log.warning(
                "inferd at %s has %s for %.0f s (busy, or not an inferd endpoint of type %s); "
                "still trying",
                self.cfg.to, "not answered" if self.client else "taken no frame", waited,
                self.cfg.to_type,
            )  # fmt: skip

    def _flowing(self) -> None:
        if self._said_waiting:
            log.info("inferd at %s takes frames again", self.cfg.to)
        self._waiting_since, self._said_waiting = None, False

    def _log_refusal(self, e: RequestError) -> None:
        now = time.monotonic()
        last, suppressed = self._logged.get(e.reason, (-REFUSAL_LOG_S, 0))
        if now - last < REFUSAL_LOG_S:
            self._logged[e.reason] = (last, suppressed + 1)
            return
        more = f" (+{suppressed} more since)" if suppressed else ""
        what = "a frame" if not isinstance(e, RequestTimeout) else "the connection"
        log.warning("inferd refused %s: %s%s", what, e, more)
        self._logged[e.reason] = (now, 0)

    def close(self) -> None:
        (self.client or self.publisher).close()
