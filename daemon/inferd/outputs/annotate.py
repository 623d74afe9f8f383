"""A frame as a picture with what the model returned drawn on it (the live view, live.py).

Pillow does the drawing: boxes with label and score (and track id), keypoints, a segmentation
mask as a translucent overlay in its class colours, a classifier's top classes as text, and the
source's zones: polygons (amber, red while occupied) with their counts, lines with an arrow to
their `in` side and their counts. Runs in the HTTP thread of a viewer, never on the inference path.
"""

from __future__ import annotations

import io

import numpy as np

from inferd.protocol import PartSpec

# Distinct, readable on most scenes (Tableau 10); class c gets COLOURS[c % 10].
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
MASK_ALPHA = 0.45
ZONE, ZONE_OCCUPIED = (255, 191, 0), (230, 25, 75)  # amber; red while a counted object is in it


def picture(spec: PartSpec, data: bytes, frame_color: str = "rgb"):
    """The frame as an RGB PIL image, or None when it is not a picture (a float tensor, NCHW)."""
    from PIL import Image

    if spec.encoding in ("jpeg", "png"):
        return Image.open(io.BytesIO(data)).convert("RGB")
    if spec.dtype != np.uint8:
        return None
    shape = [d for d in spec.shape]
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    pixels = np.frombuffer(data, np.uint8)
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return Image.fromarray(pixels.reshape(shape[:2]), "L").convert("RGB")
    if len(shape) != 3 or shape[2] not in (3, 4):
        return None
    array = pixels.reshape(shape)[..., :3]
    if frame_color == "bgr":
        array = array[..., ::-1]
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def annotate(image, result: dict | None, mask_png: bytes | None = None, zones=()):
    """Draw `result` (a decoded result: detections, segmentation, classes) and the source's
    `zones` (ZoneConfig, under the boxes) on `image`, in place."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 200))
    if zones:
        _zones(draw, image.size, zones, (result or {}).get("zones") or {}, width)
    if not result:
        return image
    seg = result.get("segmentation")
    if seg is not None:
        mask = _mask(seg, mask_png)
        if mask is not None:
            _overlay(image, mask)
            draw = ImageDraw.Draw(image)
    for det in result.get("detections", ()):
        colour = COLOURS[int(det.get("class", 0)) % len(COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        # a box at the frame's edge is drawn inside it, every side visible
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(x2, image.size[0] - 1.0), min(y2, image.size[1] - 1.0)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        name = det.get("label") or f"class {det.get('class')}"
        text = f"{name} {float(det.get('score', 0)):.2f}"
        if det.get("track_id") is not None:
            text = f"#{det['track_id']} {text}"
        _label(draw, (x1, y1), text, colour)
        points = np.asarray(det.get("keypoints") or [], np.float64)
        if points.ndim == 1:  # inferd's form: x, y pairs in one list (BlazeFace: 12 numbers)
            points = points[: points.size // 2 * 2].reshape(-1, 2)
        for point in points:
            if len(point) > 2 and point[2] < 0.5:
                continue  # [x, y, score] rows: a keypoint the model is unsure of
            px, py = float(point[0]), float(point[1])
            r = width + 1
            draw.ellipse([px - r, py - r, px + r, py + r], fill=colour, outline=(255, 255, 255))
    classes = result.get("classes")
    if classes:
        lines = [f"{c.get('label') or c.get('index')} {float(c.get('score', 0)):.2f}" for c in classes[:5]]
        step = draw.textbbox((0, 0), "Ag")[3] + 6
        for i, line in enumerate(lines):
            colour = COLOURS[int(classes[i].get("index", 0)) % len(COLOURS)]
            _label(draw, (4, 4 + i * step), line, colour, above=False)
    return image


def jpeg(image, quality: int = 85) -> bytes:
    """4:4:4 (no chroma subsampling): thin coloured outlines keep their colour."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _zones(draw, size: tuple[int, int], zones, state: dict, width: int) -> None:
    """Each zone's outline in frame pixels, its name and what the result says is in it."""
    w, h = size
    for zone in zones:
        scale = (w, h) if zone.units == "normalized" else (1, 1)
        points = [(x * scale[0], y * scale[1]) for x, y in (zone.polygon or zone.line)]
        now = state.get(zone.name) or {}
        if zone.polygon is not None:
            colour = ZONE_OCCUPIED if now.get("count") else ZONE
            draw.polygon(points, outline=colour, width=width)
            text = f"{zone.name}: {now.get('count', 0)}"
        else:
            colour = ZONE
            draw.line(points, fill=colour, width=width)
            (ax, ay), (bx, by) = points
            length = max(((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5, 1e-9)
            nx, ny = -(by - ay) / length, (bx - ax) / length  # towards the `in` side (zones.py)
            mx, my, arrow = (ax + bx) / 2, (ay + by) / 2, max(12.0, min(w, h) / 12)
            tip = (mx + nx * arrow, my + ny * arrow)
            draw.line([(mx, my), tip], fill=colour, width=width)
            head = arrow / 3  # the arrowhead: two strokes back from the tip
            for sx, sy in ((ny, -nx), (-ny, nx)):
                back = (tip[0] - nx * head + sx * head / 2, tip[1] - ny * head + sy * head / 2)
                draw.line([tip, back], fill=colour, width=width)
            text = f"{zone.name}: in {now.get('in', 0)} / out {now.get('out', 0)}"
        _label(draw, points[0], text, colour, above=False)


def _label(draw, at: tuple[float, float], text: str, colour, above: bool = True) -> None:
    """White text on a `colour` band: above `at` (a box's corner) where there is room, else below."""
    x, y = at
    left, top, right, bottom = draw.textbbox((x, y), text)
    if above and y - (bottom - top) - 4 >= 0:
        y = y - (bottom - top) - 4
    left, top, right, bottom = draw.textbbox((x + 2, y + 1), text)
    draw.rectangle([left - 2, top - 1, right + 2, bottom + 1], fill=colour)
    draw.text((x + 2, y + 1), text, fill=(255, 255, 255))


def _mask(seg: dict, png: bytes | None) -> np.ndarray | None:
    """The class map of a segmentation result: from its PNG part or its run lengths."""
    h, w = int(seg["height"]), int(seg["width"])
    if seg.get("encoding") == "rle" and "values" in seg:
        flat = np.repeat(np.asarray(seg["values"], np.uint8), np.asarray(seg["counts"], np.int64))
        return flat.reshape(h, w) if flat.size == h * w else None
    if png is None:
        return None
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def _overlay(image, mask: np.ndarray) -> None:
    """Class colours over the frame (class 0, the background, left clear)."""
    from PIL import Image

    if mask.shape[::-1] != image.size:
        mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.NEAREST))
    palette = np.array([COLOURS[c % len(COLOURS)] for c in range(256)], np.uint8)
    colours = palette[mask.astype(np.int64) % 256]
    pixels = np.asarray(image, np.float32)
    shown = mask > 0
    pixels[shown] = pixels[shown] * (1 - MASK_ALPHA) + colours[shown] * MASK_ALPHA
    image.paste(Image.fromarray(pixels.astype(np.uint8), "RGB"))
