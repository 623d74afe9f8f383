"""Frames on disk for the tool tests: synthetic camera images and rendered text lines."""

from __future__ import annotations

import random
from pathlib import Path

import make_models
import numpy as np
import pytest
from PIL import Image

from tests.backends.test_pretrained import packaged, text_line

WORDS = [
    "edge", "inference", "daemon", "quantized", "model", "camera", "frame", "sensor", "metrics", "systemd",
    "board", "latency", "ZeroMQ", "Hello", "2024", "ARM", "Linux", "field", "engineer", "Raspberry", "Jetson",
]  # fmt: skip

TEXTDIR_ENTRY = """
  - name: {name}
    path: {path}
    labels: {labels}
    preprocess: {{resize: [48, 192], scale: 1/255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}
    postprocess: {{type: classify, top_k: 1}}
"""


@pytest.fixture(scope="session")
def camera_frames(tmp_path_factory) -> Path:
    """40 PNG images of two sizes (the config's resize brings them to 64x64)."""
    folder = tmp_path_factory.mktemp("camera")
    for i, img in enumerate(make_models.calibration_images(40, seed=7, size=96)):
        if i % 2:
            img = np.asarray(Image.fromarray(img).resize((120, 80)))
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def textdir_model() -> Path:
    """PaddleOCR's float text-direction classifier (0 or 180 degrees), shipped in rapidocr."""
    return packaged("rapidocr", "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def text_lines(n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """Rendered two-word lines, every other one upside down: (image, "0" or "180")."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        angle = 0 if i % 2 == 0 else 180
        out.append((text_line(" ".join(rng.sample(WORDS, 2)), angle), str(angle)))
    return out


@pytest.fixture(scope="session")
def text_frames(tmp_path_factory) -> Path:
    """A folder per class (0 and 180) of rendered text lines, usable flat for calibration too."""
    folder = tmp_path_factory.mktemp("text")
    for i, (img, label) in enumerate(text_lines(50, seed=1)):
        (folder / label).mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / label / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def textdir_config(tmp_path_factory, textdir_model) -> Path:
    folder = tmp_path_factory.mktemp("textdir")
    (folder / "labels.txt").write_text("0\n180\n")
    path = folder / "inferd.yaml"
    path.write_text("models:" + TEXTDIR_ENTRY.format(name="textdir", path=textdir_model, labels="labels.txt"))
    return path
