"""`inferd quantize`: static int8 quantization of a float ONNX model with onnxruntime.quantization.

Calibration frames go through the daemon's own preprocessing (a config's model entry), so the
ranges are measured on the tensors the model will really see. Part of the frames is held back
and run through both models to report what quantization changed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferd.config import ModelConfig, PreprocessConfig, load_config
from inferd.engine.models import Model, file_sha256, load_model, resolve_path
from inferd.errors import InferdError
from inferd.tools.accuracy import score_output
from inferd.tools.entry import model_entry
from inferd.tools.frames import frame_files, read_parts

log = logging.getLogger("inferd.tools.quantize")

METHODS = ("minmax", "entropy", "percentile")
MIN_OPSET = 13
STRIDE = 16  # calibration frames collected at once (MinMax)


class QuantizeError(InferdError):
    """The model or its calibration frames cannot be quantized as asked."""


@dataclass
class Recipe:
    """Where the preprocessing (and the rest of the config entry) comes from."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    entry: dict = field(default_factory=dict)  # labels/postprocess/... copied into the new entry
    top1_output: int | str | None = None  # which output holds class scores, when known


@dataclass
class Agreement:
    frames: int
    top1: float | None  # share of held-back frames whose best class is the same; None: not a classifier
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float


@dataclass
class QuantizeReport:
    model: str
    out: str
    sha256: str
    format: str
    per_channel: bool
    activations: str
    method: str
    calibration_frames: int
    agreement: Agreement
    size_bytes: dict[str, int]
    latency_ms: dict[str, float]
    entry: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def recipe_from(spec: str) -> Recipe:
    """CONFIG:MODEL: that model entry's preprocessing, labels and postprocess."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise QuantizeError(
            f"--preprocess-from wants CONFIG:MODEL (e.g. /etc/inferd/inferd.yaml:cam), got {spec!r}"
        )
    config, base_dir = load_config(Path(path))
    models = {m.name: m for m in config.models}
    if name not in models:
        raise QuantizeError(f"{path} has no model {name!r}; its models: {', '.join(models) or '(none)'}")
    cfg = models[name]
    entry = {"preprocess": cfg.preprocess.model_dump(mode="json", exclude_defaults=True)}
    if cfg.labels is not None:
        entry["labels"] = str(resolve_path(cfg.labels, base_dir).resolve())
    if cfg.postprocess.type != "raw":
        entry["postprocess"] = cfg.postprocess.model_dump(mode="json", exclude_defaults=True)
    top1 = cfg.postprocess.output if cfg.postprocess.type == "classify" else None
    return Recipe(cfg.preprocess, entry, top1)


def split(files: list[Path], holdout: float) -> tuple[list[Path], list[Path]]:
    """Calibration and held-back frames; the held-back ones are spread evenly over the folder."""
    if len(files) < 2:
        raise QuantizeError(
            f"need at least 2 calibration frames (some calibrate, some are held back to compare), "
            f"got {len(files)}"
        )
    n_held = min(len(files) - 1, max(1, round(len(files) * holdout)))
    held = set(np.linspace(0, len(files) - 1, n_held).round().astype(int).tolist())
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def prepared(model: Model, path: Path) -> list[np.ndarray]:
    try:
        return model.prepare(read_parts(path))
    except InferdError as e:
        raise QuantizeError(
            f"calibration frame {path}: {e} (--preprocess-from CONFIG:MODEL applies a config's "
            "resize/normalization, as the daemon will)"
        ) from None


def quantize_model(
    source: Path,
    out: Path,
    calibration: Path,
    *,
    recipe: Recipe | None = None,
    per_channel: bool = True,
    fmt: str = "qdq",
    activations: str = "uint8",
    method: str = "minmax",
    holdout: float = 0.2,
    max_frames: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> QuantizeReport:
    """Quantize `source` into `out` and compare the two on held-back frames.

    `progress(total)` may return a bar (tqdm-like: `update(n)`, `close()`) ticked per frame.
    """
    recipe = recipe or Recipe()
    if source.resolve() == out.resolve():
        raise QuantizeError(f"--out {out} would overwrite the float model")
    if method not in METHODS:
        raise QuantizeError(f"calibration method {method!r}: use one of {', '.join(METHODS)}")
    calib, held = split(frame_files(calibration)[:max_frames], holdout)
    float_model = _load(source, "float", recipe.preprocess)
    try:
        if float_model.backend.quantized:
            raise QuantizeError(f"{source} is already quantized ({float_model.backend.quantization_format})")
        notes = _quantize(float_model, out, calib, per_channel, fmt, activations, method, progress)
        float_input = float_model.backend.inputs[0].dtype.kind == "f"
        images = any(f.suffix.lower() not in (".npy", ".npz") for f in calib)
        if float_input and images and not recipe.preprocess.normalizes:
            notes.append(
                "images were fed as 0-255 pixel values (no normalization configured); if the model "
                "expects normalized input, pass --preprocess-from CONFIG:MODEL"
            )
        quant_model = _load(out, "quantized", recipe.preprocess)
        try:
            agreement = compare(float_model, quant_model, held, recipe.top1_output)
            sample = prepared(float_model, held[0])
            latency = {"float": _latency(float_model, sample), "quantized": _latency(quant_model, sample)}
        finally:
            quant_model.close()
    finally:
        float_model.close()
    digest = file_sha256(out)
    entry = model_entry(out, digest, **recipe.entry)
    return QuantizeReport(
        str(source), str(out), digest, fmt, per_channel, activations, method, len(calib), agreement,
        {"float": source.stat().st_size, "quantized": out.stat().st_size}, latency, entry, notes,
    )  # fmt: skip


def _quantize(
    model: Model, out: Path, calib: list[Path], per_channel: bool, fmt: str, activations: str, method: str,
    progress: Callable[[int], Any] | None,
) -> list[str]:  # fmt: skip
    """Pre-process the graph, calibrate on the frames, write the quantized model; returns notes."""
    try:
        import onnx
        from onnx import version_converter
        from onnxruntime import quantization as ortq
    except ImportError as e:
        raise QuantizeError(
            f"inferd quantize needs onnxruntime, onnx and ml-dtypes: pip install 'inferd[quantize]' ({e})"
        ) from None
    notes = []
    bar = progress(len(calib)) if progress else None

    class Reader(ortq.CalibrationDataReader):
        """Reads and preprocesses one frame at a time; `set_range` serves onnxruntime's strided
        calibration (MinMax keeps every intermediate output of the frames it collects at once)."""

        def __init__(self) -> None:
            self.feeds = self._feeds(calib)

        def _feeds(self, paths: list[Path]) -> Iterator[dict]:
            names = [s.name for s in model.backend.inputs]
            for path in paths:
                yield dict(zip(names, prepared(model, path), strict=True))
                if bar is not None:
                    bar.update(1)

        def __len__(self) -> int:
            return len(calib)

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.feeds = self._feeds(calib[start_index:end_index])

        def rewind(self) -> None:
            self.feeds = self._feeds(calib)

    with tempfile.TemporaryDirectory(prefix="inferd-quantize-") as tmp:
        graph = model.path
        proto = onnx.load(str(graph))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < MIN_OPSET:  # per-channel and QDQ need DequantizeLinear's axis (opset 13)
            try:
                proto = version_converter.convert_version(proto, MIN_OPSET)
                graph = Path(tmp) / "opset.onnx"
                onnx.save(proto, str(graph))
                notes.append(f"converted from opset {opset} to {MIN_OPSET} (quantized ops need it)")
            except Exception as e:
                notes.append(f"could not convert opset {opset} to {MIN_OPSET}: {e}")
        del proto
        try:  # shape inference and graph clean-up, as onnxruntime recommends before quantizing
            ortq.quant_pre_process(str(graph), str(Path(tmp) / "prepared.onnx"), skip_symbolic_shape=True)
            graph = Path(tmp) / "prepared.onnx"
        except Exception as e:  # a graph the pre-processor does not handle may still quantize as it is
            notes.append(f"pre-processing skipped: {e}")
        kinds = {"uint8": ortq.QuantType.QUInt8, "int8": ortq.QuantType.QInt8}
        methods = {
            "minmax": ortq.CalibrationMethod.MinMax,
            "entropy": ortq.CalibrationMethod.Entropy,
            "percentile": ortq.CalibrationMethod.Percentile,
        }
        try:
            ortq.quantize_static(
                str(graph), str(out), Reader(),
                quant_format=ortq.QuantFormat.QDQ if fmt == "qdq" else ortq.QuantFormat.QOperator,
                per_channel=per_channel, activation_type=kinds[activations],
                weight_type=ortq.QuantType.QInt8, calibrate_method=methods[method],
                extra_options={"CalibStridedMinMax": stride(len(calib))} if method == "minmax" else None,
            )  # fmt: skip
        except InferdError:
            raise
        except Exception as e:
            raise QuantizeError(f"onnxruntime could not quantize {model.path}: {e}") from e
        finally:
            if bar is not None:
                bar.close()
    if fmt == "qoperator" and activations == "int8":
        notes.append("QOperator with int8 activations runs much slower than QDQ on most CPUs")
    return notes


def stride(n: int, most: int = STRIDE) -> int:
    """Frames per calibration chunk: the largest divisor of n up to `most` (onnxruntime wants
    the count divisible). MinMax merges the chunks' ranges, so memory stays bounded by one chunk's
    intermediate outputs. (Its CalibMaxIntermediateOutputs option drops the collected data
    without computing it in onnxruntime 1.32: not used.)"""
    return next(d for d in range(min(n, most), 0, -1) if n % d == 0)


def _load(path: Path, name: str, preprocess: PreprocessConfig) -> Model:
    cfg = ModelConfig.model_validate(
        {"name": name, "path": str(path), "runtime": "onnx", "warmup": 1, "preprocess": preprocess}
    )
    return load_model(cfg, Path.cwd())


def compare(a: Model, b: Model, frames: list[Path], top1_output: int | str | None) -> Agreement:
    """Run both models on the frames: top-1 agreement, cosine and largest difference of the outputs."""
    index = score_output(a, top1_output)
    same, cosines, worst = 0, [], 0.0
    for path in frames:
        inputs = prepared(a, path)
        out_a, out_b = a.infer(inputs), b.infer(inputs)
        for x, y in zip(out_a, out_b, strict=True):
            x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
            norm = np.linalg.norm(x) * np.linalg.norm(y)
            cosines.append(float(x @ y / norm) if norm else float(np.array_equal(x, y)))
            worst = max(worst, float(np.max(np.abs(x - y))) if x.size else 0.0)
        if index is not None:
            same += int(np.argmax(out_a[index][0]) == np.argmax(out_b[index][0]))
    top1 = same / len(frames) if index is not None else None
    return Agreement(len(frames), top1, float(np.mean(cosines)), float(np.min(cosines)), worst)


def _latency(model: Model, inputs: list[np.ndarray], runs: int = 30) -> float:
    """Median milliseconds of one inference (after a warm-up run)."""
    model.backend.infer(inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.backend.infer(inputs)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 4)
