"""Frames on disk for the tools: a folder of images or .npy files, or a folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.errors import InferdError
from inferd.protocol import decode_image

IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}
OTHER_IMAGE_SUFFIXES = {".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif"}
SUFFIXES = {*IMAGE_SUFFIXES, *OTHER_IMAGE_SUFFIXES, ".npy", ".npz"}


class FramesError(InferdError):
    """A frame folder or file the tools cannot use."""


def frame_files(folder: Path) -> list[Path]:
    """Every image and .npy file under the folder (recursively), in a stable order."""
    if not folder.is_dir():
        raise FramesError(f"{folder} is not a folder")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not found:
        raise FramesError(
            f"{folder} holds no frames: expected images "
            f"({', '.join(sorted(SUFFIXES - {'.npy', '.npz'}))}), .npy arrays or .npz (one array per input)"
        )
    return found


def read_frame(path: Path) -> np.ndarray:
    """An image as an HxWx3 (or HxW grey) uint8 array, as the daemon decodes it; a .npy as stored."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in IMAGE_SUFFIXES:
            return decode_image(path.read_bytes(), IMAGE_SUFFIXES[suffix])
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img.convert("L" if img.mode in ("L", "I;16", "1") else "RGB"))
    except (OSError, ValueError, InferdError) as e:
        raise FramesError(f"cannot read {path}: {e}") from None


def read_parts(path: Path) -> list[np.ndarray]:
    """A frame as the list of arrays a model takes, one per input: a .npz holds one array per
    input (in the order they were saved), anything else is one array."""
    if path.suffix.lower() != ".npz":
        return [read_frame(path)]
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [npz[name] for name in npz.files]
    except (OSError, ValueError) as e:
        raise FramesError(f"cannot read {path}: {e}") from None


def labelled_files(folder: Path) -> dict[str, list[Path]]:
    """A folder per class: {class folder name: its frame files}. Folders without frames are skipped."""
    if not folder.is_dir():
        raise FramesError(f"{folder} is not a folder")
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if files:
            classes[sub.name] = files
    if not classes:
        raise FramesError(
            f"{folder} has no class folders with frames: expected {folder}/<class>/<frame>, one folder "
            "per class named like the model's labels (or its class index)"
        )
    return classes
