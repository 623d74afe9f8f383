"""The live view (`metrics: {live_view: true}`, docs/live-view.md): the latest frame of a
model/source with what the model returned drawn on it, on the metrics HTTP server.

Fed every result (threads: the decoded result; worker processes: the wire header, parsed only
when someone looks). It keeps a frame and encodes a picture only for a model/source a viewer
asked for in the last WATCH_S seconds: nobody looking costs one dict assignment per result.
"""

from __future__ import annotations

import contextlib
import html
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from inferd.engine.postprocess import PARTS
from inferd.outputs import annotate
from inferd.protocol import PartSpec

WATCH_S = 5.0  # a viewer's request keeps its model/source watched this long
WAIT_S = 2.0  # how long a request for a picture waits for a frame of a newly watched source
BOUNDARY = b"inferd-live-frame"


@dataclass
class Snapshot:
    """One watched frame: a copy of its pixels and its result; its JPEG made once, on demand."""

    number: int
    spec: PartSpec | None
    pixels: bytes
    result: dict | None
    mask_png: bytes | None
    frame_color: str
    zones: tuple = ()  # the source's zones this model watches (ZoneConfig), drawn under the boxes
    jpeg: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class LiveView:
    def __init__(self, fps: float, models=()) -> None:
        self.fps = fps
        self.frame_colors: dict[str, str] = {}  # model -> rgb | bgr (its preprocess.frame_color)
        self.zones: dict[tuple[str, str], tuple] = {}  # (model, source) -> its zones
        self.configure(models)
        self.last: dict[tuple[str, str], tuple[float, object]] = {}  # (model, source) -> (when, result)
        self.watched: dict[tuple[str, str], float] = {}
        self.snaps: dict[tuple[str, str], Snapshot] = {}
        self.changed = threading.Condition()
        self.count = 0

    def configure(self, models) -> None:
        """The models' (ModelConfig) frame colours and zones: at the start and after a reload."""
        zones: dict[tuple[str, str], tuple] = {}
        for m in models:
            for z in getattr(m.postprocess, "zones", ()):
                zones[(m.name, z.source)] = (*zones.get((m.name, z.source), ()), z)
        self.frame_colors = {m.name: m.preprocess.frame_color for m in models}
        self.zones = zones

    # -- fed by replies (a worker thread or the IO thread) --------------------------------
    def offer(self, model: str, frame, decoded: dict | None) -> None:
        """A result decoded in this process (threads)."""
        key = (model, frame.source)
        self.last[key] = (time.time(), decoded)
        if key in self.watched:
            self._keep(key, frame, decoded, decoded.get(PARTS) if decoded else None)

    def offer_wire(self, model: str, frame, header: bytes, parts: list) -> None:
        """A result in its wire form (worker processes): the header and its binary parts."""
        key = (model, frame.source)
        self.last[key] = (time.time(), header)
        if key in self.watched:
            result = _result(header)
            png = (
                bytes(parts[0])
                if result and result.get("segmentation", {}).get("part") == 0 and parts
                else None
            )
            self._keep(key, frame, result, [png] if png else None)

    def _keep(self, key, frame, result, binaries) -> None:
        if time.monotonic() - self.watched.get(key, 0.0) > WATCH_S:
            self.watched.pop(key, None)
            self.snaps.pop(key, None)
            return
        spec = frame.header.parts[0] if frame.header.parts else None
        payload = frame.payloads[0] if frame.payloads else b""
        pixels = bytes(getattr(payload, "buffer", payload))  # the one copy: the socket's buffer is reused
        with self.changed:
            self.count += 1
            self.snaps[key] = Snapshot(
                self.count, spec, pixels, _plain(result), binaries[0] if binaries else None,
                self.frame_colors.get(key[0], "rgb"), self.zones.get(key, ()),
            )  # fmt: skip
            self.changed.notify_all()

    # -- asked by viewers (HTTP threads) ---------------------------------------------------
    def picture(self, key: tuple[str, str], after: int = 0, wait: float = WAIT_S) -> Snapshot | None:
        """The latest snapshot newer than `after`, waiting up to `wait` s for one; with its JPEG."""
        self.watched[key] = time.monotonic()
        end = time.monotonic() + wait
        with self.changed:
            while (snap := self.snaps.get(key)) is None or snap.number <= after:
                left = end - time.monotonic()
                if left <= 0:
                    return snap if snap is not None and after == 0 else None
                self.changed.wait(left)
        with snap.lock:  # encoded once, whoever asks first; viewers share it
            if snap.jpeg is None:
                image = annotate.picture(snap.spec, snap.pixels, snap.frame_color) if snap.spec else None
                if image is None:
                    return snap  # not a picture: the caller says so
                snap.jpeg = annotate.jpeg(annotate.annotate(image, snap.result, snap.mask_png, snap.zones))
        return snap

    def pairs(self) -> list[tuple[str, str, float, dict | None]]:
        out = []
        for (model, source), (when, result) in sorted(self.last.items()):
            out.append(
                (model, source, when, _result(result) if isinstance(result, bytes) else _plain(result))
            )
        return out


def _result(header) -> dict | None:
    try:
        head = json.loads(bytes(header))
    except (ValueError, TypeError):
        return None
    if head.get("status") == "error":
        return {"error": head.get("error")}
    return head.get("result")


def _plain(result) -> dict | None:
    """A result without its binary parts (those are drawn from `mask_png`)."""
    if not isinstance(result, dict):
        return None
    return {k: v for k, v in result.items() if k != PARTS}


def summary(result: dict | None) -> str:
    if not result:
        return "no decoded result (postprocess: raw)"
    if "error" in result:
        return f"error: {(result['error'] or {}).get('message', '')}"
    if "detections" in result:
        dets = result["detections"]
        names = ", ".join(
            f"{d.get('label') or d.get('class')} {float(d.get('score', 0)):.2f}" for d in dets[:8]
        )
        return f"{len(dets)} detection(s)" + (f": {names}" if names else "")
    if "classes" in result:
        return ", ".join(
            f"{c.get('label') or c.get('index')} {float(c.get('score', 0)):.2f}"
            for c in result["classes"][:5]
        )
    if "segmentation" in result:
        areas = result["segmentation"].get("areas", [])
        return "areas: " + ", ".join(
            f"{a.get('label') or a.get('class')} {a.get('fraction', 0):.0%}" for a in areas[:6]
        )
    return json.dumps(result)[:200]


def app(live: LiveView):
    """The WSGI app of /live, /live/<model>/<source>.jpg and .mjpg (mounted by service/health.py)."""

    def page(environ, start_response):
        only = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("only")  # MODEL/SOURCE
        rows = []
        for model, source, when, result in live.pairs():
            if only and f"{model}/{source}" not in only:
                continue
            base = f"/live/{urllib.parse.quote(model, safe='')}/{urllib.parse.quote(source, safe='')}"
            name = f"{html.escape(model)} / {html.escape(source)}"
            rows.append(
                f'<figure><img src="{base}.jpg" data-src="{base}.jpg" alt="{name}">'
                f"<figcaption><b>{html.escape(model)}</b> / {html.escape(source)} · "
                f'<span class="age" data-t="{when}"></span> · {html.escape(summary(result))} · '
                f'<a href="{base}.mjpg">stream</a></figcaption></figure>'
            )
        body = PAGE.replace("ROWS", "\n".join(rows) or "<p>No results yet: send frames.</p>")
        body = body.replace("PERIOD_MS", str(round(1000 / live.fps)))
        start_response(
            "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        )
        return [body.encode()]

    def jpg(key, start_response):
        snap = live.picture(key)
        if snap is None or snap.jpeg is None:
            why = (
                "no frame from this model/source in the last 2 s"
                if snap is None
                else "the frame is not a picture (a tensor)"
            )
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"{why}\n".encode()]
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("Cache-Control", "no-store")])
        return [snap.jpeg]

    def mjpg(key, start_response):
        kind = f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"
        start_response("200 OK", [("Content-Type", kind), ("Cache-Control", "no-store")])

        def frames():
            number, period = 0, 1.0 / live.fps
            while True:
                t0 = time.monotonic()
                snap = live.picture(key, after=number, wait=WATCH_S)
                if snap is not None and snap.jpeg is not None:
                    number = snap.number
                    yield b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: " + \
                        str(len(snap.jpeg)).encode() + b"\r\n\r\n" + snap.jpeg + b"\r\n"  # fmt: skip
                else:
                    live.watched[key] = time.monotonic()  # keep asking while the stream is open
                time.sleep(max(0.0, period - (time.monotonic() - t0)))

        return frames()

    def serve(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/live", "/live/"):
            return page(environ, start_response)
        with contextlib.suppress(UnicodeError):  # the server unquoted it as latin-1 (PEP 3333)
            path = path.encode("latin-1").decode("utf-8")
        parts = path.split("/", 3)  # a source name may hold "/" (sent as %2F)
        if len(parts) == 4 and parts[3].endswith((".jpg", ".mjpg")):
            source, _, kind = parts[3].rpartition(".")
            return (jpg if kind == "jpg" else mjpg)((parts[2], source), start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /live, /live/MODEL/SOURCE.jpg or .mjpg\n"]

    return serve


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>inferd live view</title>
<style>body{font:14px sans-serif;margin:12px;background:#222;color:#eee}figure{display:inline-block;
margin:6px;vertical-align:top}img{max-width:640px;display:block;background:#000}a{color:#8cf}</style>
</head><body><h1>inferd live view</h1>
ROWS
<script>
// each picture reloads when the previous one arrived, at most every PERIOD_MS ms
for (const img of document.querySelectorAll("img[data-src]")) {
  const next = () => setTimeout(() => { img.src = img.dataset.src + "?t=" + Date.now(); }, PERIOD_MS);
  img.onload = next; img.onerror = () => setTimeout(next, 1000);
}
const ages = () => { for (const s of document.querySelectorAll(".age"))
  s.textContent = Math.max(0, Date.now() / 1000 - s.dataset.t).toFixed(1) + " s ago"; };
ages(); setInterval(ages, 1000);
setTimeout(() => location.reload(), 30000);  // new model/source pairs appear
</script></body></html>
"""
