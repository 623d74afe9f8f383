"""`inferd capture` as a real process for the tests: started on a camera YAML, logging to a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def start_capture(tmp: Path, camera_yaml: str) -> tuple[subprocess.Popen, Path]:
    """Write cam.yaml, start `inferd capture -c` on it; returns the process and its log file."""
    cfg, log_path = tmp / "cam.yaml", tmp / "capture.log"
    cfg.write_text(camera_yaml)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferd", "--log-level", "info", "capture", "-c", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log_path
