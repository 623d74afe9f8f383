"""The live view (`metrics: {live_view: true}`): a real daemon fed camera frames, its /live page,
.jpg and .mjpg over real HTTP, and the page in a real headless Chromium (Debian's `chromium`,
installed by `make test`): boxes, a segmentation mask and a classifier's classes drawn where they
belong, a stream that advances."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inferd.client import FramePublisher
from inferd.config import parse_config
from inferd.engine.models import load_model
from inferd.engine.pipeline import Frame
from inferd.outputs import annotate
from inferd.outputs.live import WATCH_S, LiveView
from inferd.protocol import FrameHeader, PartSpec
from tests.backends.test_pretrained import packaged
from tests.conftest import MODELS, ROOT, constant_model
from tests.daemon_harness import DaemonProcess
from tests.postprocess.test_anchors import blazeface_entry
from tests.test_frigate import ROWS, build_detector

GREY = 128
ORANGE, BLUE = annotate.COLOURS[1], annotate.COLOURS[0]  # classes 1 and 0 of ROWS
# ROWS' boxes are in the 64x64 model input; a 640x480 frame stretched to it: x * 10, y * 7.5
BOXES = {tuple(r[:4] * [10, 7.5, 10, 7.5]): annotate.COLOURS[int(r[5])] for r in ROWS if r[4] >= 0.3}


def build_segmenter(path: Path) -> Path:
    """[1,3,64,64] -> constant [1,3,16,16] logits: class 1 on the left half, class 2 in the
    bottom-right quarter, class 0 (background) in the top-right quarter."""
    logits = np.zeros((1, 3, 16, 16), np.float32)
    logits[0, 0] = 1
    logits[0, 1, :, :8] = 5
    logits[0, 2, 8:, 8:] = 5
    return constant_model(path, logits, "seg")


CONFIG = """
models:
  - name: detector
    path: DET
    preprocess: {resize: [64, 64], scale: 1/255}
    postprocess: {type: detect, format: end2end, score_threshold: 0.3}
  - name: segmenter
    path: SEG
    preprocess: {resize: [64, 64], scale: 1/255}
    postprocess: {type: segment}
  - name: classifier
    path: "{models}/classifier_int8.onnx"
    labels: "{models}/labels.txt"
    preprocess: {resize: [64, 64], scale: 1/255}
    postprocess: {type: classify, top_k: 3}
FACE
endpoints:
  - {type: pull, bind: "{pull}"}
results:
  bind: "{results}"
metrics:
  listen: "{metrics}"
  live_view: true
  live_fps: 10
"""
FEEDS = {"door": "detector", "yard": "segmenter", "cam": "classifier", "portrait": "face"}


def portrait() -> np.ndarray:
    """A real photograph (matplotlib's Grace Hopper) for a real face model (MediaPipe's BlazeFace)."""
    return np.asarray(Image.open(packaged("matplotlib", "grace_hopper.jpg")).convert("RGB"))


def frame(i: int) -> np.ndarray:
    """Grey, with a white block that moves along the bottom edge (so a stream's pictures differ)."""
    f = np.full((480, 640, 3), GREY, np.uint8)
    x = (i * 16) % 560
    f[466:474, x : x + 40] = 250
    return f


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    text = CONFIG.replace("DET", str(build_detector(tmp / "det.onnx"))).replace("FACE", blazeface_entry())
    d = DaemonProcess(tmp, text.replace("SEG", str(build_segmenter(tmp / "seg.onnx"))))
    stop = threading.Event()

    def feed() -> None:
        pubs = {source: FramePublisher(d.pull, source=source) for source in FEEDS}
        photo, i = portrait(), 0
        while not stop.is_set():
            for source, model in FEEDS.items():
                pubs[source].send(photo if source == "portrait" else frame(i), model=model)
            i += 1
            time.sleep(0.05)
        for pub in pubs.values():
            pub.close()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    d.base = f"http://127.0.0.1:{d.metrics_port}"
    yield d
    stop.set()
    thread.join(5)
    assert d.stop() == 0, d.logs()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def near(pixel, colour, tol: int = 45) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel[:3], colour, strict=True))


def check_boxes(img: np.ndarray, at: tuple[int, int] = (0, 0)) -> None:
    """Each box's outline has its class colour along all four sides; inside it is the frame."""
    ox, oy = at
    for (x1, y1, x2, y2), colour in BOXES.items():
        x1, y1, x2, y2 = round(x1) + ox, round(y1) + oy, min(round(x2), 639) + ox, round(y2) + oy
        xs = np.linspace(x1 + 20, x2 - 20, 10).round().astype(int)
        ys = np.linspace(y1 + 20, y2 - 20, 10).round().astype(int)
        sides = [img[y1 + 1, xs], img[y2 - 1, xs], img[ys, x1 + 1], img[ys, x2 - 1]]
        for side in sides:
            assert all(near(p, colour) for p in side), (colour, side[:3])
        inside = img[(y1 + y2) // 2, (x1 + x2) // 2]
        assert near(inside, (GREY, GREY, GREY), 12), inside


def picture(d, model: str, source: str) -> np.ndarray:
    status, kind, body = get(f"{d.base}/live/{model}/{source}.jpg")
    assert status == 200 and kind == "image/jpeg", (status, body[:200])
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_a_jpg_is_the_frame_with_the_boxes_where_the_detections_are(live):
    img = picture(live, "detector", "door")
    assert img.shape == (480, 640, 3)  # the frame's own size
    check_boxes(img)


def test_a_mask_is_a_translucent_overlay_in_its_class_colours(live):
    img = picture(live, "segmenter", "yard").astype(int)
    blend = [round(GREY * (1 - annotate.MASK_ALPHA) + c * annotate.MASK_ALPHA) for c in annotate.COLOURS[1]]
    assert near(img[240, 100], blend, 12), img[240, 100]  # class 1: left half
    blend2 = [round(GREY * (1 - annotate.MASK_ALPHA) + c * annotate.MASK_ALPHA) for c in annotate.COLOURS[2]]
    assert near(img[400, 500], blend2, 12), img[400, 500]  # class 2: bottom right
    assert near(img[150, 500], (GREY, GREY, GREY), 12), img[150, 500]  # background: the frame


def test_a_classifier_s_top_classes_are_written_on_the_frame(live):
    img = picture(live, "classifier", "cam")
    _, _, page = get(f"{live.base}/live")
    text = page.decode()
    row = text[text.index("<b>classifier</b>") :].split("</figcaption>")[0]
    top = row.split(" · ")[-2].split(",")[0].rsplit(" ", 1)[0]  # "label score, ..." -> the first label
    labels = (MODELS / "labels.txt").read_text().split()
    colour = annotate.COLOURS[labels.index(top) % len(annotate.COLOURS)]
    corner = img[:40, :160].reshape(-1, 3)  # the first line of text, on its class colour
    assert sum(near(p, colour, 30) for p in corner) > 300, top


def test_the_page_lists_every_model_and_source_with_its_last_result(live):
    status, kind, body = get(f"{live.base}/live")
    assert status == 200 and kind.startswith("text/html")
    text = body.decode()
    for source, model in FEEDS.items():
        assert f'src="/live/{model}/{source}.jpg"' in text and f'href="/live/{model}/{source}.mjpg"' in text
    assert "2 detection(s): 0 0.90, 1 0.60" in text and "areas: 0 25%, 1 50%, 2 25%" in text


def test_the_mjpeg_stream_advances(live):
    with urllib.request.urlopen(f"{live.base}/live/detector/door.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=inferd-live-frame"
        buf, t0 = b"", time.monotonic()
        while buf.count(b"--inferd-live-frame") < 5:
            buf += r.read1(1 << 16)
            assert time.monotonic() - t0 < 10
    parts = [p.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0] for p in buf.split(b"--inferd-live-frame")[1:5]]
    images = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in parts]
    assert len({p for p in parts}) >= 3  # the block moved: new pictures, not one repeated
    for img in images:
        check_boxes(img)


def test_unknown_pairs_and_tensor_frames_say_why(live):
    status, _, body = get(f"{live.base}/live/detector/nobody.jpg")
    assert status == 404 and b"no frame from this model/source" in body
    status, _, body = get(f"{live.base}/live/nope")
    assert status == 404


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("INFERD_CI"):  # make test installs it: missing there is a failure
            pytest.fail("chromium is not installed")
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    return path


def screenshot(url: str, path: Path, size: str = "900,900") -> np.ndarray:
    proc = subprocess.run(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={path}", f"--window-size={size}", "--virtual-time-budget=4000", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and path.exists(), proc.stderr[-2000:]
    return np.asarray(Image.open(path).convert("RGB"))


def locate(img: np.ndarray, shape: tuple) -> tuple[int, int]:
    """Where the one picture of a `?only=` page landed: the rows and columns mostly unlike the
    page's background (#222)."""
    busy = np.any(np.abs(img.astype(int) - (34, 34, 34)) > 12, axis=-1)
    rows = np.flatnonzero(busy.sum(1) > shape[1] * 0.8)
    cols = np.flatnonzero(busy.sum(0) > shape[0] * 0.8)
    assert len(rows) == shape[0] and len(cols) == shape[1], (rows, cols)  # the picture, whole
    return int(cols.min()), int(rows.min())


def test_a_browser_shows_the_boxes_where_they_belong(live, tmp_path):
    img = screenshot(f"{live.base}/live?only=detector/door", tmp_path / "door.png")
    check_boxes(img, locate(img, (480, 640)))
    if os.environ.get("INFERD_WRITE_DOCS"):  # docs/live-view.md's screenshot: the whole page
        screenshot(f"{live.base}/live", ROOT / "docs" / "images" / "live-view.png", "1400,1700")


def test_a_browser_shows_a_real_face_model_s_keypoints_on_the_photograph(live, tmp_path):
    """MediaPipe's BlazeFace on a real portrait: its box and six keypoints, as the model finds
    them in this process, are where the browser shows the dots."""
    cfg = parse_config("models:" + blazeface_entry()).models[0]
    model = load_model(cfg, tmp_path)
    photo = portrait()
    (face,) = model.predict([photo], "portrait")[1]["detections"]
    model.close()
    img = screenshot(f"{live.base}/live?only=face/portrait", tmp_path / "face.png").astype(int)
    ox, oy = locate(img, photo.shape)
    blue = annotate.COLOURS[0]
    kps = np.asarray(face["keypoints"]).reshape(-1, 2)
    assert len(kps) == 6
    for x, y in kps:  # a dot in the class colour: nearer blue than the photograph there (JPEG blurs it)
        shown, under = img[oy + round(y), ox + round(x)], photo[round(y), round(x)].astype(int)
        assert np.abs(shown - blue).sum() < min(90, np.abs(under - blue).sum() - 60), (x, y, shown, under)
    x1, y1, _, y2 = face["box"]
    assert near(img[oy + round((y1 + y2) / 2), ox + round(x1) + 1], blue, 45)  # the box's left side


def test_nobody_looking_keeps_no_frame_and_a_viewer_gets_the_next_one(monkeypatch):
    view = LiveView(fps=5)
    spec = PartSpec((2, 2, 3), np.dtype(np.uint8))
    pixels = np.full((2, 2, 3), 7, np.uint8)

    def offer(seq: int) -> None:
        f = Frame(
            FrameHeader("cam", seq=seq, parts=[spec]), [pixels.tobytes()], time.monotonic(), time.time()
        )
        view.offer("m", f, {"classes": []})

    offer(1)
    assert view.snaps == {} and ("m", "cam") in view.last  # the listing only: no copy kept
    threading.Timer(0.2, offer, args=(2,)).start()
    snap = view.picture(("m", "cam"), wait=5)  # a viewer asks: the next frame is kept for it
    assert snap is not None and snap.jpeg is not None and snap.pixels == pixels.tobytes()
    later = time.monotonic() + WATCH_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    offer(3)  # nobody asked for WATCH_S: the kept frame is let go
    assert view.snaps == {} and view.watched == {}


def test_keypoints_are_dots_on_the_picture():
    image = Image.new("RGB", (100, 100), (GREY,) * 3)
    result = {"detections": [{"box": [10, 10, 90, 90], "score": 0.9, "class": 2, "label": "face",
                              "keypoints": [30, 40, 70, 40]}]}  # fmt: skip
    img = np.asarray(annotate.annotate(image, result))
    green = annotate.COLOURS[2]
    assert near(img[40, 30], green, 5) and near(img[40, 70], green, 5)  # inferd's flat x, y pairs
    image = Image.new("RGB", (100, 100), (GREY,) * 3)
    result["detections"][0]["keypoints"] = [[30, 40, 0.9], [50, 70, 0.2]]  # rows with a score
    img = np.asarray(annotate.annotate(image, result))
    assert near(img[40, 30], green, 5)
    assert near(img[70, 50], (GREY,) * 3, 5)  # a keypoint the model is unsure of is not drawn


def test_zones_are_drawn_with_their_counts_and_the_line_s_in_side():
    """A polygon's outline (amber, red while occupied) and a line with its arrow on the `in`
    side: for a line drawn top to bottom that is screen left (docs/zones.md)."""
    from inferd.engine.zones import ZoneConfig

    porch = ZoneConfig(name="porch", source="cam", polygon=[[0.1, 0.1], [0.4, 0.1], [0.4, 0.4], [0.1, 0.4]])
    gate = ZoneConfig(name="gate", source="cam", line=[[150, 60], [150, 190]], units="pixels")
    for count, colour in [(0, annotate.ZONE), (2, annotate.ZONE_OCCUPIED)]:
        image = Image.new("RGB", (200, 200), (GREY,) * 3)
        result = {"detections": [], "zones": {"porch": {"count": count}, "gate": {"in": 1, "out": 0}}}
        img = np.asarray(annotate.annotate(image, result, zones=(porch, gate)))
        assert near(img[70, 20], colour, 10) and near(img[80, 80], colour, 10)  # the left and right sides
        assert near(img[50, 50], (GREY,) * 3, 5)  # the inside stays clear
        assert near(img[100, 150], annotate.ZONE, 10)  # the line
        assert near(img[125, 140], annotate.ZONE, 10)  # the arrow, from its middle, to the left: `in`
        assert near(img[125, 160], (GREY,) * 3, 5)  # nothing on the right
    image = Image.new("RGB", (200, 200), (GREY,) * 3)  # without a result: the zones alone
    assert near(np.asarray(annotate.annotate(image, None, zones=(porch,)))[70, 20], annotate.ZONE, 10)
