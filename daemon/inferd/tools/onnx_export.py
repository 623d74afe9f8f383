"""Write the ONNX file with torch's exporters, then check it: opset, batch dimension, and the same
random input through onnxruntime and PyTorch."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferd.tools.checkpoint import INSTALL_HINT, ExportError, import_torch

if TYPE_CHECKING:
    from inferd.tools.export import ExportReport

log = logging.getLogger("inferd.tools.export")
RTOL = 1e-3  # the ONNX output may differ from PyTorch's by this much of the output's magnitude
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(e: BaseException) -> str:
    """The reason of an exporter error (torch.onnx wraps torch.export's own error in its cause)."""
    text = ANSI.sub("", str(e.__cause__ or e)).strip()
    return text.splitlines()[0] if text else type(e.__cause__ or e).__name__


def last_line(e: Exception) -> str:
    """The error itself, without the TorchScript interpreter's traceback before it."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def flatten(out: Any) -> list[Any]:
    torch = import_torch()
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten(o)]
    return []


@contextlib.contextmanager
def quiet_exporter() -> Iterator[list[warnings.WarningMessage]]:
    """Keep the exporters' warnings (deprecations, tracer warnings) for the caller to sort, silence
    their 'torchvision is not installed' log lines; what they print goes to stderr (stdout is the
    report's, maybe JSON)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def to_onnx(
    model: Any,
    args: tuple,
    path: Path,
    in_names: list[str],
    out_names: list[str],
    opset: int,
    dynamic_batch: bool,
    report: ExportReport,
) -> str:
    """Write the ONNX file (weights inside it); returns the exporter used."""
    torch = import_torch()
    program = isinstance(model, torch.export.ExportedProgram)
    names = {"input_names": in_names, "output_names": out_names, "opset_version": opset}
    if program or (not isinstance(model, torch.jit.ScriptModule) and opset >= 18):
        try:
            import onnxscript  # noqa: F401  (the torch.export-based exporter builds its graph with it)
        except ImportError:
            raise ExportError(f"the ONNX exporter needs onnxscript: {INSTALL_HINT}") from None
        batch = torch.export.Dim("batch")
        shapes = tuple({0: batch} for _ in args) if dynamic_batch and not program else None
        try:
            with quiet_exporter():
                torch.onnx.export(
                    model,
                    args,
                    path,
                    dynamo=True,
                    dynamic_shapes=shapes,
                    external_data=False,  # one file: inferd loads and pins (sha256) a single file
                    verbose=False,
                    **names,
                )
            return "dynamo"
        except Exception as e:  # torch.export raises many types: fall back to TorchScript below
            first = first_line(e)
            if program:
                raise ExportError(f"the ONNX exporter failed on {report.source}: {first}") from e
            log.warning("the torch.export-based exporter failed (%s); trying the TorchScript one", first)
            report.notes.append(f"torch.export failed ({first}): used the TorchScript exporter")
    axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else None
    try:
        with quiet_exporter() as caught:
            torch.onnx.export(model, args, path, dynamo=False, dynamic_axes=axes, **names)
    except Exception as e:
        raise ExportError(f"the TorchScript ONNX exporter failed on {report.source}: {first_line(e)}") from e
    for w in caught:  # "the trace might not generalize to other inputs": the user must know
        note = f"tracer: {str(w.message).strip().splitlines()[0]}"
        if issubclass(w.category, torch.jit.TracerWarning) and note not in report.notes:
            report.notes.append(note)
    return "torchscript"


def check_written(path: Path, opset: int, dynamic_batch: bool, report: ExportReport) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    report.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if report.opset != opset:
        report.notes.append(f"opset {report.opset}, not {opset}: the exporter could not convert to {opset}")
    first = model.graph.input[0].type.tensor_type.shape.dim[0] if model.graph.input else None
    report.dynamic_batch = first is not None and not first.HasField("dim_value")
    if dynamic_batch and not report.dynamic_batch:
        why = (
            "a .pt2 keeps the shapes it was exported with: export it with dynamic_shapes"
            if report.kind == "exported_program"
            else "the model's code fixes it, e.g. a reshape to a constant batch"
        )
        report.notes.append(f"the batch size is fixed ({why}); inferd's batching needs a free one")


def verify(reference: Any, path: Path, shapes: list[tuple[int, ...]], report: ExportReport) -> None:
    """Same random input through PyTorch and onnxruntime; outputs must agree within RTOL."""
    import numpy as np

    torch = import_torch()
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"checking the export needs onnxruntime: {INSTALL_HINT}") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in report.verify_batches:
        arrays = [rng.standard_normal((batch, *s[1:])).astype(np.float32) for s in shapes]
        hint = " (does the model fix its batch? try --no-dynamic-batch)" if batch > shapes[0][0] else ""
        try:
            with torch.no_grad():
                outputs = reference(*map(torch.from_numpy, arrays))
        except Exception as e:  # a traced TorchScript file, for one, runs only the batch it was traced at
            why = last_line(e)
            raise ExportError(f"PyTorch cannot run the model on a batch of {batch}: {why}{hint}") from e
        want = [t.detach().cpu().numpy() for t in flatten(outputs)]
        feed = {i.name: a for i, a in zip(session.get_inputs(), arrays, strict=True)}
        try:
            got = session.run(None, feed)
        except Exception as e:
            raise ExportError(f"onnxruntime cannot run the export on a batch of {batch}: {e}{hint}") from e
        if len(want) != len(got):
            raise ExportError(f"the export has {len(got)} output(s), the PyTorch model {len(want)}")
        for spec, w, g in zip(session.get_outputs(), want, got, strict=True):
            if w.shape != g.shape:
                raise ExportError(f"output {spec.name}: onnxruntime gives {g.shape}, PyTorch {w.shape}")
            diff = float(np.max(np.abs(w.astype(np.float64) - g))) if w.size else 0.0
            scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
            if diff > RTOL * scale:
                raise ExportError(
                    f"output {spec.name} on a batch of {batch}: onnxruntime differs from PyTorch by up to "
                    f"{diff:.3g} (allowed {RTOL * scale:.3g}); the export is not kept"
                )
            report.max_abs_diff = max(report.max_abs_diff, diff)
    report.inputs = [{"name": i.name, "shape": i.shape, "type": i.type} for i in session.get_inputs()]
    report.outputs = [{"name": o.name, "shape": o.shape, "type": o.type} for o in session.get_outputs()]
