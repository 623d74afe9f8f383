"""The runtime registry: one file per runtime, registered by name with @register."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferd.config import ModelConfig
    from inferd.engine.backends.base import Backend

Loader = Callable[["ModelConfig", Path, str], "Backend"]
BACKENDS: dict[str, Loader] = {}

# File extensions that name a runtime when a model entry does not.
EXTENSIONS = {".onnx": "onnx", ".ort": "onnx", ".tflite": "tflite", ".lite": "tflite"}


def register(name: str) -> Callable[[Loader], Loader]:
    def wrap(loader: Loader) -> Loader:
        BACKENDS[name] = loader
        return loader

    return wrap


def create_backend(cfg: ModelConfig, path: Path, runtime_level: str = "warning") -> Backend:
    """Load the model at `path` with the runtime its config names.

    `runtime_level` is the lowest level of the runtime's own messages to keep.
    """
    # Importing the modules registers them; neither imports its runtime at module level.
    from inferd.engine.backends import onnx, tflite  # noqa: F401

    return BACKENDS[cfg.runtime.type](cfg, path, runtime_level)


def sniff_format(head: bytes) -> str | None:
    """Guess a model file's format from its first bytes: 'tflite', 'onnx' or None."""
    if len(head) >= 8 and head[4:8] in (b"TFL3", b"TFL2"):
        return "tflite"
    # An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    if head[:1] == b"\x08":
        return "onnx"
    return None
