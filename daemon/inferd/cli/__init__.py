"""The command line: parse, call, print. The work is done elsewhere."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from inferd import __version__
from inferd.config import DEFAULT_PATH, ModelConfig, load_config
from inferd.errors import InferdError, ModelLoadError

CONFIG_HELP = f"config file (default {DEFAULT_PATH})"


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

    c = sub.add_parser("check", help="validate a config, load and warm every model, print a report")
    c.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})"
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument(
        "--accuracy",
        type=Path,
        metavar="DIR",
        help="also report each classifier's top-1 on labelled frames: DIR/<class>/<image or .npy>",
    )
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="run the daemon in the foreground (logs to stderr)")
    r.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH, help=CONFIG_HELP)
    r.set_defaults(func=cmd_run)

    rl = sub.add_parser("reload", help="make a running daemon re-read its config (SIGHUP)")
    rl.add_argument("--pid", type=int, help="the daemon's PID (default: find the one 'inferd run')")
    rl.add_argument(
        "--timeout", type=float, default=80.0,
        help="seconds to wait for the daemon's verdict (default 80; systemd allows TimeoutStartSec=90)",
    )  # fmt: skip
    rl.add_argument("--no-wait", action="store_true", help="send SIGHUP and return without the verdict")
    rl.set_defaults(func=cmd_reload)

    k = sub.add_parser("keys", help="CURVE keys for tcp endpoints")
    ksub = k.add_subparsers(metavar="ACTION", required=True)
    kg = ksub.add_parser("generate", help="write NAME.key (public, 0644) and NAME.key_secret (0600) into DIR")
    kg.add_argument("dir", type=Path)
    kg.add_argument("--name", default="server", help="file name stem (default server)")
    kg.set_defaults(func=cmd_keys_generate)

    d = sub.add_parser("demo", help="run the daemon on the example models with synthetic cameras")
    d.add_argument(
        "-c", "--config", type=Path, default=None, help="models from this config (default: examples)"
    )
    d.add_argument("--sources", type=int, default=2, help="synthetic cameras (default 2)")
    d.add_argument("--fps", type=float, default=15.0, help="frames per second per camera (default 15)")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("send", help="send an image (JPEG/PNG) or a .npy file and print the result")
    s.add_argument("file", type=Path)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("-c", "--config", type=Path, help="use the first router endpoint of this config")
    g.add_argument("--endpoint", help="a router endpoint, e.g. tcp://127.0.0.1:5555")
    s.add_argument("--model", help="target model (default: the daemon's routes)")
    s.add_argument("--source", default="cli", help="source name (default cli)")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    s.add_argument("--json", action="store_true", help="print the result header as JSON")
    s.set_defaults(func=cmd_send)

    st = sub.add_parser("status", help="fps, latency, drops and temperature of a running daemon")
    st.add_argument(
        "--url", default=None, help="metrics URL (default: from -c, else http://127.0.0.1:9464/metrics)"
    )
    st.add_argument(
        "-c", "--config", type=Path, default=None, help="take the metrics address from this config"
    )
    st.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes (default 2)")
    st.set_defaults(func=cmd_status)

    b = sub.add_parser(
        "bench", help="load a running daemon: N sources at a fixed rate; throughput, latency, drops"
    )
    bg = b.add_mutually_exclusive_group(required=True)
    bg.add_argument("-c", "--config", type=Path, help="use the first router endpoint of this config")
    bg.add_argument("--endpoint", help="a router endpoint, e.g. tcp://127.0.0.1:5555")
    b.add_argument("--model", default=None, help="target model (default: the daemon's routes)")
    b.add_argument("--sources", type=int, default=1, help="concurrent sources (default 1)")
    b.add_argument(
        "--rate",
        type=float,
        default=30.0,
        help="frames per second per source (default 30); 0 = as fast as answered (one in flight each)",
    )
    b.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    b.add_argument("--frame", default="640x480x3", help="WxHxC of the uint8 frames (default 640x480x3)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("models", help="describe a model file and measure its latency")
    m.add_argument("path", type=Path, help="a .onnx or .tflite file")
    m.add_argument("--runtime", choices=["onnx", "tflite"], help="default: from the extension")
    m.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    m.add_argument("--runs", type=int, default=50, help="timed runs for the mean latency (default 50)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    m.set_defaults(func=cmd_models)

    from inferd.capture.command import add_command
    from inferd.tools.commands import add_commands

    add_commands(sub)
    add_command(sub)
    return p


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


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from inferd.ingest.security import generate_keys

    if (args.dir / f"{args.name}.key_secret").exists():
        print(f"inferd keys: {args.dir / args.name}.key_secret exists; not overwriting", file=sys.stderr)
        return 1
    public, secret = generate_keys(args.dir, args.name)
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it here, mode 0600)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from inferd.cli.bench import run_bench

    try:
        w, h, *c = (int(v) for v in args.frame.lower().split("x"))
    except ValueError:
        print(f"inferd bench: --frame {args.frame!r} is not WxHxC", file=sys.stderr)
        return 2
    if args.rate < 0 or args.sources < 1 or args.duration <= 0:
        print("inferd bench: --rate must be >= 0, --sources >= 1 and --duration > 0", file=sys.stderr)
        return 2
    endpoint = args.endpoint or router_endpoint(args.config)
    shape = (h, w, *c)
    say = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
    r = run_bench(endpoint, args.model, args.sources, args.rate, args.duration, shape, out=say)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0 if r["ok"] else 1
    pace = f"{r['rate_per_source']:g} fps" if args.rate else "as fast as answered"
    print(
        f"{endpoint}: {r['sources']} source(s) x {pace}, {args.frame}, {r['duration_s']:g} s: "
        f"sent {r['sent']}, ok {r['ok']} ({r['throughput_fps']} fps)"
    )
    if "p50_ms" in r:
        print(f"latency p50 {r['p50_ms']} ms, p90 {r['p90_ms']} ms, p99 {r['p99_ms']} ms")
    if r["errors"]:
        print("not served: " + ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())))
    if not r["ok"]:
        print("nothing was served:", file=sys.stderr)
        for reason, message in sorted(r["messages"].items()):
            print(f"  {reason}: {message}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from inferd.cli.demo import run_demo

    try:
        return run_demo(
            args.config, args.sources, args.fps, args.duration, out=lambda s: print(s, flush=True)
        )
    except FileNotFoundError as e:
        print(f"inferd demo: {e}", file=sys.stderr)
        return 1


def router_endpoint(config_path: Path) -> str:
    config, _ = load_config(config_path)
    for ep in config.endpoints:
        if ep.type == "router":
            addr = ep.bind or ep.connect[0]
            return addr.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")
    raise InferdError(f"{config_path}: no router endpoint to send to")


def cmd_send(args: argparse.Namespace) -> int:
    import numpy as np

    from inferd.client import InferClient

    endpoint = args.endpoint or router_endpoint(args.config)
    try:
        frame = (
            np.load(args.file, allow_pickle=False) if args.file.suffix == ".npy" else args.file.read_bytes()
        )
    except (OSError, ValueError) as e:
        print(f"inferd send: cannot read {args.file}: {e}", file=sys.stderr)
        return 1
    try:
        with InferClient(endpoint, timeout=args.timeout, source=args.source) as client:
            result = client.infer(frame, model=args.model)
    except ValueError as e:
        print(f"inferd send: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.header, indent=2))
        return 0
    t = result.timings
    print(
        f"{result.model} ({result.source} #{result.seq}): total {t.get('total_ms')} ms, "
        f"inference {t.get('inference_ms')} ms"
    )
    for c in result.classes:
        print(f"  {c['score']:8.4f}  {c['label'] if c['label'] is not None else c['index']}")
    for d in result.detections:
        print(f"  {d['score']:8.4f}  {d['label'] or d['class']}  box {[round(v, 3) for v in d['box']]}")
    for spec, arr in zip(result.header.get("outputs", []), result.outputs, strict=False):
        flat = arr.ravel()
        print(
            f"  {spec['name']} {list(arr.shape)} {arr.dtype}: {np.array2string(flat[:8], precision=4)}"
            f"{' ...' if flat.size > 8 else ''}"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import urllib.error

    from inferd.cli.status import run_status

    url = args.url
    if url is None:
        listen = load_config(args.config)[0].metrics.listen if args.config else "127.0.0.1:9464"
        if not listen:
            raise InferdError("the config disables the metrics endpoint (metrics.listen: null)")
        url = f"http://{listen.replace('0.0.0.0', '127.0.0.1')}/metrics"
    elif not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    try:
        return run_status(url, args.watch, args.interval, out=lambda s: print(s, flush=True))
    except (urllib.error.URLError, OSError) as e:
        print(f"inferd status: cannot scrape {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    from inferd.engine.models import load_models

    try:
        config, base_dir = load_config(args.config)
    except InferdError as e:
        if args.json:
            print(json.dumps({"ok": False, "config": str(args.config), "errors": [str(e)]}, indent=2))
        else:
            print(f"inferd check: {e}", file=sys.stderr)
        return 1
    loaded, failed = load_models(config, base_dir)
    required_failed = [n for n in failed if next(m for m in config.models if m.name == n).required]
    ok = not required_failed
    report = {
        "ok": ok,
        "config": str(args.config),
        "models": [m.describe() for m in loaded.values()],
        "errors": [str(e) for e in failed.values()],
        "degraded": sorted(n for n in failed if n not in required_failed),
    }
    try:
        if args.accuracy is not None:
            from inferd.tools.commands import run_accuracy

            report["accuracy"] = run_accuracy(loaded, args.accuracy)
    finally:
        for m in loaded.values():
            m.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_check(report)
    return 0 if ok else 1


def print_check(report: dict) -> None:
    print(f"config {report['config']}: {'OK' if report['ok'] else 'FAILED'}")
    for m in report["models"]:
        print_model(m)
    for err in report["errors"]:
        print(f"  error: {err}")
    if report["degraded"]:
        print(f"  degraded: optional model(s) not loaded: {', '.join(report['degraded'])}")
    if "accuracy" in report:
        from inferd.tools.commands import print_accuracy

        print_accuracy(report["accuracy"])


def print_model(m: dict) -> None:
    quant = m["quantization"] or ("quantized" if m["quantized"] else "float")
    print(f"  model {m['name']}: {m['runtime']} ({m['runtime_package']}), {quant}, {m['path']}")
    for kind in ("inputs", "outputs"):
        for t in m[kind]:
            dims = "x".join("?" if d < 0 else str(d) for d in t["shape"])
            q = t["quantization"]
            qtext = ""
            if q and len(q["scale"]) == 1:
                qtext = f"  scale {q['scale'][0]:.6g} zero_point {q['zero_point'][0]}"
            elif q:
                qtext = f"  per-channel ({len(q['scale'])} scales, axis {q['axis']})"
            print(f"    {kind[:-1]:6} {t['name']:24} {dims:16} {t['dtype']:8}{qtext}")
    if m.get("warm_latency_ms") is not None:
        print(
            f"    warm-up: {m['warmup_runs']} runs, first {m['first_run_ms']:.3f} ms, "
            f"then {m['warm_latency_ms']:.3f} ms; loaded in {m['load_seconds']:.3f} s"
        )
    if m.get("latency_error"):
        print(f"    latency: not measured: {m['latency_error']}")
    if m.get("mean_latency_ms") is not None:
        print(
            f"    latency: mean {m['mean_latency_ms']:.3f} ms over {m['runs']} runs "
            f"({m['threads'] or 'all'} threads)"
        )


def cmd_models(args: argparse.Namespace) -> int:
    import re

    from pydantic import ValidationError

    from inferd.engine.models import load_model

    if args.path.suffix.lower() in (".yaml", ".yml") and not args.runtime:
        print(
            f"inferd models: {args.path} is a config file; `inferd models` describes one model file "
            f"(.onnx, .ort, .tflite). For every model of a config: inferd check -c {args.path}",
            file=sys.stderr,
        )
        return 2
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", args.path.stem) or "model"
    entry = {"name": name, "path": str(args.path), "warmup": 1}
    if args.runtime:
        entry["runtime"] = args.runtime
    if args.threads:
        entry["threads"] = args.threads
    try:
        cfg = ModelConfig.model_validate(entry)
    except ValidationError as e:
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors(include_url=False))
        msgs = msgs.replace("set runtime: onnx or runtime: tflite", "give --runtime onnx or --runtime tflite")
        print(f"inferd models: {msgs}", file=sys.stderr)
        return 2
    model = load_model(cfg, Path.cwd())
    info = model.describe()
    try:
        info["mean_latency_ms"], info["runs"] = measure(model, args.runs), args.runs
    except Exception as e:  # a model that loads but fails on made-up inputs: say so, no traceback
        shapes = ", ".join(str(list(x.shape)) for x in model.warm_inputs())
        info["mean_latency_ms"], info["runs"] = None, 0
        info["latency_error"] = f"could not run it on zeros of shape {shapes}: {e}"
    model.close()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_model(info)
    return 0


def measure(model, runs: int) -> float | None:
    if runs <= 0:
        return None
    inputs = model.warm_inputs()
    t0 = time.perf_counter()
    for _ in range(runs):
        model.backend.infer(inputs)
    return round((time.perf_counter() - t0) / runs * 1000, 4)
