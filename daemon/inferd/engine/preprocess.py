"""From a frame to the model's input tensor: resize, crop, colour, normalize, layout, dtype.

Everything is whole-array numpy (or Pillow for resampling); normalization and quantization
are folded into one multiply-add per pixel. A frame that already has the model's input shape
and dtype is passed through untouched.
"""

from __future__ import annotations

import numpy as np

from inferd.config import PreprocessConfig
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import Geometry, geometry, plan
from inferd.errors import ConfigError, FrameError

_IMAGE_DTYPES = (np.uint8, np.float32)
_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "area": 4}  # PIL.Image.Resampling values


def fits(spec: TensorSpec, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True when an array of this shape and dtype can be fed to the input as it is."""
    return (
        dtype == spec.dtype
        and len(shape) == len(spec.shape)
        and all(want is None or want == got for want, got in zip(spec.shape, shape, strict=True))
    )


def image_layout(spec: TensorSpec, layout: str = "auto") -> str | None:
    """'nchw' or 'nhwc' for image-like inputs (rank 4, or rank 3 without batch), else None."""
    shape = spec.shape[1:] if len(spec.shape) == 4 else spec.shape if len(spec.shape) == 3 else None
    if shape is None:
        return None
    if layout != "auto":
        return layout
    first, last = shape[0], shape[-1]
    if first in (1, 3, 4) and last not in (1, 3, 4):
        return "nchw"
    return "nhwc"


def shape_text(shape: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


class Preprocessor:
    """Built once per model input; validated against the model when built."""

    def __init__(self, cfg: PreprocessConfig, spec: TensorSpec, model: str = "") -> None:
        self.cfg, self.spec, self.model = cfg, spec, model
        # a fixed batch above 1 takes up to that many rows (the model pads the rest)
        first = spec.shape[0] if spec.shape else None
        self.max_rows = first if isinstance(first, int) and first > 1 else None
        self.rows_spec = TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype) if self.max_rows else spec
        self.layout = image_layout(spec, cfg.layout)
        self.batched = len(spec.shape) == 4
        if self.layout is None:
            self.channels = self.height = self.width = None
        else:
            dims = spec.shape[1:] if self.batched else spec.shape
            c, h, w = dims if self.layout == "nchw" else (dims[2], dims[0], dims[1])
            self.channels, self.height, self.width = c, h, w
        self._check_config()
        self.quant = spec.quantization if spec.dtype.kind in "iu" else None
        self.scale, self.offset = self._affine()
        self._fit: tuple | None = None  # (shape, dtype) of the last frame passed through untouched
        self._geometry: dict[tuple, Geometry] = {}  # frame shape -> where its pixels land

    def _check_config(self) -> None:
        cfg, where = self.cfg, f"model {self.model!r}: preprocess"
        if self.layout is None and (cfg.resize or cfg.center_crop or cfg.normalizes):
            raise ConfigError(
                f"{where}: the input {self.spec.describe()} is not an image (rank 3 or 4); "
                "resize, center_crop and normalization do not apply"
            )
        if cfg.normalizes and self.spec.dtype.kind in "iu" and self.spec.quantization is None:
            raise ConfigError(
                f"{where}: the input {self.spec.describe()} takes integer pixels with no quantization "
                "parameters, so scale/mean/std cannot be applied; remove them (the model normalizes itself)"
            )
        for key in ("mean", "std"):
            values = getattr(cfg, key)
            if values and len(values) > 1 and self.channels and len(values) != self.channels:
                raise ConfigError(
                    f"{where}.{key}: has {len(values)} values but the model takes {self.channels} channels"
                )

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel a, b so that model_input = pixel * a + b (quantization folded in)."""
        c = self.channels or 1
        cfg = self.cfg
        scale = np.full(c, cfg.scale if cfg.scale is not None else 1.0, np.float64)
        mean = np.broadcast_to(np.asarray(cfg.mean or [0.0], np.float64), (c,))
        std = np.broadcast_to(np.asarray(cfg.std or [1.0], np.float64), (c,))
        a, b = scale / std, -mean / std
        if self.quant is not None:
            qs = (
                np.broadcast_to(np.asarray(self.quant.scale, np.float64), (c,))
                if len(self.quant.scale) in (1, c)
                else None
            )
            if qs is None:
                raise ConfigError(f"model {self.model!r}: per-channel input quantization is not supported")
            zp = np.broadcast_to(np.asarray(self.quant.zero_point, np.float64), (c,))
            a, b = a / qs, b / qs + zp
        return a.astype(np.float32), b.astype(np.float32)

    def warm_shape(self) -> list[int]:
        """A shape to warm the model up with: a dynamic batch is 1; a dynamic image size is what
        the preprocessing makes (crop, else exact resize), else 64x64 (strided detectors export
        dynamic sizes that fail at 1x1)."""
        shape = [d if d is not None else 1 for d in self.spec.shape]
        if self.layout is None:
            return shape
        cfg = self.cfg
        crop = (cfg.center_crop,) * 2 if isinstance(cfg.center_crop, int) else cfg.center_crop
        size = crop or (cfg.resize if isinstance(cfg.resize, tuple) else None) or (64, 64)
        h_at = len(shape) - (2 if self.layout == "nchw" else 3)
        for at, value in ((h_at, size[0]), (h_at + 1, size[1])):
            if self.spec.shape[at] is None:
                shape[at] = int(value)
        return shape

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if (frame.shape, frame.dtype) == self._fit:
            return frame  # the common case: the same tensor shape as the last frame (one tuple:
            # instances sharing this preprocessor never see half an update)
        spec = self.rows_spec
        if fits(spec, frame.shape, frame.dtype) and (
            self.max_rows is None or frame.shape[0] <= self.max_rows
        ):
            self._fit = (frame.shape, frame.dtype)
            return frame
        if len(spec.shape) >= 2 and spec.shape[0] in (1, None) and fits(spec, (1, *frame.shape), frame.dtype):
            return frame[None]
        image = as_image(frame) if self.layout is not None else None
        if image is None:
            raise FrameError(
                "shape" if frame.dtype == spec.dtype else "dtype",
                f"frame {shape_text(frame.shape)} {frame.dtype} does not fit the input "
                f"{spec.describe()} of model {self.model!r}",
            )
        return self._image(image)

    def geometry(self, shape: tuple[int, ...]) -> Geometry | None:
        """Where this input's pixels lie in a frame of `shape` (None for non-image inputs)."""
        got = self._geometry.get(shape)
        if got is not None or self.layout is None:
            return got
        spec = self.rows_spec
        if fits(spec, shape, spec.dtype) or fits(spec, (1, *shape), spec.dtype):  # passed through
            dims = shape[-3:]
            h, w = (dims[1], dims[2]) if self.layout == "nchw" else (dims[0], dims[1])
            got = Geometry.identity(int(w), int(h))
        elif (hw := image_size(shape)) is not None:
            cfg = self.cfg
            got = geometry(hw[0], hw[1], cfg.resize, cfg.letterbox, cfg.center_crop, cfg.letterbox_align)
        if got is not None and len(self._geometry) < 64:
            self._geometry[shape] = got
        return got

    def _image(self, frame: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        if frame.dtype not in _IMAGE_DTYPES:
            raise FrameError(
                "dtype",
                f"image frames must be uint8 or float32, got frame {shape_text(frame.shape)} {frame.dtype}",
            )
        img = frame[:, :, None] if frame.ndim == 2 else frame
        if img.shape[2] != self.channels:
            n = img.shape[2]
            raise FrameError(
                "shape",
                f"frame {img.shape[0]}x{img.shape[1]} has {n} channel{'s' if n != 1 else ''}; "
                f"model {self.model!r} takes {self.channels}",
            )
        if cfg.resize is not None:
            size, pad, _ = plan(
                img.shape[0], img.shape[1], cfg.resize, cfg.letterbox, None, cfg.letterbox_align
            )
            img = resize(img, size, cfg.interpolation)
            if pad is not None:
                img = letterbox(img, pad, cfg.pad_value)
        if cfg.center_crop is not None:
            img = center_crop(img, cfg.center_crop)
        h, w = img.shape[:2]
        if (self.height not in (None, h)) or (self.width not in (None, w)):
            sent = f"frame {frame.shape[0]}x{frame.shape[1]}"
            if (h, w) != frame.shape[:2]:
                sent += f" is {h}x{w} after preprocessing"
            raise FrameError(
                "shape",
                f"{sent} but model {self.model!r} takes {shape_text((self.height, self.width))}; "
                "send frames of that size or set preprocess.resize",
            )
        if cfg.frame_color != cfg.color and img.shape[2] >= 3:
            img = img[:, :, [2, 1, 0, *range(3, img.shape[2])]]
        return self._convert(img)

    def _convert(self, img: np.ndarray) -> np.ndarray:
        """Normalize/quantize and lay out an HWC image as the model's input."""
        dtype = self.spec.dtype
        if self.layout == "nchw":
            img = img.transpose(2, 0, 1)
            a, b = self.scale[:, None, None], self.offset[:, None, None]
        else:
            a, b = self.scale, self.offset
        if dtype.kind in "iu" and self.quant is None:
            out = img.astype(dtype, copy=False)  # raw pixels for a model that normalizes itself
        else:
            x = np.multiply(img, a, dtype=np.float32, order="C")
            x += b
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                np.rint(x, out=x)
                np.clip(x, info.min, info.max, out=x)
            out = x.astype(dtype, copy=False)
        out = np.ascontiguousarray(out)
        return out[None] if self.batched else out


def _channels_first(shape: tuple[int, ...]) -> bool:
    return shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)


def image_size(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(height, width) of a frame `as_image` accepts, from its shape alone."""
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return (shape[1], shape[2]) if _channels_first(shape) else (shape[0], shape[1])
    return None


def as_image(frame: np.ndarray) -> np.ndarray | None:
    """An HW or HWC view of a frame: HxW, HxWxC, CxHxW, or any of those with a batch of 1
    ([1, H, W, 3] or [1, 3, H, W] tensors, as Frigate sends them); None for other shapes."""
    if frame.ndim == 4 and frame.shape[0] == 1:
        frame = frame[0]
    if frame.ndim == 3 and _channels_first(frame.shape):
        return frame.transpose(1, 2, 0)
    return frame if frame.ndim in (2, 3) else None


def resize(img: np.ndarray, size: int | tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize an HWC image with Pillow. An int sets the shorter side, like torchvision's Resize."""
    from PIL import Image

    h, w = img.shape[:2]
    if isinstance(size, int):
        short, long = min(h, w), max(h, w)
        if short == size:
            return img
        new_short, new_long = size, int(size * long / short)
        new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    else:
        new_h, new_w = size
    if (new_h, new_w) == (h, w):
        return img
    resample = Image.Resampling(_FILTERS[interpolation])
    if img.dtype == np.uint8 and img.shape[2] in (1, 3, 4):
        pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else np.ascontiguousarray(img))
        out = np.asarray(pil.resize((new_w, new_h), resample))
        return out[:, :, None] if out.ndim == 2 else out
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(img[:, :, i], np.float32), mode="F").resize(
                (new_w, new_h), resample
            )
        )
        for i in range(img.shape[2])
    ]
    return np.stack(planes, axis=2).astype(img.dtype, copy=False)


def letterbox(img: np.ndarray, pad: tuple[int, int, int, int], value: float) -> np.ndarray:
    """Pad an HWC image: (top, bottom, left, right) rows/columns of `value`."""
    top, bottom, left, right = pad
    if not any(pad):
        return img
    h, w, c = img.shape
    out = np.empty((h + top + bottom, w + left + right, c), img.dtype)
    out[...] = value
    out[top : top + h, left : left + w] = img
    return out


def center_crop(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crop the centre (a view), rounding offsets like torchvision's CenterCrop."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = img.shape[:2]
    if ch > h or cw > w:
        raise FrameError("shape", f"frame {h}x{w} is smaller than center_crop {ch}x{cw}")
    top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
    return img[top : top + ch, left : left + cw]
