"""PyTorch -> ONNX on the CPU: a TorchScript file, a torch.export program (.pt2) or a training
checkpoint (its EMA weights with ema=True), checked against PyTorch in onnxruntime before it is kept.

Exporters (torch 2.13): the torch.export-based one (dynamo=True, needs onnxscript, opset 18 and up)
for modules and .pt2 programs; the TorchScript one (dynamo=False, deprecated but still shipped) for
TorchScript files, opsets below 18, and modules torch.export cannot capture.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from inferd.tools.checkpoint import (
    ExportError,
    Matched,
    as_state_dict,
    import_torch,
    load_into,
    match_state_dict,
    other_ema_key,
    read_checkpoint,
    select_weights,
    unwrap,
)
from inferd.tools.entry import entry_text, model_entry
from inferd.tools.onnx_export import check_written, flatten, last_line, to_onnx, verify
from inferd.tools.source import load_factory, load_program, load_torchscript, sniff_kind


@dataclasses.dataclass
class ExportReport:
    source: Path
    kind: str  # torchscript | exported_program | checkpoint | pickled_module
    out: Path
    sha256: str = ""
    exporter: str = ""  # dynamo (torch.export-based) | torchscript
    opset: int = 0
    dynamic_batch: bool = False
    inputs: list[dict] = dataclasses.field(default_factory=list)
    outputs: list[dict] = dataclasses.field(default_factory=list)
    max_abs_diff: float = 0.0
    verify_batches: list[int] = dataclasses.field(default_factory=list)
    weights_from: str | None = None  # e.g. "ckpt.pt['ema']"
    ema: bool = False
    stripped_prefixes: list[str] = dataclasses.field(default_factory=list)
    missing_keys: list[str] = dataclasses.field(default_factory=list)
    unexpected_keys: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["source"], d["out"] = str(self.source), str(self.out)
        return d

    def take(self, where: str, matched: Matched) -> None:
        self.weights_from = where
        self.stripped_prefixes, self.missing_keys = matched.stripped, matched.missing
        self.unexpected_keys = matched.unexpected


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise ExportError(f"input shape {text!r} is not like 1x3x224x224 (positive sizes, batch first)")
    return dims


def export_model(
    source: Path,
    out: Path,
    input_shapes: list[tuple[int, ...]],
    *,
    module: str | None = None,
    weights: Path | None = None,
    ema: bool = False,
    opset: int = 18,
    dynamic_batch: bool = True,
    trust_pickle: bool = False,
) -> ExportReport:
    """Load on the CPU, export, run both in onnxruntime and PyTorch, keep the file if they agree."""
    torch = import_torch()
    if not input_shapes:
        raise ExportError("give the input shape(s), e.g. --input-shape 1x3x224x224")
    report = ExportReport(source, sniff_kind(source), out, ema=ema)
    model = load_source(report, module, weights, ema, trust_pickle)
    reference = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    args = tuple(torch.randn(*s) for s in input_shapes)
    try:
        with torch.no_grad():
            n_out = len(flatten(reference(*args)))
    except Exception as e:  # the model's own error: wrong shape, wrong number of inputs
        shapes = ", ".join("x".join(map(str, s)) for s in input_shapes)
        raise ExportError(f"the model fails on inputs of shape {shapes}: {last_line(e)}") from e
    in_names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        report.exporter = to_onnx(model, args, partial, in_names, out_names, opset, dynamic_batch, report)
        check_written(partial, opset, dynamic_batch, report)
        batch = input_shapes[0][0]
        report.verify_batches = [batch, batch + 1] if report.dynamic_batch else [batch]
        verify(reference, partial, input_shapes, report)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    from inferd.engine.models import file_sha256

    report.sha256 = file_sha256(out)
    return report


def load_source(
    report: ExportReport, module: str | None, weights: Path | None, ema: bool, trust_pickle: bool
) -> Any:
    """The model in eval mode with the chosen weights loaded; fills the weights part of the report."""
    torch = import_torch()
    source, kind = report.source, report.kind
    if kind != "checkpoint" and module:
        what = kind.replace("_", " ")
        raise ExportError(f"{source} is a {what} with its own architecture: --module is for checkpoints")
    if kind == "checkpoint" and weights:
        raise ExportError(f"{source} is a checkpoint: give it as SOURCE with --module, without --weights")
    if kind == "torchscript":
        model = load_torchscript(source)
    elif kind == "exported_program":
        model = load_program(source)
    else:
        ckpt = read_checkpoint(source, trust_pickle)
        key, value = select_weights(ckpt, ema, str(source))
        where = str(source) if key.startswith("(") else f"{source}[{key!r}]"
        if module:
            model = load_factory(module)
            report.take(where, load_into(model, as_state_dict(value, where)))
        elif isinstance(value, torch.nn.Module) or hasattr(value, "module") or hasattr(value, "ema"):
            model, report.kind, report.weights_from = unwrap(value), "pickled_module", where
        else:
            raise ExportError(
                f"{where} is a state dict: name the architecture with --module pkg.mod:factory "
                f"(or path/to/file.py:factory), or export the model with torch.jit.script / torch.export "
                f"and give that file as SOURCE with --weights {source}"
            )
        if not ema and other_ema_key(ckpt):
            report.notes.append(f"the checkpoint also has EMA weights under {other_ema_key(ckpt)!r} (--ema)")
    if weights is not None:
        ckpt = read_checkpoint(weights, trust_pickle)
        key, value = select_weights(ckpt, ema, str(weights))
        where = str(weights) if key.startswith("(") else f"{weights}[{key!r}]"
        state_dict = as_state_dict(value, where)
        if isinstance(model, torch.export.ExportedProgram):
            report.take(where, load_into_program(model, state_dict))
        else:
            report.take(where, load_into(model, state_dict))
    elif ema and kind != "checkpoint":
        raise ExportError(f"--ema takes the EMA weights of a checkpoint: add --weights CKPT to {source}")
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        model = model.float()
        report.notes.append("half-precision weights converted to float32 (ONNX runs float32 on the CPU)")
    return model.eval()


def load_into_program(program: Any, state_dict: dict[str, Any]) -> Matched:
    """Replace a torch.export program's weights (its state_dict is what the exporter reads)."""
    torch = import_torch()
    matched = match_state_dict(program.state_dict, state_dict)
    for key, value in matched.state_dict.items():
        old = program.state_dict[key]
        value = value.to(old.dtype)
        is_param = isinstance(old, torch.nn.Parameter)
        program.state_dict[key] = torch.nn.Parameter(value, old.requires_grad) if is_param else value
    return matched


def config_entry(report: ExportReport, name: str | None = None) -> str:
    """A models: entry for inferd's config, ready to paste."""
    text = entry_text(model_entry(report.out, report.sha256, name))
    if report.dynamic_batch:  # greedy batching: no wait, batches only what is already queued
        text += "\n    # batching: {max_batch: 8, max_delay_ms: 0}   # the batch dimension is free"
    return text
