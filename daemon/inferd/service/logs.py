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

# How the runtimes mark severity: onnxruntime "[W:onnxruntime:...", LiteRT "WARNING: ...".
_ORT = re.compile(r"^\S+ \S+ \[([VIWEF]):onnxruntime:[^\]]*\]\s*")  # with its own timestamp
_ORT_LEVELS = {
    "V": logging.DEBUG,
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.ERROR,
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WORDS = [
    (re.compile(r"^(ERROR|FATAL)\b"), logging.ERROR),
    (re.compile(r"^WARNING\b"), logging.WARNING),
    (re.compile(r"^(INFO|VERBOSE)\b"), logging.INFO),
]


def setup_logging(level: str = "info") -> None:
    """One line per event on stderr. Under journald (JOURNAL_STREAM) no own timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        from inferd.service.systemd import JournalFormatter

        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))


def severity_of(line: str) -> tuple[int, str]:
    """The level of one line a runtime printed, and the line without its own timestamp."""
    m = _ORT.match(line)
    if m:
        return _ORT_LEVELS[m.group(1)], line[m.end() :]
    for pattern, level in _WORDS:
        if pattern.match(line):
            return level, line
    return logging.WARNING, line


@contextlib.contextmanager
def native_stderr_to(logger: logging.Logger, min_level: int) -> Iterator[list[str]]:
    """Capture what C++ code writes to fd 2 while the block runs and re-log it line by line.

    Used around model loading only (never on the hot path). Lines below `min_level` are
    logged at DEBUG so nothing is lost when debugging. The list the block gets is filled with
    the lines when the block ends (a runtime's load report is read from it).
    """
    lines: list[str] = []
    with _capture_lock, tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for raw in tmp.read().decode(errors="replace").splitlines():
                line = _ANSI.sub("", raw).strip()
                if line:
                    lines.append(line)
                    level, text = severity_of(line)
                    logger.log(level if level >= min_level else logging.DEBUG, "%s", text)
