"""What every runtime backend offers: tensor specs in, a list of arrays out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Quantization:
    """Affine quantization: real = scale * (q - zero_point); per-tensor, or per-channel along `axis`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def quantize(self, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        info = np.iinfo(dtype)
        scale, zp = self._broadcast(x.ndim)
        q = np.rint(x / scale) + zp
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self._broadcast(q.ndim)
        return ((q.astype(np.float32) - zp) * scale).astype(np.float32)

    def _broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point, dtype=np.float32)
        if self.axis is not None and scale.size > 1:
            shape = [1] * ndim
            shape[self.axis] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        elif scale.size == 1:
            scale, zp = scale.reshape(()), zp.reshape(())
        return scale, zp

    def to_dict(self) -> dict:
        return {"scale": list(self.scale), "zero_point": list(self.zero_point), "axis": self.axis}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. `shape` holds None for a free (symbolic) dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    quantization: Quantization | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": [d if d is not None else -1 for d in self.shape],
            "dtype": str(self.dtype),
            "quantization": self.quantization.to_dict() if self.quantization else None,
        }

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"
        text = f"{self.name} {dims} {self.dtype}"
        q = self.quantization
        if q is not None:
            if len(q.scale) == 1:
                text += f" (scale {q.scale[0]:.6g}, zero point {q.zero_point[0]})"
            else:
                text += f" (per-channel, {len(q.scale)} scales on axis {q.axis})"
        return text


class Backend(Protocol):
    """A loaded model. `infer` takes one array per input, returns one array per output.

    Backends are not required to be thread-safe for `infer`; the pipeline gives each worker
    its own instance or serialises calls.
    """

    runtime: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantized: bool
    # What runs the model, as /readyz, `inferd check` and inferd_model_info say it: an onnxruntime
    # execution provider, `delegate:LIBRARY`, `xnnpack` or `cpu`; and the graph's nodes per kernel
    # family where the runtime tells ({} where it does not). docs/accelerators.md.
    accelerator: str
    placement: dict[str, int]

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...
