"""TFLite external delegates (Edge TPU, VX, Arm NN, …): loaded with the runtime's own
`load_delegate(library, options)`, and where the interpreter placed the graph's nodes."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferd.errors import ModelLoadError

log = logging.getLogger("inferd.runtime.litert")

OptionValue = str | int | float | bool
_DELEGATE_OP = "DELEGATE"  # the builtin code of a delegate's kernel node


class DelegateConfig(BaseModel):
    """An external delegate library and its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    library: str = Field(
        description="The delegate's shared library: a file name the dynamic loader searches "
        "(libedgetpu.so.1) or an absolute path."
    )
    options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description="The delegate's options, passed to load_delegate(library, options) unchanged.",
    )

    @field_validator("library")
    @classmethod
    def _where(cls, v: str) -> str:
        if "/" in v and not v.startswith("/"):
            raise ValueError(
                f"delegate library {v!r} is a relative path: give a file name the dynamic loader "
                "searches (e.g. libedgetpu.so.1) or an absolute path"
            )
        return v


class DelegateMixin(BaseModel):
    """The `delegate:` and `fallback:` keys of `runtime: {type: tflite}`."""

    delegate: DelegateConfig | None = Field(None, description="An external delegate to run the model on.")
    fallback: Literal["cpu", "fail"] = Field(
        "cpu",
        description="cpu: a delegate that cannot be loaded or applied, or that takes no node, is "
        "skipped with a warning and the model runs on the CPU; fail: refuse to load the model instead.",
    )


def name_of(delegate: DelegateConfig) -> str:
    return f"delegate:{os.path.basename(delegate.library)}"


def load(module, model: str, runtime):
    """The runtime's Delegate object for `runtime.delegate`, or None (no delegate, or fallback: cpu
    after a warning). With fallback: fail, a library that cannot be loaded is a ModelLoadError."""
    d = runtime.delegate
    if d is None:
        return None
    try:  # dlopen first: the runtimes' Delegate object, half made when that fails, errs when freed
        if not hasattr(ctypes.CDLL(d.library), "tflite_plugin_create_delegate"):
            problem = (
                f"{d.library} is not a TFLite external delegate (it has no tflite_plugin_create_delegate)"
            )
            return fall_back(model, runtime, problem)
        return module.load_delegate(d.library, dict(d.options))
    except (OSError, ValueError, RuntimeError) as e:
        problem = why_not_loaded(d.library, e)
    return fall_back(model, runtime, problem)


def fall_back(model: str, runtime, problem: str):
    """fallback: fail → the error; fallback: cpu → a warning (and None: no delegate)."""
    if runtime.fallback == "fail":
        raise ModelLoadError(model, f"{problem} (fallback: fail)")
    log.warning("model %s: %s; running on the CPU (fallback: cpu)", model, problem)
    return None


def why_not_loaded(library: str, e: Exception) -> str:
    """The library, where the loader looked, and what it said."""
    said = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError):
        if library.startswith("/"):
            where = "it does not exist" if not os.path.exists(library) else "the file is there"
            return f"cannot load delegate library {library} ({where}): {said}"
        paths = os.environ.get("LD_LIBRARY_PATH") or "(unset)"
        return (
            f"cannot load delegate library {library}: the dynamic loader searched LD_LIBRARY_PATH "
            f"{paths}, its cache (/etc/ld.so.cache, from /etc/ld.so.conf.d) and /lib, /usr/lib: {said} "
            "(install the vendor's package that provides it, or give its absolute path)"
        )
    said = said.removeprefix(f"Failed to load delegate from {library}").strip() or "no reason given"
    return f"delegate library {library} loaded but created no delegate: {said}"


def placement(interpreter, constructed: int, name: str) -> dict[str, int]:
    """Original nodes per kernel family: the external delegate's (`name`), XNNPACK's, and the
    CPU's builtin kernels. `constructed` is the node count before allocate_tensors: the model's
    nodes and the external delegate's kernel nodes (it is applied first; XNNPACK at allocation).
    Each delegate node's share of the original nodes is found by walking back from its outputs
    to its inputs. {} if the runtime does not expose its nodes."""
    itp = getattr(interpreter, "_interpreter", None)
    try:
        count = itp.NumNodes()
        names = [itp.NodeName(i) for i in range(count)]
        original = names.index(_DELEGATE_OP) if _DELEGATE_OP in names else count
        producer = {int(t): i for i in range(original) for t in itp.NodeOutputs(i)}
        nodes = {name: 0, "xnnpack": 0}
        for k in range(original, count):
            stop = {int(t) for t in itp.NodeInputs(k)}
            todo, covered = [int(t) for t in itp.NodeOutputs(k)], set()
            while todo:
                t = todo.pop()
                p = producer.get(t)
                if p is None or t in stop or p in covered:
                    continue
                covered.add(p)
                todo += [int(x) for x in itp.NodeInputs(p) if x >= 0]
            nodes[name if k < constructed else "xnnpack"] += len(covered)
        nodes["cpu"] = original - nodes[name] - nodes["xnnpack"]
        return {k: v for k, v in nodes.items() if v > 0 or k == "cpu"}
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        log.debug("cannot tell where the interpreter placed the nodes: %s", e)
        return {}


def accelerator(nodes: dict[str, int], xnnpack: bool) -> str:
    """What runs the model: the external delegate when it took nodes, else XNNPACK, else the CPU."""
    if not nodes:
        return "xnnpack" if xnnpack else "cpu"
    ranked = [k for k in nodes if k.startswith("delegate:")] + ["xnnpack"]
    return next((k for k in ranked if nodes.get(k, 0) > 0), "cpu")
