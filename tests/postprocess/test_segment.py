"""Segmentation masks in the frame's pixels, with per-class areas; PNG and RLE encodings."""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inferd.client import Result
from inferd.config import SegmentPostprocess, parse_config
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import geometry
from inferd.engine.models import load_model
from inferd.engine.postprocess import PARTS, Segment
from tests.backends.test_pretrained import packaged


def segment(scores, g, labels=None, **cfg):
    post = Segment(
        SegmentPostprocess(type="segment", **cfg), [TensorSpec("o", scores.shape, scores.dtype)], labels, "m"
    )
    return post([scores], "cam0", g)


def test_argmax_classes_are_mapped_back_through_the_letterbox():
    g = geometry(40, 80, (8, 8), True, None)  # 80x40 -> 8x4 content, 2 rows of padding above and below
    scores = np.zeros((1, 3, 8, 8), np.float32)  # NCHW, 3 classes
    scores[0, 1, :, :4] = 1.0  # class 1 on the left half, class 2 on the right (rows 2-5 are the frame)
    scores[0, 2, :, 4:] = 1.0
    scores[0, 0, :2] = scores[0, 0, 6:] = 5.0  # the padding says background: never reaches the frame
    out = segment(scores, g, ["bg", "left", "right"], encoding="rle")
    seg = out["segmentation"]
    assert (seg["width"], seg["height"]) == (80, 40) and out["frame"] == {"width": 80, "height": 40}
    assert [(a["label"], a["fraction"]) for a in seg["areas"]] == [("left", 0.5), ("right", 0.5)]
    mask = Result({"status": "ok", "result": out}).mask()
    assert (mask[:, :40] == 1).all() and (mask[:, 40:] == 2).all()


def test_one_channel_probability_map_png_and_model_size():
    g = geometry(10, 10, (10, 10), False, None)
    prob = np.zeros((1, 10, 10, 1), np.float32)
    prob[0, 2:5, 3:7] = 0.9
    out = segment(prob, g)
    png = out.pop(PARTS)[0]
    mask = np.asarray(Image.open(io.BytesIO(png)))
    assert mask.sum() == 12 and (mask[2:5, 3:7] == 1).all()
    assert Result({"status": "ok", "result": out}, parts=[png]).mask().tolist() == mask.tolist()
    assert out["segmentation"]["areas"][1] == {"class": 1, "label": None, "fraction": 0.12}
    small = segment(prob, geometry(100, 100, (10, 10), False, None), mask_size="model")
    assert (small["segmentation"]["width"], small["segmentation"]["height"]) == (10, 10)


def text_frame() -> np.ndarray:
    img = Image.new("RGB", (500, 200), "white")
    ImageDraw.Draw(img).text((60, 70), "inferd 2026", fill="black", font=ImageFont.load_default(size=48))
    return np.asarray(img)


def test_a_real_text_detector_mask_matches_a_reference_resampling(tmp_path):
    """PP-OCRv4's DB text detector (rapidocr) outputs a text-probability map: the mask in frame
    pixels equals the map thresholded, cut to the letterbox window and resized (Pillow, nearest)."""
    path = packaged("rapidocr", "ch_PP-OCRv4_det_infer.onnx")
    cfg = parse_config(f"""
models:
  - name: text
    path: {path}
    preprocess: {{resize: [160, 480], letterbox: true, pad_value: 255, scale: 1/255,
                 mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
    postprocess: {{type: segment, threshold: 0.3}}
""")  # fmt: skip
    model = load_model(cfg.models[0], tmp_path)
    frame = text_frame()
    raw = model.infer(model.prepare([frame]))[0]
    _, decoded = model.predict([frame], "cam0")
    mask = Result({"status": "ok", "result": decoded}, parts=decoded.pop(PARTS)).mask()
    assert mask.shape == frame.shape[:2]
    # reference: 500x200 -> 400x160 centred in 480x160 (40 columns of padding each side)
    window = (raw[0, 0] >= 0.3)[:, 40:440].astype(np.uint8)
    expected = np.asarray(Image.fromarray(window).resize((500, 200), Image.Resampling.NEAREST))
    assert (mask == expected).mean() > 0.995
    ink = np.argwhere(frame.min(axis=2) < 128)
    (y1, x1), (y2, x2) = ink.min(axis=0), ink.max(axis=0)
    text = decoded["segmentation"]["areas"][-1]
    assert text["class"] == 1 and 0.02 < text["fraction"] < 0.5
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - (y1 + y2) / 2) < 10 and abs(xs.mean() - (x1 + x2) / 2) < 25  # on the text
    model.close()
