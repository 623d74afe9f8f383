"""TFLite: ai-edge-litert's Interpreter, or tflite-runtime's where only that is installed; an
external delegate when the config names one (tflite_delegates.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import ConfigDict, Field

from inferd.engine.backends import register
from inferd.engine.backends import tflite_delegates as delegates
from inferd.engine.backends.base import Quantization, TensorSpec, available_cores
from inferd.errors import ModelLoadError
from inferd.service.logs import LEVELS, native_stderr_to

if TYPE_CHECKING:
    from inferd.config import ModelConfig

log = logging.getLogger("inferd.runtime.litert")


class TfliteConfig(delegates.DelegateMixin):
    """Options for the TFLite interpreter: which package, XNNPACK, an external delegate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["tflite"] = "tflite"
    interpreter: Literal["auto", "ai-edge-litert", "tflite-runtime"] = Field(
        "auto", description="Which package's Interpreter to use; auto prefers ai-edge-litert."
    )
    xnnpack: bool = Field(True, description="Use the XNNPACK CPU delegate (the runtime's default).")


def interpreter_class(which: str = "auto") -> tuple[type, str]:
    """The Interpreter class and the name of the package it came from."""
    if which in ("auto", "ai-edge-litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter

            return Interpreter, "ai-edge-litert"
        except ImportError:
            if which != "auto":
                raise
    from tflite_runtime.interpreter import Interpreter

    return Interpreter, "tflite-runtime"


@register("tflite")
def load(cfg: ModelConfig, path: Path, runtime_level: str = "warning") -> TfliteBackend:
    return TfliteBackend(cfg, path, runtime_level)


class TfliteBackend:
    runtime = "tflite"

    def __init__(self, cfg: ModelConfig, path: Path, runtime_level: str = "warning") -> None:
        try:
            interpreter, self.package = interpreter_class(cfg.runtime.interpreter)
        except ImportError:
            raise ModelLoadError(
                cfg.name,
                "no TFLite runtime is installed (pip install 'inferd[tflite]', or "
                "'inferd[tflite-legacy]' on 32-bit ARM)",
            ) from None
        kwargs: dict = {"model_path": str(path), "num_threads": cfg.threads or available_cores()}
        if not cfg.runtime.xnnpack:
            # The builtin op resolver without the default (XNNPACK) delegate.
            mod = __import__(interpreter.__module__, fromlist=["OpResolverType"])
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        runtime = cfg.runtime
        delegate = delegates.load(sys.modules[interpreter.__module__], cfg.name, runtime)
        try:
            self.interpreter, constructed = _build(interpreter, kwargs, delegate, runtime_level)
        except (ValueError, RuntimeError) as e:
            if delegate is None:
                raise ModelLoadError(cfg.name, f"{self.package} cannot load {path}: {_explain(e)}") from None
            delegates.fall_back(
                cfg.name, runtime, f"delegate {runtime.delegate.library} failed on this model: {_explain(e)}"
            )
            delegate = None
            try:
                self.interpreter, constructed = _build(interpreter, kwargs, None, runtime_level)
            except (ValueError, RuntimeError) as e2:
                raise ModelLoadError(cfg.name, f"{self.package} cannot load {path}: {_explain(e2)}") from None
        name = delegates.name_of(runtime.delegate) if runtime.delegate else "delegate"
        self.placement = delegates.placement(self.interpreter, constructed, name)
        self.accelerator = delegates.accelerator(self.placement, runtime.xnnpack)
        if delegate is not None and self.placement and not self.placement.get(name):
            delegates.fall_back(
                cfg.name, runtime, f"delegate {runtime.delegate.library} took no node of the model"
            )
        itp = self.interpreter
        self.inputs = [_spec(d) for d in itp.get_input_details()]
        self.outputs = [_spec(d) for d in itp.get_output_details()]
        self.quantized = any(
            s.dtype in (np.int8, np.uint8, np.int16) and s.quantization is not None
            for s in self.inputs + self.outputs
        ) or _has_quantized_tensors(itp)
        self.quantization_format = "full-integer" if self.quantized else None
        self._in_idx = [d["index"] for d in itp.get_input_details()]
        self._out_idx = [d["index"] for d in itp.get_output_details()]

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        itp = self.interpreter
        for idx, arr in zip(self._in_idx, inputs, strict=True):
            itp.set_tensor(idx, arr)
        itp.invoke()
        return [itp.get_tensor(idx) for idx in self._out_idx]

    def close(self) -> None:
        self.interpreter = None


def _build(interpreter: type, kwargs: dict, delegate, runtime_level: str) -> tuple:
    """The interpreter, allocated, and its node count before allocation (the model's nodes and the
    external delegate's, applied in the constructor; XNNPACK adds its own when allocating)."""
    with native_stderr_to(log, LEVELS[runtime_level]):
        itp = interpreter(**kwargs, experimental_delegates=[delegate] if delegate is not None else None)
        try:
            constructed = itp._interpreter.NumNodes()
        except AttributeError:
            constructed = 0
        itp.allocate_tensors()
    return itp, constructed


def _spec(detail: dict) -> TensorSpec:
    shape = detail.get("shape_signature", detail["shape"])
    dims = tuple(int(d) if d >= 0 else None for d in shape)
    qp = detail.get("quantization_parameters") or {}
    scales = qp.get("scales", np.zeros(0))
    quant = None
    if len(scales) > 0 and np.any(scales != 0):
        quant = Quantization(
            tuple(float(s) for s in scales),
            tuple(int(z) for z in qp.get("zero_points", np.zeros(len(scales), np.int64))),
            int(qp.get("quantized_dimension", 0)) if len(scales) > 1 else None,
        )
    return TensorSpec(detail["name"], dims, np.dtype(detail["dtype"]), quant)


def _has_quantized_tensors(itp) -> bool:
    try:
        return any(
            np.dtype(t["dtype"]) in (np.int8, np.uint8) and len(t["quantization_parameters"]["scales"])
            for t in itp.get_tensor_details()
        )
    except (ValueError, KeyError):
        return False


def _explain(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = text.replace("Restored original execution plan", "; restored the original execution plan")
    if "edgetpu-custom-op" in str(e):
        return (
            f"{text} (the model was compiled for the Edge TPU: load it with its delegate, runtime: "
            "{type: tflite, delegate: {library: libedgetpu.so.1}}, on a board with a Coral; or use "
            "the model from before the Edge TPU compiler on the CPU)"
        )
    if "custom op" in text.lower() or "unresolved" in text.lower():
        return f"{text} (the model uses an op this runtime does not have; register it or re-convert)"
    if "identifier" in text.lower() or "not a valid" in text.lower() or "flatbuffer" in text.lower():
        return f"{text} (the file is not a valid TFLite model: truncated or corrupt?)"
    return text
