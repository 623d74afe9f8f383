"""Shared fixtures: the committed example models and a config writer."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MODELS = EXAMPLES / "models"
sys.path.insert(0, str(EXAMPLES))  # make_models is importable by tests


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "inferd.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bare_session(path, threads: int | None = None, **options):
    """A bare onnxruntime session set up as inferd sets up its own: the CPU provider and the exact
    int8 kernels on x86 without VNNI (engine/backends/onnx.py EXACT_INT8), so that "equals the bare
    runtime" compares the same arithmetic on any machine."""
    import onnxruntime as ort

    from inferd.engine.backends.onnx import EXACT_INT8

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    for key, value in options.items():
        setattr(opts, key, value)
    opts.add_session_config_entry(*EXACT_INT8)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
