import numpy as np
import pytest

from inferd.config import ClassifyPostprocess, DetectPostprocess, SmoothConfig
from inferd.engine.backends.base import TensorSpec
from inferd.engine.postprocess import Classify, Detect, Smoother, nms
from inferd.errors import ConfigError

LOGITS = [TensorSpec("logits", (1, 5), np.dtype(np.float32))]
LABELS = ["cat", "dog", "fox", "owl", "yak"]


def test_classify_top_k_with_labels_and_softmax():
    post = Classify(ClassifyPostprocess(type="classify", top_k=3, softmax=True), LOGITS, LABELS, "m")
    logits = np.array([[1.0, 3.0, 0.5, 2.0, -1.0]], np.float32)
    out = post([logits], "cam0")["classes"]
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert [c["label"] for c in out] == ["dog", "owl", "cat"]
    assert [c["index"] for c in out] == [1, 3, 0]
    assert out[0]["score"] == pytest.approx(p[1], rel=1e-6)
    post = Classify(ClassifyPostprocess(type="classify", top_k=5, min_score=0.9), LOGITS, None, "m")
    out = post([np.array([[0.1, 0.95, 0.2, 0.91, 0.0]], np.float32)], "cam0")["classes"]
    assert [(c["index"], c["label"]) for c in out] == [(1, None), (3, None)]


def test_classify_output_must_exist():
    with pytest.raises(ConfigError, match="output 'probs' does not exist"):
        Classify(ClassifyPostprocess(type="classify", output="probs"), LOGITS, None, "m")


def test_smoothing_is_a_per_source_ema_that_resets_when_idle():
    now = [100.0]
    smooth = Smoother(SmoothConfig(ema=0.75, reset_after_s=2.0), clock=lambda: now[0])
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(smooth("cam0", a), a)
    now[0] += 0.1
    np.testing.assert_allclose(smooth("cam0", b), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(smooth("cam1", b), b)  # another source has its own average
    now[0] += 0.1
    np.testing.assert_allclose(smooth("cam0", b), 0.75 * (0.75 * a + 0.25 * b) + 0.25 * b)
    now[0] += 5.0  # idle longer than reset_after_s
    np.testing.assert_allclose(smooth("cam0", a), a)


def test_classify_with_smoothing_changes_its_mind_gradually():
    cfg = ClassifyPostprocess(type="classify", top_k=1, smooth=SmoothConfig(ema=0.8))
    post = Classify(cfg, LOGITS, LABELS, "m")
    cat = np.array([[1, 0, 0, 0, 0]], np.float32)
    dog = np.array([[0, 1, 0, 0, 0]], np.float32)
    assert post([cat], "s")["classes"][0]["label"] == "cat"
    assert post([dog], "s")["classes"][0]["label"] == "cat"  # 0.8 cat vs 0.2 dog
    for _ in range(5):
        top = post([dog], "s")["classes"][0]
    assert top["label"] == "dog"


def naive_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            xx1, yy1 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            xx2, yy2 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0, xx2 - xx1) * max(0, yy2 - yy1)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_matches_a_naive_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.uniform(0, 100, (40, 2))
        wh = rng.uniform(5, 40, (40, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.uniform(0, 1, 40).astype(np.float32)
        assert nms(boxes, scores, 0.45).tolist() == naive_nms(boxes.tolist(), scores.tolist(), 0.45)


def yolo_output(transposed=False):
    # 3 candidates, 2 classes: two overlapping boxes of class 0 and one of class 1 on top of them
    rows = np.array(
        [
            [50, 50, 20, 20, 0.9, 0.1],
            [52, 50, 20, 20, 0.8, 0.1],
            [51, 50, 20, 20, 0.1, 0.7],
            [10, 10, 4, 4, 0.1, 0.2],  # below threshold
        ],
        np.float32,
    )
    out = rows.T[None] if transposed else rows[None]
    return [out], [TensorSpec("out", out.shape, np.dtype(np.float32))]


@pytest.mark.parametrize("transposed", [False, True])
def test_yolo_decoding_threshold_and_classwise_nms(transposed):
    outputs, specs = yolo_output(transposed)
    cfg = DetectPostprocess(type="detect", format="yolo", score_threshold=0.5)
    dets = Detect(cfg, specs, ["person", "car"], "m")(outputs, "cam0")["detections"]
    assert [(d["label"], round(d["score"], 2)) for d in dets] == [("person", 0.9), ("car", 0.7)]
    assert dets[0]["box"] == [40.0, 40.0, 60.0, 60.0]
    agnostic = DetectPostprocess(type="detect", format="yolo", score_threshold=0.5, class_agnostic_nms=True)
    dets = Detect(agnostic, specs, ["person", "car"], "m")(outputs, "cam0")["detections"]
    assert [d["class"] for d in dets] == [0]


def test_ssd_outputs_are_thresholded_counted_and_reordered_to_xyxy():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.4]]], np.float32)
    classes = np.array([[2, 0, 1]], np.float32)
    scores = np.array([[0.9, 0.3, 0.8]], np.float32)
    count = np.array([2], np.float32)
    specs = [
        TensorSpec(n, a.shape, a.dtype) for n, a in zip("bcsn", (boxes, classes, scores, count), strict=True)
    ]
    cfg = DetectPostprocess(type="detect", format="ssd", score_threshold=0.25)
    dets = Detect(cfg, specs, ["a", "b", "c"], "m")([boxes, classes, scores, count], "s")["detections"]
    # the third box is beyond `count`; the second is kept (0.3 >= 0.25); boxes become x1,y1,x2,y2
    assert [(d["label"], d["score"]) for d in dets] == [("c", pytest.approx(0.9)), ("a", pytest.approx(0.3))]
    assert dets[0]["box"] == pytest.approx([0.2, 0.1, 0.6, 0.5])


def test_weighted_nms_merges_overlaps_and_survives_degenerate_boxes():
    from inferd.engine.postprocess import weighted_nms

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 50, 50], [60, 60, 55, 70]], np.float32)
    scores = np.array([0.9, 0.6, 0.8, 0.7], np.float32)  # the last two have no area (or negative)
    kps = np.zeros((4, 1, 2), np.float32)
    out_boxes, out_scores, _, out_kps = weighted_nms(boxes, scores, np.zeros(4, np.int64), kps, 0.3)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    np.testing.assert_allclose(out_boxes[0], (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5, rtol=1e-6)
    assert out_kps.shape == (3, 1, 2)
