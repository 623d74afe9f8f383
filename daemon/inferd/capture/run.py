"""The capture loop: decode on one thread, send on another, reconnect forever.

Decoding never waits for the network: the decoder leaves each frame in a one-frame slot and the
sender takes the newest, so a slow link drops stale frames at the source (counted as `stale`)
instead of building a queue of old ones. Files and folders paced `asap` have no stale frames and
nothing to gain from a second thread (the decoder would only wait for the sender, and the hand-
over per frame halved the rate, benchmarks/capture.py): the decoding thread sends them itself.
Live sources that fail or stall are reopened with exponential backoff, forever, with one log line
per state change.
"""

from __future__ import annotations

import io
import logging
import threading
import time

import numpy as np

from inferd.capture.config import CaptureConfig
from inferd.capture.link import Link
from inferd.capture.metrics import CaptureMetrics
from inferd.capture.sources import SourceError, frames, redact
from inferd.service.systemd import Notifier, watchdog_interval

log = logging.getLogger("inferd.capture")


class Slot:
    """One frame handed from the decoder to the sender; `latest` overwrites, else the decoder waits."""

    def __init__(self, latest: bool) -> None:
        self.latest, self._item, self._cond = latest, None, threading.Condition()
        self.closed = False

    def put(self, item) -> bool:
        """False when an unsent frame was replaced (latest) ."""
        with self._cond:
            if not self.latest:
                while self._item is not None and not self.closed:
                    self._cond.wait(0.5)
            replaced = self._item is not None
            self._item = item
            self._cond.notify_all()
            return not replaced

    def take(self, timeout: float):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Capture:
    def __init__(self, cfg: CaptureConfig, metrics: CaptureMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or CaptureMetrics()
        self.stop = threading.Event()  # SIGTERM/SIGINT: stop now
        self.decoded_all = threading.Event()  # a file or folder came to its end
        self.inline = not cfg.live and cfg.pace == "asap"  # send on the decoding thread
        self.slot = Slot(latest=cfg.live or cfg.pace == "realtime")
        self.seq = 0
        self.link: Link | None = None  # to inferd's pull or router endpoint (made in run)
        self.notifier = Notifier()
        self.sent_any = False
        self.last_sent = 0.0
        self.last_attempt = time.monotonic()  # the decoder's last (re)connection attempt
        self.state = "starting"
        self.exit_code = 0
        self.failure = ""  # why exit_code is not 0, in a sentence

    # ---- decoding ----------------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.state:
            self.state = state
            log.log(logging.WARNING if state == "reconnecting" else logging.INFO,
                    "%s: %s%s", redact(self.cfg.url), state, f" ({detail})" if detail else "")  # fmt: skip
            self.notifier.status(f"{state}: {redact(self.cfg.url)}")

    def _decode(self, failed: list) -> None:
        try:
            self.decode_loop()
        except BaseException as e:  # handed to run(), which raises it in the main thread
            failed.append(e)
            self.decoded_all.set()

    def decode_loop(self) -> None:
        cfg, backoff = self.cfg, 0.5
        while not self.stop.is_set():
            self.last_attempt = time.monotonic()
            try:
                got_one = self._one_pass()
            except SourceError as e:
                # a file, or a device that was never there, is a mistake to report; a stream (or a
                # camera that worked and went away) is retried forever
                if not cfg.live or (cfg.kind == "device" and self.state == "starting"):
                    log.error("%s", e)
                    self.exit_code = 1
                    self.failure = f"{redact(cfg.url)} could not be read (see above)"
                    break
                self.metrics.reconnects.inc()
                self._set_state("reconnecting", str(e))
                self.stop.wait(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_s)
                continue
            if got_one:
                backoff = 0.5
            if not cfg.live and not cfg.loop:
                break
            if cfg.live:  # the stream ended: treat as a loss
                self.metrics.reconnects.inc()
                self._set_state("reconnecting", "the stream ended")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_s)
        self.decoded_all.set()

    def _one_pass(self) -> bool:
        cfg, got = self.cfg, False
        period = 1.0 / cfg.fps if cfg.fps else 0.0
        next_due, start_wall, first_media = 0.0, None, None
        for rgb, wall, media in frames(cfg, on_error=self._decode_error):
            if self.stop.is_set():
                break
            got = True
            self._set_state("streaming")
            self.metrics.decoded.inc()
            if not cfg.live and cfg.pace == "realtime" and media is not None:
                if start_wall is None:
                    start_wall, first_media = time.monotonic(), media
                delay = start_wall + (media - first_media) - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
                wall = time.time()  # a recorded frame is "captured" when its time comes
            now = time.monotonic()
            if period and now < next_due:
                self.metrics.dropped.labels("fps").inc()  # the cap: dropped before any work on it
                continue
            next_due = max(next_due + period, now) if period else 0.0
            t0 = time.perf_counter()
            frame = self._shape(rgb)
            self.metrics.decode_seconds.observe(time.perf_counter() - t0)
            if self.inline:
                self._deliver(frame, wall)
            elif not self.slot.put((frame, wall)):
                self.metrics.dropped.labels("stale").inc()
        return got

    def _decode_error(self, message: str) -> None:
        self.metrics.decode_errors.inc()
        log.warning("skipped a frame: %s", message)

    def _shape(self, rgb: np.ndarray):
        """ROI crop, resize, channel order, JPEG: what the frame looks like on the wire."""
        cfg = self.cfg
        if cfg.roi is not None:
            x, y, w, h = cfg.roi
            rgb = rgb[y : y + h, x : x + w]
        if cfg.size is not None and (rgb.shape[1], rgb.shape[0]) != cfg.size:
            from PIL import Image

            rgb = np.asarray(
                Image.fromarray(np.ascontiguousarray(rgb)).resize(cfg.size, Image.Resampling.BILINEAR)
            )
        if cfg.encoding == "jpeg":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=cfg.jpeg_quality)
            return buf.getvalue()  # JPEG is RGB by definition: inferd decodes it as rgb
        if cfg.color == "bgr":
            rgb = rgb[:, :, ::-1]
        return np.ascontiguousarray(rgb)

    # ---- sending -----------------------------------------------------------------------------

    def send_loop(self) -> None:
        """The sender thread (live and realtime sources): the newest frame in the slot, sent."""
        try:
            while True:
                item = self.slot.take(0.2)
                if item is None:
                    if self.decoded_all.is_set() or self.stop.is_set():
                        break
                    continue
                self._deliver(*item)
        finally:
            self.link.close()

    def _deliver(self, frame, wall: float) -> None:
        if not self.link.deliver(frame, self.seq, wall):
            return  # stopping
        self.seq += 1
        self.last_sent = time.monotonic()
        if not self.sent_any:
            self.sent_any = True
            self.notifier.ready(f"streaming {redact(self.cfg.url)} to {self.cfg.to}")
            log.info("first frame sent to %s", self.cfg.to)

    # ---- lifecycle ---------------------------------------------------------------------------

    def watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 while frames flow or reconnection attempts go on; a decoder wedged inside
        FFmpeg does neither, stops the pings, and systemd restarts the process."""
        limit = max(2 * interval, self.cfg.stall_timeout_s + interval)
        while not self.stop.wait(interval):
            if time.monotonic() - max(self.last_sent, self.last_attempt) < limit:
                self.notifier.watchdog()

    def run(self) -> int:
        self.metrics.last_frame_age.set_function(
            lambda: time.monotonic() - self.last_sent if self.last_sent else float("nan")
        )
        self.metrics.serve(self.cfg.metrics)
        self.link = Link(self.cfg, self.metrics, self.stop)
        sender = threading.Thread(target=self.send_loop, name="send", daemon=True)
        if not self.inline:
            sender.start()
        interval = watchdog_interval()
        if interval:
            pinger = threading.Thread(
                target=self.watchdog_loop, args=(interval,), name="watchdog", daemon=True
            )
            pinger.start()
        # the decoder has its own thread: one stuck inside FFmpeg (opening a stream that does not
        # answer, a DNS lookup) must not keep a stop request waiting; this thread only waits
        failed: list[BaseException] = []
        decoder = threading.Thread(target=self._decode, args=(failed,), name="decode", daemon=True)
        decoder.start()
        try:
            while decoder.is_alive() and not self.stop.is_set():
                decoder.join(0.1)
            while sender.is_alive() and not self.stop.is_set():  # the last frames of a file
                sender.join(0.1)
        finally:
            self.stop.set()
            self.slot.close()
            decoder.join(1.0)  # one still inside FFmpeg is left behind: the process ends anyway
            if sender.ident is not None:
                sender.join(10)
            elif not decoder.is_alive():  # the link is the decoder's (inline): close it after it
                self.link.close()
            self.notifier.stopping()
        if failed:
            raise failed[0]
        link = self.link
        refused = ", ".join(f"{n} {reason}" for reason, n in sorted(link.refused.items()))
        log.info(
            "stopped: %d frames decoded, %d sent, %d accepted by inferd%s",
            self.metrics.decoded._value.get(), self.seq, link.accepted,
            f", refused: {refused}" if refused else "",
        )  # fmt: skip
        if not self.cfg.live and link.refused and not link.accepted and not self.exit_code:
            self.failure = f"inferd refused every frame of {redact(self.cfg.url)} ({link.last_refusal})"
            log.error("%s", self.failure)
            self.exit_code = 1
        return self.exit_code
