import numpy as np
import pytest
from PIL import Image

from inferd.config import PreprocessConfig
from inferd.engine.backends.base import Quantization, TensorSpec
from inferd.engine.preprocess import Preprocessor
from inferd.errors import ConfigError, FrameError

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGENET = PreprocessConfig(resize=256, center_crop=224, scale=1 / 255, mean=MEAN, std=STD)


def spec(shape, dtype=np.float32, quant=None):
    return TensorSpec("input", tuple(shape), np.dtype(dtype), quant)


def camera_frame(h=480, w=640, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def imagenet_reference(frame: np.ndarray) -> np.ndarray:
    """The torchvision recipe written out step by step with Pillow calls and per-channel loops."""
    img = Image.fromarray(frame)
    w, h = img.size
    if w < h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = round((w - 224) / 2), round((h - 224) / 2)
    img = img.crop((left, top, left + 224, top + 224))
    arr = np.asarray(img).astype(np.float64) / 255.0
    out = np.empty((1, 3, 224, 224), np.float64)
    for c in range(3):
        out[0, c] = (arr[:, :, c] - MEAN[c]) / STD[c]
    return out


def test_imagenet_pipeline_matches_an_independent_reference():
    pre = Preprocessor(IMAGENET, spec([1, 3, 224, 224]))
    for h, w in [(480, 640), (640, 480), (300, 300)]:
        frame = camera_frame(h, w, seed=h)
        out = pre(frame)
        assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_allclose(out, imagenet_reference(frame), atol=1e-5)


def test_constant_colour_gives_the_hand_computed_values():
    frame = np.empty((300, 400, 3), np.uint8)
    frame[:] = (255, 128, 0)
    out = Preprocessor(IMAGENET, spec([1, 3, 224, 224]))(frame)
    for c, value in enumerate((255, 128, 0)):
        assert np.allclose(out[0, c], (value / 255 - MEAN[c]) / STD[c], atol=1e-6)


def test_frame_with_the_model_shape_and_dtype_passes_untouched():
    pre = Preprocessor(IMAGENET, spec([1, 3, 224, 224]))
    tensor = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert pre(tensor) is tensor
    unbatched = tensor[0]
    out = pre(unbatched)
    assert out.shape == (1, 3, 224, 224) and np.shares_memory(out, unbatched)
    free = Preprocessor(PreprocessConfig(), spec([None, 3, None, None]))
    assert free(tensor) is tensor


def test_a_remembered_fit_does_not_let_another_shape_or_dtype_through():
    pre = Preprocessor(PreprocessConfig(), TensorSpec("x", (None, 6), np.dtype(np.float32)))
    good = np.zeros((2, 6), np.float32)
    assert pre(good) is good and pre(np.ones((2, 6), np.float32)).sum() == 12  # cached path
    assert pre(np.zeros((5, 6), np.float32)).shape == (5, 6)  # another batch still fits
    with pytest.raises(FrameError) as e:
        pre(np.zeros((2, 6), np.float64))
    assert e.value.reason == "dtype"
    with pytest.raises(FrameError) as e:
        pre(np.zeros((2, 7), np.float32))
    assert e.value.reason == "shape"


def test_bgr_frames_are_swapped_and_nhwc_layout_is_kept():
    rgb = camera_frame(64, 64)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    model = spec([1, 64, 64, 3])
    out_rgb = Preprocessor(PreprocessConfig(scale=1 / 255), model)(rgb)
    out_bgr = Preprocessor(PreprocessConfig(frame_color="bgr", scale=1 / 255), model)(bgr)
    np.testing.assert_array_equal(out_rgb, out_bgr)
    np.testing.assert_allclose(out_rgb[0], rgb / 255.0, atol=1e-6)


def test_float_is_quantized_with_the_input_scale_and_zero_point():
    q = Quantization((0.0187,), (-14,))
    pre = Preprocessor(
        PreprocessConfig(scale=1 / 255, mean=MEAN, std=STD), spec([1, 64, 64, 3], np.int8, q), "m"
    )
    frame = camera_frame(64, 64, seed=3)
    normalized = (frame / 255.0 - MEAN) / STD
    expected = np.clip(np.rint(normalized / 0.0187 - 14), -128, 127).astype(np.int8)
    out = pre(frame)
    assert out.dtype == np.int8 and out.shape == (1, 64, 64, 3)
    # folding normalization into one multiply-add may move a value sitting on .5 by one step
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out == expected[None]).mean() > 0.999


def test_uint8_model_without_quantization_takes_raw_pixels():
    frame = camera_frame(128, 128)
    out = Preprocessor(PreprocessConfig(resize=[64, 64]), spec([1, 64, 64, 3], np.uint8))(frame)
    assert out.dtype == np.uint8 and out.shape == (1, 64, 64, 3)
    expected = np.asarray(Image.fromarray(frame).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[0], expected)


def test_frames_that_do_not_fit_are_rejected_with_a_reason():
    pre = Preprocessor(PreprocessConfig(), spec([1, 3, 64, 64]), "m")
    with pytest.raises(FrameError) as e:
        pre(camera_frame(48, 48))
    assert e.value.reason == "shape" and "48x48" in str(e.value) and "preprocess.resize" in str(e.value)
    with pytest.raises(FrameError) as e:
        pre(np.zeros((64, 64, 4), np.uint8))
    assert e.value.reason == "shape" and "4 channels" in str(e.value)
    with pytest.raises(FrameError) as e:  # the message names the frame that was sent
        pre(np.zeros((7, 5), np.uint8))
    assert str(e.value) == "frame 7x5 has 1 channel; model 'm' takes 3"
    with pytest.raises(FrameError) as e:
        Preprocessor(PreprocessConfig(resize=[32, 32]), spec([1, 3, 64, 64]), "m")(camera_frame(48, 80))
    assert "frame 48x80 is 32x32 after preprocessing" in str(e.value)
    with pytest.raises(FrameError) as e:
        pre(np.zeros((64, 64, 3), np.int16))
    assert e.value.reason == "dtype" and "64x64x3 int16" in str(e.value)
    with pytest.raises(FrameError) as e:
        Preprocessor(PreprocessConfig(center_crop=100), spec([1, 3, 100, 100]))(camera_frame(64, 64))
    assert e.value.reason == "shape" and "smaller than center_crop" in str(e.value)
    vector = Preprocessor(PreprocessConfig(), spec([1, 128]), "sensor")
    assert vector(np.zeros(128, np.float32)).shape == (1, 128)
    with pytest.raises(FrameError) as e:
        vector(np.zeros(127, np.float32))
    assert e.value.reason == "shape" and "sensor" in str(e.value)
    with pytest.raises(FrameError) as e:
        vector(np.zeros(128, np.float64))
    assert e.value.reason == "dtype"


def test_config_that_cannot_apply_to_the_model_is_refused():
    with pytest.raises(ConfigError, match="integer pixels with no quantization"):
        Preprocessor(PreprocessConfig(mean=[0.5]), spec([1, 64, 64, 3], np.uint8), "m")
    with pytest.raises(ConfigError, match="not an image"):
        Preprocessor(PreprocessConfig(resize=32), spec([1, 128]), "m")
    with pytest.raises(ConfigError, match="has 3 values but the model takes 1 channels"):
        Preprocessor(PreprocessConfig(mean=MEAN), spec([1, 1, 28, 28]), "m")
