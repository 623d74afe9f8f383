"""The demo's recorded camera: a short H.264 clip made on the spot, played by `inferd capture`
(the shipped camera process, as a user runs it) into the daemon, looped in real time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np


def make_clip(path: Path, strip: np.ndarray, fps: float, seconds: float = 3.0) -> Path:
    """A 640x480 H.264 clip of a pattern sliding across `strip` (PyAV, FFmpeg inside)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(int(fps * seconds)):
            x = (i * 7) % 640
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(strip[:, x : x + 640]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class VideoCamera:
    """`inferd capture --url CLIP --loop` in a subprocess, which stops when this process dies (even
    killed: INFERD_PARENT_PID); `sent` is read from its final log line."""

    def __init__(self, endpoint: str, source: str, clip: Path) -> None:
        self.source, self.sent, self.unsent = source, 0, 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inferd", "--log-level", "info", "capture", "--url", str(clip),
             "--to", endpoint, "--source", source, "--loop"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "INFERD_PARENT_PID": str(os.getpid())},
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        m = re.search(r"stopped: (\d+) frames decoded, (\d+) sent", err or "")
        self.sent = int(m.group(2)) if m else 0
        if m is None:
            self.error = (err or "").strip().splitlines()[-1:] or ["no output"]


def start_video_camera(endpoint: str, folder: str, strip: np.ndarray, fps: float) -> VideoCamera | None:
    """None when PyAV is not installed (the `capture` extra)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return None
    return VideoCamera(endpoint, "video", make_clip(Path(folder) / "clip.mp4", strip, fps))
