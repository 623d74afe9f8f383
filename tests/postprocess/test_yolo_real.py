"""A real YOLOv8 export: NudeNet's 320n.onnx (an Ultralytics 8.2 YOLOv8n detector with a dynamic
input size, shipped inside the `nudenet` wheel), on a real photograph (matplotlib's Grace Hopper
portrait), decoded by inferd and by the package's own decoder on the same raw outputs."""

import sys
import types

import numpy as np
import pytest
from PIL import Image

from inferd.config import parse_config
from inferd.engine.models import load_model
from tests.backends.test_pretrained import packaged
from tests.postprocess.test_anchors import blazeface_entry


def entry(align: str = "top-left") -> str:
    """NudeNet's preprocessing: pad right and bottom to a square with black, resize to 320, RGB, /255."""
    path = packaged("nudenet", "320n.onnx")
    return f"""
  - name: yolo
    path: {path}
    preprocess: {{resize: [320, 320], letterbox: true, letterbox_align: {align}, pad_value: 0, scale: 1/255}}
    postprocess: {{type: detect, format: yolo, score_threshold: 0.25, iou_threshold: 0.45, class_agnostic_nms: true}}
"""


def greedy_nms(boxes, scores, score_threshold, iou_threshold):
    """cv2.dnn.NMSBoxes as the package calls it: [x, y, w, h] boxes, indices best first."""
    order = [i for i in np.argsort(scores)[::-1] if scores[i] >= score_threshold]
    keep = []
    for i in order:
        xi, yi, wi, hi = boxes[i]
        ok = True
        for j in keep:
            xj, yj, wj, hj = boxes[j]
            iw = max(0.0, min(xi + wi, xj + wj) - max(xi, xj))
            ih = max(0.0, min(yi + hi, yj + hj) - max(yi, yj))
            inter = iw * ih
            if inter / (wi * hi + wj * hj - inter + 1e-12) > iou_threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def nudenet():
    """The package's module, with a stand-in cv2 that has only NMSBoxes (its decoder's one use of
    OpenCV; the rest of OpenCV is for its own image reading, which inferd replaces)."""
    if "nudenet.nudenet" not in sys.modules:
        cv2 = types.ModuleType("cv2")
        cv2.dnn = types.SimpleNamespace(NMSBoxes=greedy_nms)
        stubbed = "cv2" not in sys.modules
        if stubbed:
            sys.modules["cv2"] = cv2
        try:
            folder = packaged("nudenet", "nudenet.py").parent
            pkg = types.ModuleType("nudenet")
            pkg.__path__ = [str(folder)]
            sys.modules["nudenet"] = pkg
            import nudenet.nudenet  # noqa: F401
        finally:
            if stubbed:
                del sys.modules["cv2"]
    return sys.modules["nudenet.nudenet"]


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.asarray(Image.open(packaged("matplotlib", "grace_hopper.jpg")).convert("RGB"))


def test_a_real_yolov8_export_matches_the_packages_own_decoder(tmp_path, portrait):
    cfg = parse_config("models:" + entry())
    model = load_model(cfg.models[0], tmp_path)
    assert model.backend.inputs[0].shape[2:] == (None, None)  # dynamic: warmed up at 320x320
    assert model.labels[1] == "FACE_FEMALE"  # from the export's metadata: no labels file given
    raw = model.infer(model.prepare([portrait]))
    assert raw[0].shape == (1, 22, 2100)  # [4 + 18 classes, 3 strides' cells]: the yolo "cn" layout
    _, decoded = model.predict([portrait], "cam0")
    h, w = portrait.shape[:2]
    assert decoded["frame"] == {"width": w, "height": h}

    nn = nudenet()
    s = max(h, w)  # the package pads right and bottom to a square, then resizes to 320
    ref = nn._postprocess(raw, s - w, s - h, s / w, s / h, w, h, 320, 320)
    assert ref, "the package's decoder finds something in the portrait"
    assert [d["label"] for d in decoded["detections"]] == [r["class"] for r in ref]
    for ours, theirs in zip(decoded["detections"], ref, strict=True):
        x, y, bw, bh = theirs["box"]  # the package truncates x, y, w and h to int pixels
        diff = np.asarray(ours["box"]) - [x, y, x + bw, y + bh]
        assert ((diff >= 0) & (diff < [1, 1, 2, 2])).all(), (ours["box"], theirs["box"])
        assert ours["score"] == pytest.approx(theirs["score"], rel=1e-5)

    # and the face is where an unrelated model (MediaPipe's BlazeFace) puts it
    face = next(d for d in decoded["detections"] if d["label"].startswith("FACE"))
    blaze = load_model(parse_config("models:" + blazeface_entry()).models[0], tmp_path)
    (other,) = blaze.predict([portrait], "cam0")[1]["detections"]
    assert iou(face["box"], other["box"]) > 0.4, (face["box"], other["box"])
    model.close()
    blaze.close()


def test_the_letterbox_alignment_moves_boxes_back_to_the_same_place(tmp_path, portrait):
    """Centred padding (Ultralytics' own) gives the model a shifted input; mapped back to the
    frame, the face box lands on the same pixels."""
    boxes = []
    for align in ("top-left", "center"):
        model = load_model(parse_config("models:" + entry(align)).models[0], tmp_path)
        face = next(
            d for d in model.predict([portrait], "cam0")[1]["detections"] if d["label"] == "FACE_FEMALE"
        )
        boxes.append(face["box"])
        model.close()
    np.testing.assert_allclose(boxes[0], boxes[1], atol=6)  # a few pixels: the model sees other pixels
    assert iou(*boxes) > 0.9


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
