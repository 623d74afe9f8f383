"""inferd check --accuracy: top-1 per model on labelled frames (a folder per class)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from inferd.cli import main
from inferd.config import parse_config
from inferd.engine.models import load_model
from inferd.tools.accuracy import measure_accuracy
from inferd.tools.frames import labelled_files, read_frame
from tests.conftest import EXAMPLES, MODELS
from tests.tools.conftest import TEXTDIR_ENTRY

PREPROCESS = "{resize: [64, 64], scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"
CONFIG = f"""
models:
  - name: float
    path: {MODELS}/classifier_float.onnx
    labels: {MODELS}/labels.txt
    preprocess: {PREPROCESS}
    postprocess: {{type: classify, softmax: true}}
  - name: int8
    path: {MODELS}/classifier_int8.onnx
    labels: {MODELS}/labels.txt
    preprocess: {PREPROCESS}
    postprocess: {{type: classify, softmax: true}}
  - name: tflite
    path: {MODELS}/classifier_int8.tflite
    labels: {MODELS}/labels.txt
    preprocess: {PREPROCESS}
    postprocess: {{type: classify, softmax: true}}
"""


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, camera_frames) -> Path:
    """The camera frames filed under the class the float model gives them: its top-1 is 100 % by
    construction, and the quantized models' top-1 is their agreement with it."""
    root = tmp_path_factory.mktemp("labelled")
    model = load_model(parse_config(CONFIG).models[0], EXAMPLES)
    for f in sorted(camera_frames.glob("*.png")):
        label = model.predict([read_frame(f)])[1]["classes"][0]["label"]
        (root / label).mkdir(exist_ok=True)
        shutil.copy(f, root / label / f.name)
    model.close()
    return root


def test_check_reports_top1_per_model(tmp_path, labelled, capsys):
    (tmp_path / "inferd.yaml").write_text(CONFIG)
    assert main(["check", "-c", str(tmp_path / "inferd.yaml"), "--accuracy", str(labelled), "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert acc["float"]["top1"] == 1.0 and acc["float"]["frames"] == 40 and acc["float"]["confusions"] == []
    classes = labelled_files(labelled)
    for name in ("int8", "tflite"):
        r = acc[name]
        assert 0.75 <= r["top1"] <= 1.0 and r["top5"] == 1.0
        assert set(r["per_class"]) == set(classes)
        wrong = sum(c["frames"] * (1 - c["top1"]) for c in r["per_class"].values())
        assert round(wrong) == round((1 - r["top1"]) * 40)
        # the same count, independently: each frame through the model's own predict()
        model = load_model(next(m for m in parse_config(CONFIG).models if m.name == name), EXAMPLES)
        hits = sum(
            model.predict([read_frame(f)])[1]["classes"][0]["label"] == label
            for label, files in classes.items()
            for f in files
        )
        model.close()
        assert hits == round(r["top1"] * 40)
    # the text report
    assert main(["check", "-c", str(tmp_path / "inferd.yaml"), "--accuracy", str(labelled)]) == 0
    text = capsys.readouterr().out
    assert "accuracy float: top-1 100.0 %, top-5 100.0 % on 40 frames" in text


def test_real_model_on_text_lines_and_broken_frames(tmp_path, textdir_config, text_frames):
    frames = tmp_path / "frames"
    shutil.copytree(text_frames, frames)
    (frames / "180" / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (192, 48)).save(frames / "180" / "tiny.png")
    np_dir = frames / "notes"
    np_dir.mkdir()  # a folder without frames is not a class
    cfg = parse_config(textdir_config.read_text()).models[0]
    model = load_model(cfg, textdir_config.parent)
    r = measure_accuracy(model, labelled_files(frames))
    model.close()
    assert set(r.per_class) == {"0", "180"} and r.top5 is None  # 2 classes: no top-5
    assert (
        list(r.failed) == [str(frames / "180" / "broken.png")]
        and "cannot decode" in r.failed[str(frames / "180" / "broken.png")]
    )
    assert r.frames == 51 and r.top1 >= 0.9  # 50 text lines + one blank frame, the broken one not run


def test_class_folders_must_name_labels(tmp_path, textdir_model, text_frames, capsys):
    (tmp_path / "labels.txt").write_text("up\ndown\n")
    (tmp_path / "inferd.yaml").write_text(
        "models:" + TEXTDIR_ENTRY.format(name="textdir", path=textdir_model, labels="labels.txt")
    )
    assert main(["check", "-c", str(tmp_path / "inferd.yaml"), "--accuracy", str(text_frames / "0")]) == 1
    assert "no class folders" in capsys.readouterr().err
    frames = tmp_path / "frames"
    shutil.copytree(text_frames, frames)
    (frames / "0").rename(frames / "up")
    (frames / "180").rename(frames / "sideways")
    assert main(["check", "-c", str(tmp_path / "inferd.yaml"), "--accuracy", str(frames)]) == 1
    err = capsys.readouterr().err
    assert "class folder 'sideways' is not a label of model 'textdir' (its labels: up, down)" in err
