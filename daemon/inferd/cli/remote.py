"""`inferd send`, `inferd status` and `inferd bench`: a running daemon, through its router endpoint
or its /metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inferd.config import load_config
from inferd.errors import InferdError


def add_send(sub) -> None:
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


def add_status(sub) -> None:
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


def add_bench(sub) -> None:
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
