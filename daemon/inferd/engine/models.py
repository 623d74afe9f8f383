"""A model ready to serve: file checks, backend, pre/postprocessing, warm-up."""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferd.config import Config, ModelConfig, PreprocessConfig, check_not_world_writable
from inferd.engine.backends import create_backend, sniff_format
from inferd.engine.backends.base import Backend
from inferd.engine.geometry import Geometry
from inferd.engine.postprocess import Decoded, make_postprocessor
from inferd.engine.preprocess import Preprocessor
from inferd.errors import ConfigError, FrameError, InferdError, InferenceError, ModelLoadError

log = logging.getLogger("inferd.models")


def candidate_paths(path: Path, base_dir: Path) -> list[Path]:
    """Where a configured path is looked for: the config file's folder, then the working directory."""
    if path.is_absolute():
        return [path]
    return list(dict.fromkeys([base_dir / path, Path.cwd() / path]))


def resolve_path(path: Path, base_dir: Path) -> Path:
    """The first of `candidate_paths` that exists (the first one when none does)."""
    tried = candidate_paths(path, base_dir)
    return next((p for p in tried if p.exists()), tried[0])


def not_found(what: str, path: Path, base_dir: Path) -> str:
    tried = candidate_paths(path, base_dir)
    if len(tried) == 1:
        return f"{what} {tried[0]} does not exist"
    return (
        f"{what} {path} not found: looked in the config file's folder ({tried[0]}), "
        f"then the working directory ({tried[1]})"
    )


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Model:
    name: str
    cfg: ModelConfig
    path: Path
    sha256: str
    backend: Backend
    labels: list[str] | None
    preprocessors: list[Preprocessor]
    postprocess: Any
    load_seconds: float = 0.0
    warmup_seconds: float | None = None  # mean of the warm-up runs after the first
    first_run_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    def prepare(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Frame arrays (one per model input) to input tensors. Raises FrameError."""
        if len(arrays) != len(self.preprocessors):
            raise FrameError(
                "parts",
                f"model {self.name!r} takes {len(self.preprocessors)} input(s), the frame has {len(arrays)}",
            )
        return [pre(a) for pre, a in zip(self.preprocessors, arrays, strict=True)]

    @property
    def fixed_batch(self) -> int | None:
        """The input's batch size when the model fixes it above 1 (smaller batches are padded)."""
        first = self.backend.inputs[0].shape[:1]
        return first[0] if first and first[0] is not None and first[0] > 1 else None

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the backend; dequantize outputs when the config says so. Raises InferenceError."""
        rows, pad = inputs[0].shape[0] if inputs[0].ndim else 1, self.fixed_batch
        if pad is not None and rows < pad:
            inputs = [np.concatenate([x, np.zeros((pad - rows, *x.shape[1:]), x.dtype)]) for x in inputs]
        try:
            outputs = self.backend.infer(inputs)
        except Exception as e:  # the runtimes raise their own types
            raise InferenceError(self.name, f"the runtime failed: {e}") from e
        if pad is not None and rows < pad:
            outputs = [o[:rows] for o in outputs]
        if self.cfg.dequantize_outputs or self.postprocess is not None:
            outputs = [
                spec.quantization.dequantize(out)
                if spec.quantization is not None and out.dtype.kind in "iu"
                else out
                for spec, out in zip(self.backend.outputs, outputs, strict=True)
            ]
        return outputs

    def infer_batch(self, batch: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """Several frames' inputs in as few runtime calls as the batch dimension allows; the
        outputs split back per frame. Raises InferenceError."""
        rows = [inputs[0].shape[0] for inputs in batch]
        cap = self.fixed_batch
        chunks, cur, cur_rows = [], [], 0
        for i, r in enumerate(rows):
            if cur and cap is not None and cur_rows + r > cap:
                chunks.append(cur)
                cur, cur_rows = [], 0
            cur.append(i)
            cur_rows += r
        chunks.append(cur)
        per_frame: list[list[np.ndarray]] = [[] for _ in batch]
        for chunk in chunks:
            n_inputs = len(batch[chunk[0]])
            stacked = [np.concatenate([batch[i][k] for i in chunk]) for k in range(n_inputs)]
            outputs = self.infer(stacked)
            total = sum(rows[i] for i in chunk)
            bounds = np.cumsum([rows[i] for i in chunk])[:-1]
            for out in outputs:
                if out.ndim == 0 or out.shape[0] != total:
                    raise InferenceError(
                        self.name, f"output of shape {out.shape} has no batch dimension of {total}"
                    )
                for i, part in zip(chunk, np.split(out, bounds), strict=True):
                    per_frame[i].append(part)
        return per_frame

    def geometry(self, arrays: list[np.ndarray]) -> Geometry | None:
        """Where the first (image) input's pixels lie in the frame (None for other inputs)."""
        if self.postprocess is None or not arrays:
            return None
        return self.preprocessors[0].geometry(arrays[0].shape)

    def decode(
        self,
        outputs: list[np.ndarray],
        source: str,
        geometry: Geometry | None = None,
        ts: float | None = None,
    ) -> Decoded:
        """`ts`: the frame's timestamp (its header's), the tracker's clock where a source gives one."""
        if self.postprocess is None:
            return None
        try:
            return self.postprocess(outputs, source, geometry, ts)
        except (ValueError, IndexError) as e:
            raise InferenceError(self.name, f"postprocess {self.cfg.postprocess.type} failed: {e}") from e

    def predict(self, arrays: list[np.ndarray], source: str = "") -> tuple[list[np.ndarray], Decoded]:
        outputs = self.infer(self.prepare(arrays))
        return outputs, self.decode(outputs, source, self.geometry(arrays))

    def warm_inputs(self) -> list[np.ndarray]:
        """Zeros shaped for a warm-up run: a dynamic batch is 1, a dynamic image size what the
        preprocessing makes (a strided detector fails at 1x1)."""
        return [
            np.zeros(pre.warm_shape(), spec.dtype)
            for spec, pre in zip(self.backend.inputs, self.preprocessors, strict=True)
        ]

    def warm(self, runs: int) -> None:
        inputs = self.warm_inputs()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.backend.infer(inputs)
            times.append(time.perf_counter() - t0)
        if times:
            self.first_run_seconds = times[0]
            rest = times[1:] or times
            self.warmup_seconds = sum(rest) / len(rest)

    def describe(self) -> dict:
        b = self.backend
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "runtime": b.runtime,
            "runtime_package": getattr(b, "package", "onnxruntime" if b.runtime == "onnx" else None),
            "quantized": b.quantized,
            "quantization": getattr(b, "quantization_format", None),
            "accelerator": getattr(b, "accelerator", "cpu"),
            "placement": getattr(b, "placement", {}),
            "threads": self.cfg.threads,
            "inputs": [s.to_dict() for s in b.inputs],
            "outputs": [s.to_dict() for s in b.outputs],
            "postprocess": self.cfg.postprocess.type,
            "load_seconds": round(self.load_seconds, 4),
            "warmup_runs": self.cfg.warmup,
            "first_run_ms": _ms(self.first_run_seconds),
            "warm_latency_ms": _ms(self.warmup_seconds),
        }

    def close(self) -> None:
        self.backend.close()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)


def load_model(
    cfg: ModelConfig, base_dir: Path, runtime_level: str = "warning", warmup: int | None = None
) -> Model:
    """Check the file, load it in its runtime, build pre/postprocessing, warm it up (`warmup`
    runs: the config's unless given)."""
    t0 = time.perf_counter()
    path = resolve_path(cfg.path, base_dir)
    if not path.exists():
        raise ModelLoadError(cfg.name, not_found("model file", cfg.path, base_dir))
    check_model_file(cfg, path)
    digest = file_sha256(path)
    if cfg.sha256 and digest.lower() != cfg.sha256.lower():
        raise ModelLoadError(
            cfg.name,
            f"sha256 of {path} is {digest}, the config pins {cfg.sha256.lower()}: "
            "refusing to load (the file changed, or the pin is stale)",
        )
    backend = create_backend(cfg, path, runtime_level)
    try:
        labels = read_labels(cfg, base_dir) or metadata_labels(getattr(backend, "metadata", {}))
        pres = [
            Preprocessor(cfg.preprocess if i == 0 else PreprocessConfig(), spec, cfg.name)
            for i, spec in enumerate(backend.inputs)
        ]
        post = make_postprocessor(cfg.postprocess, backend.outputs, labels, cfg.name, backend.inputs[0])
        check_batching(cfg, backend)
    except InferdError as e:
        backend.close()
        raise ModelLoadError(cfg.name, str(e).removeprefix(f"model {cfg.name!r}: ")) from None
    model = Model(cfg.name, cfg, path, digest, backend, labels, pres, post)
    try:
        model.warm(cfg.warmup if warmup is None else warmup)
    except Exception as e:
        backend.close()
        raise ModelLoadError(cfg.name, f"warm-up inference failed: {e}") from None
    model.load_seconds = time.perf_counter() - t0
    log.info("loaded model %s (%s, %s) in %.3f s", cfg.name, backend.runtime, path, model.load_seconds)
    return model


def check_batching(cfg: ModelConfig, backend: Backend) -> None:
    """Batching needs a batch dimension: free, or fixed above 1, on every input and output."""
    if cfg.batching.max_batch <= 1:
        return
    for spec in backend.inputs + backend.outputs:
        first = spec.shape[0] if spec.shape else 1
        if first == 1:
            raise ConfigError(
                f"model {cfg.name!r}: batching.max_batch {cfg.batching.max_batch} needs a batch dimension, "
                f"but {spec.describe()} has a fixed batch of 1 (export a dynamic batch or drop batching)"
            )
    if getattr(backend, "quantization_format", None) == "dynamic":
        log.warning(
            "model %s is dynamically quantized: its activation scales are computed over each runtime "
            "call, so with batching a frame's result depends on the frames batched with it "
            "(set batching.max_batch: 1 for per-frame results, or quantize statically)",
            cfg.name,
        )


def check_model_file(cfg: ModelConfig, path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(cfg.name, f"model file {path} does not exist")
    if not path.is_file():
        raise ModelLoadError(cfg.name, f"model path {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(cfg.name, f"model file {path} is not readable by this user")
    problem = check_not_world_writable(path, "model file")
    if problem:
        raise ModelLoadError(cfg.name, problem)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise ModelLoadError(cfg.name, f"model file {path} is empty")
    kind = sniff_format(head)
    want = cfg.runtime.type
    if kind is not None and kind != want:
        raise ModelLoadError(
            cfg.name,
            f"{path} looks like a {kind} model but the config says runtime: {want}; "
            f"set runtime: {kind} (or fix the path)",
        )


def read_labels(cfg: ModelConfig, base_dir: Path) -> list[str] | None:
    if cfg.labels is None:
        return None
    path = resolve_path(cfg.labels, base_dir)
    if not path.exists():
        raise ConfigError(f"model {cfg.name!r}: {not_found('labels file', cfg.labels, base_dir)}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"model {cfg.name!r}: labels file {path}: {e.strerror}") from None
    return [line.strip() for line in lines if line.strip()]


def metadata_labels(metadata: dict[str, str]) -> list[str] | None:
    """Class names an Ultralytics export carries in its metadata: names = "{0: 'person', ...}"."""
    text = metadata.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        log.debug("model metadata 'names' is not a literal: %.80s", text)
        return None
    if isinstance(names, dict) and names and sorted(names) == list(range(len(names))):
        return [str(names[i]) for i in range(len(names))]  # ids 0..N-1, as Ultralytics writes them
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def load_instances(cfg: ModelConfig, base_dir: Path, runtime_level: str = "warning") -> list[Model]:
    """The model's `instances`: onnxruntime sessions are thread-safe and shared, a TFLite
    interpreter is not (one each)."""
    first = load_model(cfg, base_dir, runtime_level)
    if first.runtime == "onnx":
        return [first] * cfg.instances
    models = [first]
    try:
        for _ in range(1, cfg.instances):
            models.append(load_model(cfg, base_dir, runtime_level))
    except ModelLoadError:  # a later interpreter failed: close the ones already made
        for m in models:
            m.close()
        raise
    return models


def log_failure(cfg: ModelConfig, error: ModelLoadError) -> None:
    level = logging.ERROR if cfg.required else logging.WARNING
    log.log(level, "%s%s", error, "" if cfg.required else " (not required: continuing degraded)")


def load_models(
    config: Config, base_dir: Path, on_loading: Callable[[ModelConfig], None] | None = None
) -> tuple[dict[str, Model], dict[str, ModelLoadError]]:
    """Load every model (one instance each). Failures are returned, not raised or logged: the
    caller knows which are required and reports them."""
    loaded: dict[str, Model] = {}
    failed: dict[str, ModelLoadError] = {}
    for cfg in config.models:
        if on_loading is not None:
            on_loading(cfg)
        try:
            loaded[cfg.name] = load_model(cfg, base_dir, config.logging.runtime_level)
        except ModelLoadError as e:
            failed[cfg.name] = e
    return loaded, failed
