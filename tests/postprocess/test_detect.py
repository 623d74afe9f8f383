"""Detection formats decoded into the source frame's pixels; each checked against numbers worked
out by hand from the format's definition."""

import numpy as np
import pytest

from inferd.config import DetectPostprocess
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import geometry
from inferd.engine.postprocess import Detect
from inferd.errors import ConfigError

LETTERBOX = geometry(480, 640, (320, 320), True, None)  # x2 scale, 40 rows of padding on top


def specs(*arrays):
    return [TensorSpec(f"o{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]


def detect(fmt, arrays, labels=None, shapes=None, **cfg):
    post = Detect(DetectPostprocess(type="detect", format=fmt, **cfg), shapes or specs(*arrays), labels, "m")
    return post(arrays, "cam0", LETTERBOX)


def test_yolo_boxes_come_back_in_frame_pixels_and_normalized():
    rows = np.zeros((8400, 6), np.float32)  # YOLOv8 export: [1, 4+C, N] with C = 2
    rows[0] = [160, 160, 20, 40, 0.9, 0.1]  # centre of the input, 20x40
    rows[1] = [10, 45, 4, 4, 0.05, 0.2]  # below the threshold
    out = detect("yolo", [rows.T[None]], ["person", "car"])
    (d,) = out["detections"]
    assert out["frame"] == {"width": 640, "height": 480}
    # input (150, 140)-(170, 180) -> frame x*2, (y-40)*2
    assert d["box"] == [300.0, 200.0, 340.0, 280.0] and d["label"] == "person"
    assert d["box_norm"] == pytest.approx([300 / 640, 200 / 480, 340 / 640, 280 / 480], abs=1e-5)


def test_a_layout_that_cannot_be_told_is_refused_at_load_with_the_key_to_set():
    square = np.zeros((1, 6, 6), np.float32)
    with pytest.raises(ConfigError, match=r"set postprocess\.layout: cn .* or nc"):
        Detect(DetectPostprocess(type="detect", format="yolo"), specs(square), None, "m")
    Detect(DetectPostprocess(type="detect", format="yolo", layout="nc"), specs(square), None, "m")
    with pytest.raises(ConfigError, match="both dimensions equal 4\\+C"):  # 2 labels: 4+2 == 6 == 6
        Detect(DetectPostprocess(type="detect", format="yolo"), specs(square), ["a", "b"], "m")
    wide = Detect(
        DetectPostprocess(type="detect", format="yolo"),
        specs(np.zeros((1, 6, 9), np.float32)),
        ["a", "b"],
        "m",
    )
    assert wide.layout == "cn"  # the labels' count decides
    with pytest.raises(ConfigError, match="3 labels fit neither dimension"):
        Detect(
            DetectPostprocess(type="detect", format="yolo"),
            specs(np.zeros((1, 9, 30), np.float32)),
            list("abc"),
            "m",
        )


def test_yolov5_multiplies_objectness_into_the_class_scores():
    rows = np.array(
        [
            [160, 160, 20, 20, 0.9, 0.5, 1.0],
            [100, 100, 10, 10, 0.2, 0.0, 1.0],
            [200, 200, 10, 10, 0.8, 0.9, 0.1],
        ],
        np.float32,
    )
    dets = detect("yolov5", [rows[None]], ["a", "b"], layout="nc")["detections"]
    got = sorted((d["label"], round(d["score"], 3)) for d in dets)
    assert got == [("a", 0.72), ("b", 0.9)]  # the 0.2-objectness row is dropped despite class 1.0


def test_end2end_rows_are_final_boxes_with_no_nms():
    rows = np.array([[10, 50, 30, 90, 0.8, 1], [12, 50, 30, 90, 0.7, 1], [0, 0, 0, 0, 0.0, 0]], np.float32)
    dets = detect("end2end", [rows[None]], ["a", "b"])["detections"]
    assert [(d["label"], d["box"]) for d in dets] == [
        ("b", [20.0, 20.0, 60.0, 100.0]),
        ("b", [24.0, 20.0, 60.0, 100.0]),
    ]


def test_separate_boxes_scores_and_labels_outputs():
    boxes = np.array([[[0.25, 0.25, 0.5, 0.75], [0, 0, 1, 1]]], np.float32)  # normalized xyxy of the input
    scores = np.array([[0.9, 0.1]], np.float32)
    labels = np.array([[3, 0]], np.int64)
    dets = detect("boxes", [boxes, scores, labels], normalized=True, outputs=[0, 1, 2])["detections"]
    (d,) = dets
    assert d["class"] == 3 and d["box"] == [160.0, 80.0, 320.0, 400.0]
    per_class = np.array([[[0.1, 0.7], [0.2, 0.1]]], np.float32)  # [N, C] scores, no labels output
    (d,) = detect("boxes", [boxes, per_class], normalized=True)["detections"]
    assert d["class"] == 1 and d["score"] == pytest.approx(0.7)


def test_tflite_ssd_boxes_are_mapped_from_the_normalized_input():
    boxes = np.array([[[0.25, 0.5, 0.75, 1.0]]], np.float32)  # ymin, xmin, ymax, xmax
    outs = [boxes, np.array([[2]], np.float32), np.array([[0.6]], np.float32), np.array([1], np.float32)]
    (d,) = detect("ssd", outs, list("abc"))["detections"]
    assert d["label"] == "c" and d["box"] == [320.0, 80.0, 640.0, 400.0]


def test_a_dynamic_output_that_turns_out_ambiguous_fails_that_frame_not_the_worker():
    """Dynamic dims are decided per frame: an undecidable one is the frame's decode error
    (ValueError, which Model.decode answers as an inference error), not an internal crash."""
    dynamic = [TensorSpec("o", (1, None, None), np.dtype(np.float32))]
    post = Detect(DetectPostprocess(type="detect", format="yolo"), dynamic, None, "m")
    with pytest.raises(ValueError, match=r"set postprocess\.layout"):
        post([np.zeros((1, 6, 6), np.float32)], "cam0", LETTERBOX)
