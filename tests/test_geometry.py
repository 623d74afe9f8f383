"""Letterbox preprocessing and mapping model-input coordinates back to the source frame."""

import numpy as np
import pytest
from PIL import Image

from inferd.config import PreprocessConfig, parse_config
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import Geometry, geometry
from inferd.engine.preprocess import Preprocessor
from inferd.errors import ConfigError


def spec(shape, dtype=np.uint8):
    return TensorSpec("input", tuple(shape), np.dtype(dtype))


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_the_value():
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pre = Preprocessor(
        PreprocessConfig(resize=[320, 320], letterbox=True, pad_value=114), spec([1, 320, 320, 3])
    )
    out = pre(frame)[0]
    # reference: Pillow resize to 320x240, pasted centred on a 114-grey canvas
    canvas = np.full((320, 320, 3), 114, np.uint8)
    canvas[40:280] = np.asarray(Image.fromarray(frame).resize((320, 240), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, canvas)
    tall = Preprocessor(PreprocessConfig(resize=[64, 64], letterbox=True, pad_value=0), spec([1, 64, 64, 3]))
    out = tall(np.full((100, 50, 3), 255, np.uint8))[0]
    assert (out[:, :16] == 0).all() and (out[:, 16:48] == 255).all() and (out[:, 48:] == 0).all()


def test_top_left_letterbox_pads_right_and_bottom_and_maps_back():
    cfg = PreprocessConfig(resize=[64, 64], letterbox=True, letterbox_align="top-left", pad_value=0)
    pre = Preprocessor(cfg, spec([1, 64, 64, 3]))
    out = pre(np.full((100, 50, 3), 255, np.uint8))[0]  # 100x50 -> 64x32, then 32 columns of pad
    assert (out[:, :32] == 255).all() and (out[:, 32:] == 0).all()
    g = pre.geometry((100, 50, 3))
    assert g.input_window() == (0.0, 0.0, 32.0, 64.0)
    np.testing.assert_allclose(g.to_frame(np.array([[0.0, 0.0, 32.0, 64.0]])), [[0, 0, 50, 100]])


def test_letterbox_needs_an_exact_size():
    with pytest.raises(ConfigError, match="letterbox needs resize: \\[height, width\\]"):
        parse_config("models:\n  - {name: a, path: a.onnx, preprocess: {resize: 320, letterbox: true}}\n")


def test_geometry_maps_the_input_back_onto_the_frame():
    g = geometry(480, 640, (320, 320), True, None)  # letterbox: scale 0.5, 40 rows of padding
    np.testing.assert_allclose(g.to_frame(np.array([[0, 40, 320, 280]])), [[0, 0, 640, 480]])
    assert g.input_window() == (0.0, 40.0, 320.0, 280.0)
    stretch = geometry(480, 640, (320, 320), False, None)
    np.testing.assert_allclose(stretch.to_frame(np.array([[160, 160]])), [[320, 240]])
    crop = geometry(480, 640, 256, False, 224)  # short side 256 -> 256x341, centre 224x224
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)
    np.testing.assert_allclose(
        crop.to_frame(np.array([[0, 0]])), [[left * 640 / 341, top * 480 / 256]], rtol=1e-9
    )
    assert Geometry.identity(64, 48).to_frame(np.array([[3, 4]])).tolist() == [[3, 4]]


def test_a_passed_through_tensor_is_its_own_frame():
    pre = Preprocessor(PreprocessConfig(), spec([1, 3, 48, 64], np.float32))
    assert pre.geometry((1, 3, 48, 64)) == Geometry.identity(64, 48)
    assert pre.geometry((3, 48, 64)) == Geometry.identity(64, 48)  # lacks only the batch dimension
    assert Preprocessor(PreprocessConfig(), spec([1, 128], np.float32)).geometry((1, 128)) is None
