"""`inferd run`, `inferd reload` and `inferd demo`: the daemon in the foreground, told to re-read
its config, or run on the example models."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from inferd.config import DEFAULT_PATH, load_config
from inferd.errors import InferdError, ModelLoadError

CONFIG_HELP = f"config file (default {DEFAULT_PATH})"


def add_run(sub) -> None:
    r = sub.add_parser("run", help="run the daemon in the foreground (logs to stderr)")
    r.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH, help=CONFIG_HELP)
    r.set_defaults(func=cmd_run)


def add_reload(sub) -> None:
    rl = sub.add_parser("reload", help="make a running daemon re-read its config (SIGHUP)")
    rl.add_argument("--pid", type=int, help="the daemon's PID (default: find the one 'inferd run')")
    rl.add_argument(
        "--timeout", type=float, default=80.0,
        help="seconds to wait for the daemon's verdict (default 80; systemd allows TimeoutStartSec=90)",
    )  # fmt: skip
    rl.add_argument("--no-wait", action="store_true", help="send SIGHUP and return without the verdict")
    rl.set_defaults(func=cmd_reload)


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="run the daemon on the example models with synthetic cameras")
    d.add_argument(
        "-c", "--config", type=Path, default=None, help="models from this config (default: examples)"
    )
    d.add_argument("--sources", type=int, default=2, help="synthetic cameras (default 2)")
    d.add_argument("--fps", type=float, default=15.0, help="frames per second per camera (default 15)")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.set_defaults(func=cmd_demo)


def cmd_run(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    import threading

    from inferd.daemon import Daemon
    from inferd.service.logs import setup_logging
    from inferd.service.systemd import Notifier, Watchdog, watchdog_interval

    config, base_dir = load_config(args.config)
    if args.log_level is None:  # not given on the command line: the config decides
        setup_logging(config.logging.level)
    notifier = Notifier()
    daemon = Daemon(config, base_dir, notifier=notifier, config_path=args.config)
    wake = threading.Event()
    flags = {"stop": False, "reload": False, "again": False}

    def on_signal(signum: int, _frame) -> None:
        # A second SIGTERM/SIGINT (systemd before its SIGKILL, Ctrl-C twice) must not cut the
        # drain short: it only sets the flag again. The drain is bounded by drain_timeout_s.
        if signum != signal.SIGHUP and flags["stop"]:
            flags["again"] = True
        flags["reload" if signum == signal.SIGHUP else "stop"] = True
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        daemon.start()
    except OSError as e:
        notifier.status(f"failed to start: {e}")
        raise InferdError(str(e)) from None
    except ModelLoadError as e:  # already logged, with every path tried: once is enough
        notifier.status(f"failed to start: {e}")
        return 1
    except InferdError as e:
        notifier.status(f"failed to start: {e}")
        raise
    interval = watchdog_interval()
    watchdog = Watchdog(notifier, interval, daemon.health) if interval else None
    if watchdog:
        watchdog.start()
    while not flags["stop"]:
        wake.wait(1.0)
        wake.clear()
        if flags["reload"] and not flags["stop"]:
            flags["reload"] = False
            daemon.reload()
    if watchdog:
        watchdog.stop()
    daemon.stop()
    if flags["again"]:
        logging.getLogger("inferd").info("stop signal received again while draining: ignored")
    # Python restores the default handlers while the interpreter shuts down: a signal arriving
    # then would kill an inferd that has already served everything (exit -15 instead of 0).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if daemon.busy:  # an inference outlived the drain time; its reply was sent: do not wait for it
        logging.shutdown()
        os._exit(0)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP, then wait for the daemon's verdict: exit 1 with the reason when the new config did
    not take effect (systemd's ExecReload runs this, so `systemctl reload` fails too)."""
    import os
    import signal

    from inferd.service.systemd import read_reload_status, reload_status_path

    pids = [args.pid] if args.pid else running_daemons()
    if not pids:
        print("inferd reload: no running 'inferd run' found (give --pid)", file=sys.stderr)
        return 1
    if len(pids) > 1:
        print(
            f"inferd reload: several daemons run ({', '.join(map(str, pids))}): give --pid", file=sys.stderr
        )
        return 1
    pid = pids[0]
    status = reload_status_path(pid, runtime_dir_of(pid))
    sent = time.monotonic()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"inferd reload: cannot signal {pid}: {e.strerror}", file=sys.stderr)
        return 1
    if args.no_wait:
        print(f"sent SIGHUP to inferd (pid {pid}); the journal or log says how the reload went")
        return 0
    end = sent + args.timeout
    while time.monotonic() < end:
        verdict = read_reload_status(status)
        if verdict and verdict.get("pid") == pid and verdict.get("started", 0) >= sent:
            if verdict.get("ok"):
                print(f"inferd (pid {pid}) reloaded: {verdict.get('message')}")
                return 0
            print(f"inferd reload: failed: {verdict.get('message')}", file=sys.stderr)
            return 1
        if not alive(pid):
            print(f"inferd reload: inferd (pid {pid}) exited during the reload", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(
        f"inferd reload: no verdict from inferd (pid {pid}) within {args.timeout:g} s "
        f"(looked for {status}); it may still be loading models: see its log",
        file=sys.stderr,
    )
    return 1


def alive(pid: int) -> bool:
    """Signal 0: works where /proc/PID is hidden (the unit's ProtectProc=invisible hides the
    daemon's /proc entry from ExecReload's process, found by the QEMU boot)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runtime_dir_of(pid: int) -> str | None:
    """The daemon's $RUNTIME_DIRECTORY (where it writes reload verdicts), read from /proc; None when
    that is hidden (under the unit, ExecReload has the same $RUNTIME_DIRECTORY itself)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"RUNTIME_DIRECTORY="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return None


def running_daemons() -> list[int]:
    """PIDs of `inferd run` processes of this machine (read from /proc)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(a) for a in argv]
        if b"run" in argv and (b"inferd" in names or any(a == b"inferd" for a in argv)):
            pids.append(int(entry))
    return pids


def cmd_demo(args: argparse.Namespace) -> int:
    from inferd.cli.demo import run_demo

    try:
        return run_demo(
            args.config, args.sources, args.fps, args.duration, out=lambda s: print(s, flush=True)
        )
    except FileNotFoundError as e:
        print(f"inferd demo: {e}", file=sys.stderr)
        return 1
