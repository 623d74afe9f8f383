"""What an export starts from: tell a TorchScript file, a .pt2 program and a checkpoint apart; load
a program on the CPU; build a module from `pkg.mod:factory` or `path/to/file.py:factory`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

from inferd.tools.checkpoint import ExportError, import_torch


def sniff_kind(path: Path) -> str:
    """torchscript, exported_program, or checkpoint (anything torch.load may read)."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        return "checkpoint"  # the pre-1.6 torch.save format is a bare pickle stream
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any("/code/__torch__/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "exported_program"
    return "checkpoint"


def load_torchscript(path: Path) -> Any:
    """torch.jit.load on the CPU (deprecated in torch 2.13, still the way to read these files)."""
    torch = import_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def load_program(path: Path) -> Any:
    """torch.export.load, then its weights on the CPU (torch.export.load has no map_location)."""
    torch = import_torch()
    try:
        program = torch.export.load(path)
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if "cuda" in text.lower():
            hint = (
                " (it was saved with CUDA weights: on the GPU machine, run "
                "torch.export.passes.move_to_device_pass(program, 'cpu') before torch.export.save)"
            )
        raise ExportError(f"{path}: torch.export.load failed: {text}{hint}") from e
    tensors = [*program.state_dict.values(), *program.constants.values()]
    if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tensors):
        program = torch.export.passes.move_to_device_pass(program, "cpu")
    return program


def load_factory(spec: str) -> Any:
    """Call `pkg.mod:factory` or `path/to/file.py:factory` (no arguments); must give an nn.Module."""
    torch = import_torch()
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ExportError(f"--module {spec!r}: give pkg.mod:factory or path/to/file.py:factory")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise ExportError(f"--module {spec!r}: {path} is not a file")
        mod_name = f"_inferd_export_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ExportError(f"--module {spec!r}: cannot import {path}")
        mod = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = mod  # classes defined there stay importable (pickle, dataclasses)
        loader_spec.loader.exec_module(mod)
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise ExportError(f"--module {spec!r}: cannot import {target}: {e}") from None
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise ExportError(f"--module {spec!r}: {target} has no callable {name!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"--module {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
