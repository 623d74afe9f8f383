"""What every decoder shares: the decoded result type and finding a configured output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferd.engine.backends.base import TensorSpec
from inferd.errors import ConfigError

Decoded = dict[str, Any] | None


def output_index(outputs: Sequence[TensorSpec], key: int | str, model: str) -> int:
    names = [o.name for o in outputs]
    if isinstance(key, int):
        if not 0 <= key < len(outputs):
            raise ConfigError(f"model {model!r}: postprocess output {key} does not exist; outputs: {names}")
        return key
    if key not in names:
        raise ConfigError(f"model {model!r}: postprocess output {key!r} does not exist; outputs: {names}")
    return names.index(key)


def label(labels: list[str] | None, index: int) -> str | None:
    """The class name of `index`, when the model has labels covering it."""
    return labels[index] if labels and 0 <= index < len(labels) else None
