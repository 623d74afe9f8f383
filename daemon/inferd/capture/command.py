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


def cmd_capture(args: argparse.Namespace) -> int:
    import signal

    from inferd.capture.config import load_capture_config
    from inferd.capture.run import Capture

    keys = ("url", "to", "to_type", "source", "model", "fps", "size", "loop", "pace", "encoding",
            "input_format", "metrics")  # fmt: skip
    cfg = load_capture_config(args.config, {k: getattr(args, k) for k in keys})
    capture = Capture(cfg)

    def on_signal(_signum, _frame) -> None:
        capture.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = capture.run()
    if code:
        print(f"inferd capture: {cfg.url} could not be read (see above)", file=sys.stderr)
    return code
