"""Logging set-up, and routing the runtimes' own stderr chatter through our loggers."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_capture_lock = threading.Lock()

# Severity words the runtimes put at the start of their lines.
_SEVERITY = [
    (re.compile(r"^\s*(E|F)\b|\b(ERROR|FATAL)\b"), logging.ERROR),
    (re.compile(r"^\s*W\b|\bWARNING\b|\bW:onnxruntime"), logging.WARNING),
    (re.compile(r"^\s*(I|V)\b|\bINFO\b|\bVERBOSE\b"), logging.INFO),
]


def setup_logging(level: str = "info") -> None:
    """One line per event on stderr. Under journald (JOURNAL_STREAM) no own timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))


def severity_of(line: str) -> int:
    for pattern, level in _SEVERITY:
        if pattern.search(line):
            return level
    return logging.INFO


@contextlib.contextmanager
def native_stderr_to(logger: logging.Logger, min_level: int) -> Iterator[None]:
    """Capture what C++ code writes to fd 2 while the block runs and re-log it line by line.

    Used around model loading only (never on the hot path). Lines below `min_level` are
    logged at DEBUG so nothing is lost when debugging.
    """
    with _capture_lock, tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for raw in tmp.read().decode(errors="replace").splitlines():
                line = raw.strip()
                if line:
                    level = severity_of(line)
                    logger.log(level if level >= min_level else logging.DEBUG, "%s", line)
