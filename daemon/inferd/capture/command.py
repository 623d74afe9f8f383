"""`inferd capture`: parse, configure, run (thin: the work is in run.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_command(sub) -> None:
    c = sub.add_parser(
        "capture", help="the camera process: V4L2, RTSP/HTTP, a video file or an image folder -> inferd",
        description="Decode a camera, stream, file or folder; send the frames to inferd (docs/capture.md).",
    )  # fmt: skip
    c.add_argument("-c", "--config", type=Path, help="a camera YAML (the same keys as the flags)")
    c.add_argument("--url", help="/dev/videoN, rtsp://..., http(s)://..., a video file or an image folder")
    c.add_argument("--to", help="inferd's pull endpoint, e.g. ipc:///run/inferd/frames.sock")
    c.add_argument(
        "--to-type", choices=["pull", "router"], help="the kind of endpoint --to is (default pull)"
    )
    c.add_argument("--source", help="source name (default cam0)")
    c.add_argument("--model", help="the model to ask for (default: inferd's routes)")
    c.add_argument("--fps", type=float, help="send at most this many frames per second")
    c.add_argument("--size", help="resize to WIDTHxHEIGHT at the source")
    c.add_argument(
        "--loop", action="store_true", default=None, help="files and folders: start again at the end"
    )
    c.add_argument("--pace", choices=["realtime", "asap"], help="files and folders (default realtime)")
    c.add_argument("--encoding", choices=["raw", "jpeg"], help="raw arrays or JPEG (for tcp links)")
    c.add_argument("--input-format", help="V4L2: the camera format to ask for (mjpeg, yuyv422, ...)")
    c.add_argument("--metrics", help="HOST:PORT for this process's Prometheus metrics")
    c.set_defaults(func=cmd_capture)


def keep_frame_memory(trim_bytes: int = 32 << 20, mmap_bytes: int = 16 << 20) -> bool:
    """glibc: serve frame-sized blocks from the heap and keep up to `trim_bytes` of freed heap.

    Each decoded frame is a fresh buffer of width x height x 3 bytes that lives until ZeroMQ has
    sent it. With glibc's defaults those come from mmap or a heap that is trimmed after each free,
    so every frame pays page faults and zeroing: measured at 640x480, 0.35 ms of CPU per frame and
    a quarter of the rate (benchmarks/capture.py). 16 MB covers a 1080p RGB frame (6.2 MB) and is
    glibc's ceiling on 32-bit boards. Elsewhere (musl) nothing is done."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_bytes)) and bool(mallopt(m_trim_threshold, trim_bytes))


def stop_with_parent() -> bool:
    """A capture that another inferd process started and owns (`inferd demo` sets
    INFERD_PARENT_PID to its pid) gets SIGTERM, its clean stop, when that process dies, even by
    SIGKILL (PR_SET_PDEATHSIG; Linux). False when the owner is already gone."""
    import contextlib
    import ctypes
    import os
    import signal

    owner = os.environ.get("INFERD_PARENT_PID")
    if not owner:
        return True
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return str(os.getppid()) == owner  # else it died before the line above


def cmd_capture(args: argparse.Namespace) -> int:
    import signal

    from inferd.capture.config import load_capture_config
    from inferd.capture.run import Capture

    keys = ("url", "to", "to_type", "source", "model", "fps", "size", "loop", "pace", "encoding",
            "input_format", "metrics")  # fmt: skip
    if args.log_level is None:  # a camera process says what it does: streaming, reconnecting (why)
        from inferd.service.logs import setup_logging

        setup_logging("info")
    cfg = load_capture_config(args.config, {k: getattr(args, k) for k in keys})
    keep_frame_memory()
    capture = Capture(cfg)

    def on_signal(_signum, _frame) -> None:
        capture.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if not stop_with_parent():
        capture.stop.set()
    code = capture.run()
    if code:
        print(f"inferd capture: {capture.failure}", file=sys.stderr)
    return code
