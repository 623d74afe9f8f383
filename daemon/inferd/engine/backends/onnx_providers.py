"""onnxruntime execution providers: the config's list checked against the build, and where the
session placed the graph's nodes (docs/accelerators.md)."""

from __future__ import annotations

import logging
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferd.errors import ModelLoadError

log = logging.getLogger("inferd.runtime.onnxruntime")

CPU = "CPUExecutionProvider"
OptionValue = str | int | float | bool
Fallback = Literal["cpu", "fail"]
# onnxruntime's verbose session log, at load (session_state.cc, VerifyEachNodeIsAssignedToAnEp)
_PLACED = re.compile(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")


class ProviderConfig(BaseModel):
    """One execution provider and its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="An onnxruntime execution provider, e.g. OpenVINOExecutionProvider.")
    options: dict[str, OptionValue] = Field(
        default_factory=dict, description="The provider's options, passed to onnxruntime unchanged."
    )


class ProvidersMixin(BaseModel):
    """The `providers:` and `fallback:` keys of `runtime: {type: onnx}`."""

    providers: list[ProviderConfig] = Field(
        default_factory=lambda: [ProviderConfig(name=CPU)],
        description="Execution providers, tried in this order (a name, or {name, options}); "
        "CPUExecutionProvider is appended unless fallback is fail.",
    )
    fallback: Fallback = Field(
        "cpu",
        description="cpu: a provider this onnxruntime lacks, or one that fails to start, is skipped with "
        "a warning and the model runs on what is left; fail: refuse to load the model instead.",
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _names(cls, v):
        if isinstance(v, list):
            return [{"name": p} if isinstance(p, str) else p for p in v]
        return v


def requested(model: str, runtime, available: list[str], version: str) -> list[ProviderConfig]:
    """The providers to ask the session for: the config's, less those this build lacks (fallback:
    cpu, with a warning) or an error (fallback: fail); CPU last unless fallback is fail."""
    wanted = list(runtime.providers)
    missing = [p.name for p in wanted if p.name not in available]
    if missing:
        what = (
            f"execution provider {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"available in this onnxruntime {version} (it has: {', '.join(available)})"
        )
        if runtime.fallback == "fail":
            raise ModelLoadError(
                model,
                f"{what}; install the onnxruntime build that has it (e.g. onnxruntime-openvino, "
                "onnxruntime-gpu) or set fallback: cpu",
            )
        wanted = [p for p in wanted if p.name in available]
        rest = [p.name for p in wanted] + ([] if any(p.name == CPU for p in wanted) else [CPU])
        log.warning("model %s: %s; running on %s (fallback: cpu)", model, what, ", ".join(rest))
    if runtime.fallback == "cpu" and not any(p.name == CPU for p in wanted):
        wanted.append(ProviderConfig(name=CPU))
    return wanted


def session_args(providers: list[ProviderConfig]) -> list:
    """onnxruntime's `providers=` argument: names, or (name, options) pairs."""
    return [(p.name, dict(p.options)) if p.options else p.name for p in providers]


def placement(lines: list[str]) -> dict[str, int]:
    """Nodes per provider from the session's verbose load log (empty when the log does not say).
    A provider that compiles subgraphs (OpenVINO, TensorRT) counts each fused subgraph as one node."""
    nodes: dict[str, int] = {}
    for line in lines:
        m = _PLACED.search(line)
        if m:
            nodes[m.group(1)] = nodes.get(m.group(1), 0) + int(m.group(2))
    return nodes


def accelerator(nodes: dict[str, int], registered: list[str]) -> str:
    """What runs the model: the first provider (in the session's order) other than the CPU's that
    took nodes, else the CPU's. Without a placement log: the session's first provider."""
    if not nodes:
        return registered[0] if registered else CPU
    names = [*registered, *(n for n in nodes if n not in registered)]
    return next((name for name in names if name != CPU and nodes.get(name, 0) > 0), CPU)


def check_started(
    model: str, fallback: Fallback, asked: list[ProviderConfig], started: list[str], lines
) -> None:
    """A provider onnxruntime has but could not start (a device that is not there, a bad option):
    onnxruntime logs it and goes on without it. A warning, or with fallback: fail an error."""
    failed = [p.name for p in asked if p.name not in started]
    if not failed:
        return
    said = [line for line in lines if "[E:" in line or "ERROR" in line or "Failed to create" in line]
    what = f"{', '.join(failed)} did not start" + (f" (onnxruntime: {_message(said[0])})" if said else "")
    if fallback == "fail":
        raise ModelLoadError(model, f"{what} (fallback: fail)")
    log.warning("model %s: %s; running on %s (fallback: cpu)", model, what, ", ".join(started))


def check_placement(model: str, fallback: Fallback, registered: list[str], nodes: dict, chosen: str) -> None:
    """An accelerator the session has but that took no node: a warning, or with fallback: fail an error."""
    asked = [name for name in registered if name != CPU]
    if not asked or chosen != CPU or not nodes:
        return
    what = f"{', '.join(asked)} took no node of the graph: every node runs on {CPU}"
    if fallback == "fail":
        raise ModelLoadError(model, f"{what} (fallback: fail)")
    log.warning("model %s: %s (fallback: cpu)", model, what)


def _message(line: str) -> str:
    """The words of one onnxruntime log line, without its time stamp and source location."""
    if "[ERROR]" in line:
        return line.split("[ERROR]", 1)[1].strip()
    return re.sub(r"^.*?\] ", "", line).strip()
