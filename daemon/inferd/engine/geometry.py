"""Where a model-input pixel lies in the source frame: preprocessing's resize, crop and letterbox
padding, undone. Decoders map boxes, keypoints and masks back with it, so results are in the
coordinates of the frame the user sent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Geometry:
    """frame_x = input_x * kx + bx (same for y); the model input is in_w x in_h pixels."""

    frame_w: int
    frame_h: int
    in_w: int
    in_h: int
    kx: float = 1.0
    bx: float = 0.0
    ky: float = 1.0
    by: float = 0.0

    @classmethod
    def identity(cls, w: int, h: int) -> Geometry:
        return cls(w, h, w, h)

    @property
    def frame(self) -> dict:
        return {"width": self.frame_w, "height": self.frame_h}

    def to_frame(self, xy: np.ndarray, normalized: bool = False) -> np.ndarray:
        """[..., 2k] alternating x, y in input pixels (or 0-1 of the input) -> frame pixels."""
        out = np.asarray(xy, np.float64).copy()
        if normalized:
            out[..., 0::2] *= self.in_w
            out[..., 1::2] *= self.in_h
        out[..., 0::2] = out[..., 0::2] * self.kx + self.bx
        out[..., 1::2] = out[..., 1::2] * self.ky + self.by
        return out

    def boxes(self, xyxy: np.ndarray, normalized: bool = False) -> np.ndarray:
        """[N, 4] x1, y1, x2, y2 -> frame pixels, clipped to the frame."""
        out = self.to_frame(xyxy, normalized)
        np.clip(out[:, 0::2], 0, self.frame_w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.frame_h, out=out[:, 1::2])
        return out

    def normalize(self, xy: np.ndarray) -> np.ndarray:
        """Frame pixels -> 0-1 of the frame."""
        out = np.asarray(xy, np.float64).copy()
        out[..., 0::2] /= self.frame_w
        out[..., 1::2] /= self.frame_h
        return out

    def input_window(self) -> tuple[float, float, float, float]:
        """The part of the model input the frame covers, in input pixels: x1, y1, x2, y2
        (letterbox padding and what a crop cut away lie outside it)."""
        x1, y1 = -self.bx / self.kx, -self.by / self.ky
        x2, y2 = (self.frame_w - self.bx) / self.kx, (self.frame_h - self.by) / self.ky
        return max(x1, 0.0), max(y1, 0.0), min(x2, self.in_w), min(y2, self.in_h)


def plan(
    h: int, w: int, resize, letterbox: bool, center_crop, align: str = "center"
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None, tuple[int, int] | None]:
    """The steps for an h x w frame: resized size, letterbox padding (top, bottom, left, right;
    `align` center or top-left) and crop size. Shared by the preprocessing (which does them) and
    `geometry` (which undoes them)."""
    size = pad = None
    if resize is not None:
        if isinstance(resize, int):
            short, long = min(h, w), max(h, w)
            new_short, new_long = resize, int(resize * long / short)
            size = (new_short, new_long) if h <= w else (new_long, new_short)
        elif letterbox:
            th, tw = resize
            r = min(th / h, tw / w)
            nh, nw = max(1, round(h * r)), max(1, round(w * r))
            top, left = ((th - nh) // 2, (tw - nw) // 2) if align == "center" else (0, 0)
            size, pad = (nh, nw), (top, th - nh - top, left, tw - nw - left)
        else:
            size = tuple(resize)
    crop = None
    if center_crop is not None:
        crop = (center_crop, center_crop) if isinstance(center_crop, int) else tuple(center_crop)
    return size, pad, crop


def geometry(h: int, w: int, resize, letterbox: bool, center_crop, align: str = "center") -> Geometry:
    """How an h x w frame maps onto the model input after the configured steps."""
    size, pad, crop = plan(h, w, resize, letterbox, center_crop, align)
    rh, rw = size if size is not None else (h, w)
    sx, sy = rw / w, rh / h  # frame -> resized
    off_x = off_y = 0.0  # input = resized * s - off
    in_h, in_w = rh, rw
    if pad is not None:
        top, bottom, left, right = pad
        off_x, off_y = -left, -top
        in_h, in_w = rh + top + bottom, rw + left + right
    if crop is not None:
        ch, cw = crop
        top, left = round((in_h - ch) / 2.0), round((in_w - cw) / 2.0)
        off_x, off_y = off_x + left, off_y + top
        in_h, in_w = ch, cw
    # input = frame * s - off  =>  frame = (input + off) / s
    return Geometry(w, h, in_w, in_h, 1 / sx, off_x / sx, 1 / sy, off_y / sy)
