"""onnxruntime: float, QDQ, QOperator and dynamic-quantized models, on the CPU or the execution
providers the config names (onnx_providers.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import ConfigDict, Field

from inferd.engine.backends import onnx_providers as eps
from inferd.engine.backends import register
from inferd.engine.backends.base import TensorSpec, available_cores
from inferd.engine.backends.onnx_graph import read_graph
from inferd.errors import ModelLoadError
from inferd.service.logs import LEVELS, native_stderr_to

if TYPE_CHECKING:
    from inferd.config import ModelConfig

log = logging.getLogger("inferd.runtime.onnxruntime")

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
# x86 without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4): onnxruntime's U8S8 int8
# kernels add pairs of 8-bit products in int16 and saturate. Measured on an AMD EPYC without VNNI:
# examples' classifier_int8 min cosine to the float model 0.968 (0.9995 elsewhere), larger_int8
# 0.545 (0.995). This entry makes onnxruntime convert int8 weights to run as U8U8 on such CPUs
# only (exact; larger_int8 ~25 % slower there); ARM and VNNI CPUs are unaffected.
EXACT_INT8 = ("session.x64quantprecision", "1")
# inferd level -> onnxruntime severity (0 verbose, 1 info, 2 warning, 3 error)
_SEVERITY = {"debug": 0, "info": 1, "warning": 2, "error": 3}


class OnnxConfig(eps.ProvidersMixin):
    """Options for onnxruntime: execution providers, graph optimization, int8 precision."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["onnx"] = "onnx"
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimization level."
    )
    exact_int8: bool = Field(
        True,
        description="x86 CPUs without VNNI: run int8 models with onnxruntime's exact U8U8 kernels "
        "(session.x64quantprecision) instead of the saturating U8S8 ones; no effect on ARM or VNNI.",
    )


@register("onnx")
def load(cfg: ModelConfig, path: Path, runtime_level: str = "warning") -> OnnxBackend:
    return OnnxBackend(cfg, path, runtime_level)


class OnnxBackend:
    runtime = "onnx"

    def __init__(self, cfg: ModelConfig, path: Path, runtime_level: str = "warning") -> None:
        # onnxruntime's Linux builds carry Microsoft's 1DS telemetry, which writes a per-device id
        # and a ~750 kB event store under ~/.cache/Microsoft/DeveloperTools/.onnxruntime (on the
        # board: /var/lib/inferd, on the SD card). disable_telemetry_events() does not stop those
        # files (measured, 1.32); this variable, read when the runtime starts, does.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(
                cfg.name, "onnxruntime is not installed (pip install 'inferd[onnx]')"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads or available_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[cfg.runtime.graph_optimization]
        opts.graph_optimization_level = level
        if cfg.runtime.exact_int8:
            opts.add_session_config_entry(*EXACT_INT8)
        providers = eps.requested(cfg.name, cfg.runtime, ort.get_available_providers(), ort.__version__)
        # The session logs where it placed the nodes at the verbose level only: verbose while it
        # loads (those lines are re-logged at DEBUG), the configured level when it runs.
        opts.log_severity_level = 0
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = _SEVERITY[runtime_level]
        try:
            self.session, lines = self._session(ort, path, opts, providers, runtime_level)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            if cfg.runtime.fallback == "fail" or [p.name for p in providers] == [eps.CPU]:
                raise ModelLoadError(cfg.name, f"onnxruntime cannot load {path}: {_explain(e)}") from None
            try:  # the CPU alone: if the model itself is the problem, say that instead
                self.session, lines = self._session(
                    ort, path, opts, [eps.ProviderConfig(name=eps.CPU)], runtime_level
                )
            except Exception as e2:
                raise ModelLoadError(cfg.name, f"onnxruntime cannot load {path}: {_explain(e2)}") from None
            log.warning(
                "model %s: onnxruntime cannot start %s: %s; running on %s (fallback: cpu)",
                cfg.name, ", ".join(p.name for p in providers if p.name != eps.CPU), _explain(e), eps.CPU,
            )  # fmt: skip
        self.placement = eps.placement(lines)
        registered = self.session.get_providers()
        eps.check_started(cfg.name, cfg.runtime.fallback, providers, registered, lines)
        self.accelerator = eps.accelerator(self.placement, registered)
        eps.check_placement(cfg.name, cfg.runtime.fallback, registered, self.placement, self.accelerator)
        try:
            graph = read_graph(path)
        except (ValueError, UnicodeDecodeError, IndexError) as e:
            log.debug("cannot inspect the graph of %s: %s", path, e)
            graph = None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)  # e.g. Ultralytics' names
        self.quantization_format = graph.quantization_format if graph else None
        self.quantized = self.quantization_format is not None
        self.inputs = [
            TensorSpec(
                i.name,
                _dims(i.shape),
                np.dtype(_ORT_TYPES.get(i.type, np.float32)),
                graph.input_quantization(i.name) if graph else None,
            )
            for i in self.session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(
                o.name,
                _dims(o.shape),
                np.dtype(_ORT_TYPES.get(o.type, np.float32)),
                graph.output_quantization(o.name) if graph else None,
            )
            for o in self.session.get_outputs()
        ]
        self._input_names = [i.name for i in self.inputs]
        self._output_names = [o.name for o in self.outputs]
        # The session's C++ run, without the Python wrapper's per-call input-name validation
        # (inferd has checked names and shapes already); the public run where it is missing.
        sess = getattr(self.session, "_sess", None)
        if sess is not None and hasattr(sess, "run"):
            self._run = lambda names, feed: sess.run(names, feed, self._run_options)
        else:
            self._run = lambda names, feed: self.session.run(names, feed, self._run_options)

    @staticmethod
    def _session(ort, path: Path, opts, providers: list, runtime_level: str) -> tuple:
        with native_stderr_to(log, LEVELS[runtime_level]) as lines:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=eps.session_args(providers)
            )
        return session, lines

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._run(self._output_names, dict(zip(self._input_names, inputs, strict=True)))

    def close(self) -> None:
        self.session = None
        self._run = None


def _dims(shape: list) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _explain(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Could not find an implementation" in text or "is not a registered function/op" in text:
        return f"{text} (an op onnxruntime does not implement, e.g. a custom op; re-export with standard ops)"
    if "Protobuf parsing failed" in text or "INVALID_PROTOBUF" in text:
        return f"{text} (the file is not a valid ONNX model: truncated or corrupt?)"
    if "opset" in text.lower() and "support" in text.lower():
        return f"{text} (the model needs a newer onnxruntime)"
    return text
