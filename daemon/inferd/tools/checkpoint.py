"""Training checkpoints: read them on the CPU, pick the (EMA) state dict, match its keys to a module.

torch is imported inside the functions: importing this module costs nothing without it.
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.errors import InferdError

# Where training code keeps its weights, in the order they are tried.
EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict", "ema_model")
MODEL_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Wrapper prefixes: DataParallel/DDP and AveragedModel (module.), torch.compile (_orig_mod.),
# Lightning (model.). Stripped only when that makes more keys match the module.
PREFIXES = ("module.", "_orig_mod.", "model.")
# Bookkeeping entries that never change what the model computes.
IGNORED_MISSING = ("num_batches_tracked",)
IGNORED_UNEXPECTED = ("n_averaged",)
INSTALL_HINT = (
    "pip install 'inferd[export]', with torch's CPU build installed first (pip install torch==2.13.0 "
    "from PyTorch's CPU wheels; a plain pip install torch brings a multi-GB CUDA build)"
)


class ExportError(InferdError):
    """A model or checkpoint cannot be exported: what went wrong and what to do."""


@dataclass
class Matched:
    """A state dict renamed to fit a module, and what did not fit."""

    state_dict: dict[str, Any]
    stripped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ExportError(f"exporting needs PyTorch: {INSTALL_HINT}") from None
    return torch


def read_checkpoint(path: Path, trust_pickle: bool = False) -> Any:
    """torch.load on the CPU; weights only unless the caller trusts the file's pickled code."""
    torch = import_torch()
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (ImportError, AttributeError) as e:  # the classes pickled in the file are not importable
            raise ExportError(
                f"{path}: unpickling needs the code that saved it ({e}): install that package, or put "
                "its source on PYTHONPATH"
            ) from None
        except Exception as e:
            raise ExportError(f"{path}: torch.load cannot read it: {str(e).splitlines()[0]}") from None
    try:
        # timm and DeiT keep their argparse arguments in the checkpoint: plain data, safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, or RuntimeError for a file torch.load cannot read
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise ExportError(f"{path}: torch.load cannot read it: {str(e).splitlines()[0]}") from None
        raise ExportError(
            f"{path} holds pickled Python objects ({found.group(1)}), not only tensors: loading it "
            "runs code from the file. If you trust where it came from, add --trust-pickle; otherwise "
            "re-save just the weights where it was made: torch.save({'state_dict': model.state_dict(), "
            "'ema': ema_model.state_dict()}, path)"
        ) from None


def select_weights(ckpt: Any, ema: bool, where: str) -> tuple[str, Any]:
    """The key used and its value (a state dict or a module). `where` names the file for errors."""
    torch = import_torch()
    if isinstance(ckpt, torch.nn.Module):
        if ema:
            raise ExportError(f"{where} is a pickled module, not a checkpoint: it has no EMA weights")
        return "(the pickled module)", ckpt
    if not isinstance(ckpt, Mapping):
        raise ExportError(f"{where} holds a {type(ckpt).__name__}, not a checkpoint dict or a module")
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        if ema:
            raise ExportError(f"{where} is a bare state dict ({len(ckpt)} tensors): it has no EMA weights")
        return "(top level)", ckpt
    for key in EMA_KEYS if ema else MODEL_KEYS:
        if ckpt.get(key) is not None:
            return key, ckpt[key]
    keys = ", ".join(map(repr, list(ckpt)[:20])) + (", ..." if len(ckpt) > 20 else "")
    wanted = EMA_KEYS if ema else MODEL_KEYS
    hint = ""
    if ema and any(k in ckpt for k in EMA_KEYS):
        hint = " (its EMA entry is empty: a stripped checkpoint such as ultralytics' best.pt keeps "
        hint += "the EMA weights under 'model': export without --ema)"
    raise ExportError(
        f"{where} has none of the keys {', '.join(wanted)}{hint}; its top-level keys are: {keys}"
    )


def other_ema_key(ckpt: Any) -> str | None:
    """The EMA key of a checkpoint exported without --ema, to tell the user it is there."""
    if isinstance(ckpt, Mapping):
        return next((k for k in EMA_KEYS if ckpt.get(k) is not None), None)
    return None


def unwrap(module: Any) -> Any:
    """The model inside EMA/DataParallel wrappers (timm's ModelEmaV2 and DDP keep it in .module)."""
    torch = import_torch()
    for attr in ("module", "ema"):
        inner = getattr(module, attr, None)
        if not isinstance(inner, torch.nn.Module):
            continue
        # A wrapper holds nothing but the model (AveragedModel adds a counter buffer, not a child);
        # a model that merely has a child called "module" is not unwrapped.
        if not isinstance(module, torch.nn.Module) or list(module.children()) == [inner]:
            return unwrap(inner)
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got a {type(module).__name__}")
    return module


def as_state_dict(value: Any, where: str) -> dict[str, Any]:
    """A name -> tensor dict from a state dict or a module; non-tensor entries are dropped."""
    torch = import_torch()
    if isinstance(value, torch.nn.Module) or hasattr(value, "module") or hasattr(value, "ema"):
        value = unwrap(value).state_dict()
    if isinstance(value, Mapping):
        tensors = {str(k): v for k, v in value.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(map(repr, list(value)[:10]))
        raise ExportError(f"{where} is not a state dict (a mapping of names to tensors); its keys: {keys}")
    raise ExportError(f"{where} is a {type(value).__name__}, not a state dict or a module")


def match_state_dict(expected: Mapping[str, Any], given: Mapping[str, Any]) -> Matched:
    """Rename `given` to the names of `expected` (strip wrapper prefixes when that makes more keys
    match); report missing and unexpected keys. A shape mismatch is an error naming both shapes."""

    def renamed(seq: tuple[str, ...]) -> dict[str, Any]:
        names = dict(given)
        for prefix in seq:
            names = {k.removeprefix(prefix): v for k, v in names.items()}
        return names

    # Wrappers nest (DDP around torch.compile: module._orig_mod.): try up to three prefixes deep.
    seqs = [()] + [s for n in (1, 2, 3) for s in itertools.product(PREFIXES, repeat=n)]
    stripped = max(seqs, key=lambda seq: len(expected.keys() & renamed(seq).keys()))  # first best: shortest
    names = renamed(stripped)
    for key in expected.keys() & names.keys():
        want, got = tuple(expected[key].shape), tuple(names[key].shape)
        if want != got:
            raise ExportError(
                f"weight {key!r} has shape {list(got)} in the checkpoint but {list(want)} in the module: "
                "the checkpoint is for another architecture or configuration (check --module)"
            )
    missing = [k for k in expected if k not in names and not k.endswith(IGNORED_MISSING)]
    unexpected = [k for k in names if k not in expected and not k.endswith(IGNORED_UNEXPECTED)]
    loaded = {k: v for k, v in names.items() if k in expected}
    if not loaded:
        raise ExportError(
            f"no key of the checkpoint matches the module (checkpoint: {', '.join(list(names)[:5])}, ...; "
            f"module: {', '.join(list(expected)[:5])}, ...): wrong --module, or a wrapper prefix"
        )
    return Matched(loaded, list(stripped), missing, unexpected)


def load_into(module: Any, state_dict: Mapping[str, Any]) -> Matched:
    """load_state_dict(strict=False) after matching; returns the report."""
    matched = match_state_dict(module.state_dict(), state_dict)
    module.load_state_dict(matched.state_dict, strict=False)
    return matched
