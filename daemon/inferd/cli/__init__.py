"""The command line: parse, call, print. The work is done elsewhere.

One file per command group: run.py (run, reload, demo), check.py (check, models), keys.py,
remote.py (send, status, bench); the workstation tools (tools/commands.py) and the camera process
(capture/command.py) add their own.
"""

from __future__ import annotations

import argparse
import sys

from inferd import __version__
from inferd.cli import check, keys, remote, run
from inferd.errors import InferdError


def main(argv: list[str] | None = None) -> int:
    import os

    # before anything imports onnxruntime: no device id and telemetry store in ~/.cache
    # (engine/backends/onnx.py)
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from inferd.service.logs import setup_logging

    setup_logging(args.log_level or "warning")
    try:
        return args.func(args)
    except InferdError as e:
        print(f"inferd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferd", description="Edge inference daemon for ONNX and TFLite models."
    )
    p.add_argument("--version", action="version", version=f"inferd {__version__}")
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level for this command (default warning; the daemon takes it from the config, "
        "capture logs at info)",
    )
    sub = p.add_subparsers(metavar="COMMAND")
    check.add_check(sub)
    run.add_run(sub)
    run.add_reload(sub)
    keys.add_keys(sub)
    run.add_demo(sub)
    remote.add_send(sub)
    remote.add_status(sub)
    remote.add_bench(sub)
    check.add_models(sub)

    from inferd.capture.command import add_command
    from inferd.tools.commands import add_commands

    add_commands(sub)
    add_command(sub)
    return p
