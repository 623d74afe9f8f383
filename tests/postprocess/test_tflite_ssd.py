"""TFLite's detection postprocess for real: a TFLite model whose last op is the runtime's own
TFLite_Detection_PostProcess custom op (what SSD MobileNet, EfficientDet-Lite and the Coral
detectors end with), run by LiteRT, decoded by inferd into the source frame's pixels. The raw
box encodings and class scores are constants chosen so the right answer is known from the op's
definition (centre-size encoding against anchors, background class 0, NMS)."""

import math

import numpy as np
import pytest
from flatbuffers import flexbuffers

from inferd.config import parse_config
from inferd.engine.models import load_model

make_models = pytest.importorskip("make_models")  # examples/, on sys.path by conftest
tfl = make_models.tfl

# anchors: y_center, x_center, h, w (normalized). Class columns: background, person, car.
ANCHORS = np.array(
    [[0.50, 0.25, 0.20, 0.10], [0.51, 0.26, 0.20, 0.10], [0.25, 0.75, 0.30, 0.40], [0.8, 0.8, 0.1, 0.1]],
    np.float32,
)
SCORES = np.array(
    [[0.0, 0.9, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.7], [0.0, 0.1, 0.05]], np.float32
)  # anchor 1 overlaps anchor 0 (same class, lower score): suppressed; anchor 3: below threshold
ENCODINGS = np.zeros((4, 4), np.float32)
ENCODINGS[2] = [1.0, -2.0, 0.0, math.log(0.5) * 5.0]  # ty, tx, th, tw with scales 10, 10, 5, 5
OPTIONS = {
    "max_detections": 10, "max_classes_per_detection": 1, "detections_per_class": 100,
    "use_regular_nms": False, "nms_score_threshold": 0.3, "nms_iou_threshold": 0.5, "num_classes": 2,
    "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0,
}  # fmt: skip


def expected_boxes() -> list[tuple[int, list[float], float]]:
    """(class, [ymin, xmin, ymax, xmax] normalized, score) from the op's definition, best first."""
    out = []
    for i in (0, 2):
        yc, xc, h, w = (float(v) for v in ANCHORS[i])
        ty, tx, th, tw = (float(v) for v in ENCODINGS[i])
        yc, xc = ty / 10.0 * h + yc, tx / 10.0 * w + xc
        h, w = math.exp(th / 5.0) * h, math.exp(tw / 5.0) * w
        cls = int(np.argmax(SCORES[i][1:]))
        out.append((cls, [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], float(SCORES[i].max())))
    return out


def build_ssd(path) -> None:
    """image [1, 64, 64, 3] -> (mean * 0 + constants) -> TFLite_Detection_PostProcess -> 4 outputs."""
    g = make_models._TFLiteGraph()
    f32 = tfl.TensorType.FLOAT32
    image = g.tensor("image", [1, 64, 64, 3], f32)
    axes = g.tensor("axes", [3], tfl.TensorType.INT32, np.array([1, 2, 3], np.int32))
    mean = g.tensor("mean", [1], f32)
    zero = g.tensor("zero", [1], f32, np.zeros(1, np.float32))
    nothing = g.tensor("nothing", [1], f32)
    enc_const = g.tensor("enc_const", [1, 4, 4], f32, ENCODINGS[None])
    cls_const = g.tensor("cls_const", [1, 4, 3], f32, SCORES[None])
    encodings = g.tensor("box_encodings", [1, 4, 4], f32)
    classes = g.tensor("class_predictions", [1, 4, 3], f32)
    anchors = g.tensor("anchors", [4, 4], f32, ANCHORS)
    outs = [
        g.tensor("detection_boxes", [1, 10, 4], f32),
        g.tensor("detection_classes", [1, 10], f32),
        g.tensor("detection_scores", [1, 10], f32),
        g.tensor("num_detections", [1], f32),
    ]
    ops = []

    def op(code: int, inputs, outputs, options=None, custom: bytes | None = None, name: str = "") -> None:
        key = (code, name)
        codes = [c for c, _ in ops]
        if key not in codes:
            ops.append((key, None))
        o = make_models._obj(
            tfl.OperatorT, opcodeIndex=[c for c, _ in ops].index(key), inputs=inputs, outputs=outputs
        )
        if options is not None:
            o.builtinOptionsType = getattr(tfl.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        if custom is not None:
            o.customOptions, o.customOptionsFormat = list(custom), tfl.CustomOptionsFormat.FLEXBUFFERS
        g.ops.append(o)

    op(tfl.BuiltinOperator.MEAN, [image, axes], [mean], make_models._obj(tfl.ReducerOptionsT, keepDims=False))
    op(tfl.BuiltinOperator.MUL, [mean, zero], [nothing], make_models._obj(tfl.MulOptionsT))
    op(tfl.BuiltinOperator.ADD, [enc_const, nothing], [encodings], make_models._obj(tfl.AddOptionsT))
    op(tfl.BuiltinOperator.ADD, [cls_const, nothing], [classes], make_models._obj(tfl.AddOptionsT))
    op(tfl.BuiltinOperator.CUSTOM, [encodings, classes, anchors], outs,
       custom=bytes(flexbuffers.Dumps(OPTIONS)), name="TFLite_Detection_PostProcess")  # fmt: skip
    g.opcodes = [key for key, _ in ops]
    codes = []
    for code, name in g.opcodes:
        c = make_models._obj(
            tfl.OperatorCodeT, deprecatedBuiltinCode=min(code, 127), builtinCode=code, version=1
        )
        if name:
            c.customCode = name
        codes.append(c)
    maps = [
        [make_models._obj(tfl.TensorMapT, name=g.tensors[i].name, tensorIndex=i) for i in ids]
        for ids in ([image], outs)
    ]
    sig = make_models._obj(tfl.SignatureDefT, signatureKey="serving_default", inputs=maps[0], outputs=maps[1])
    sub = make_models._obj(tfl.SubGraphT, tensors=g.tensors, inputs=[image], outputs=outs, operators=g.ops)
    model = make_models._obj(tfl.ModelT, version=3, operatorCodes=codes, subgraphs=[sub], buffers=g.buffers)
    model.description, model.signatureDefs = "ssd postprocess test", [sig]
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


@pytest.mark.parametrize("letterbox", [False, True])
def test_the_runtimes_detection_postprocess_lands_in_frame_pixels(tmp_path, letterbox):
    build_ssd(tmp_path / "ssd.tflite")
    (tmp_path / "labels.txt").write_text("person\ncar\n")
    pre = "{resize: [64, 64], letterbox: true, pad_value: 0}" if letterbox else "{resize: [64, 64]}"
    cfg = parse_config(f"""
models:
  - name: ssd
    path: {tmp_path / "ssd.tflite"}
    labels: {tmp_path / "labels.txt"}
    preprocess: {pre}
    postprocess: {{type: detect, format: ssd, score_threshold: 0.3}}
""")  # fmt: skip
    model = load_model(cfg.models[0], tmp_path)
    frame = np.zeros((480, 640, 3), np.uint8)
    raw, decoded = model.predict([frame], "cam0")
    assert int(raw[3][0]) == 2  # the op itself kept two: NMS and the threshold ran in the runtime
    dets = decoded["detections"]
    assert [d["label"] for d in dets] == ["person", "car"]
    # 640x480 stretched onto 64x64: x * 640, y * 480; letterboxed: scale 640/64 = 10 with 8 rows of
    # padding on top and bottom of the 48-row image: y = (y_norm * 64 - 8) * 10
    for d, (cls, (ymin, xmin, ymax, xmax), score) in zip(dets, expected_boxes(), strict=True):
        if letterbox:
            want = [xmin * 640, (ymin * 64 - 8) * 10, xmax * 640, (ymax * 64 - 8) * 10]
        else:
            want = [xmin * 640, ymin * 480, xmax * 640, ymax * 480]
        want = np.clip(want, 0, [640, 480, 640, 480])
        assert d["class"] == cls and d["score"] == pytest.approx(score, rel=1e-5)
        np.testing.assert_allclose(d["box"], want, atol=0.02)
        np.testing.assert_allclose(d["box_norm"], want / [640, 480, 640, 480], atol=1e-4)
    model.close()
