"""`inferd check` and `inferd models`: a config's models, or one model file, loaded and described
without starting anything."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from inferd.config import DEFAULT_PATH, ModelConfig, load_config
from inferd.errors import InferdError


def add_check(sub) -> None:
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


def add_models(sub) -> None:
    m = sub.add_parser(
        "models", help="describe a model file, or every model of a config, and measure its latency"
    )
    m.add_argument(
        "path", type=Path, help="a .onnx or .tflite file, or a config (.yaml): its models, as configured"
    )
    m.add_argument("--runtime", choices=["onnx", "tflite"], help="default: from the extension")
    m.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    m.add_argument("--runs", type=int, default=50, help="timed runs for the mean latency (default 50)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    m.set_defaults(func=cmd_models)


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
    if m.get("accelerator"):
        where = ", ".join(f"{k} {v}" for k, v in (m.get("placement") or {}).items())
        print(f"    runs on {m['accelerator']}" + (f" (nodes: {where})" if where else ""))
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
        return config_models(args)
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
    info = timed(load_model(cfg, Path.cwd()), args.runs)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_model(info)
    return 0


def config_models(args: argparse.Namespace) -> int:
    """`inferd models CONFIG`: each model of the config loaded as the daemon would (runtime
    options, providers, delegate), described and timed; 1 if one cannot be loaded."""
    from inferd.engine.models import load_models

    try:
        config, base_dir = load_config(args.path)
    except InferdError as e:
        print(f"inferd models: {e}", file=sys.stderr)
        return 1
    loaded, failed = load_models(config, base_dir)
    infos = [timed(m, args.runs) for m in loaded.values()]
    if args.json:
        print(json.dumps({"models": infos, "errors": [str(e) for e in failed.values()]}, indent=2))
    else:
        for info in infos:
            print_model(info)
        for e in failed.values():
            print(f"  error: {e}")
    return 1 if failed else 0


def timed(model, runs: int) -> dict:
    """The model's description with its mean latency over `runs` runs on zeros; the model closed."""
    info = model.describe()
    try:
        info["mean_latency_ms"], info["runs"] = measure(model, runs), runs
    except Exception as e:  # a model that loads but fails on made-up inputs: say so, no traceback
        shapes = ", ".join(str(list(x.shape)) for x in model.warm_inputs())
        info["mean_latency_ms"], info["runs"] = None, 0
        info["latency_error"] = f"could not run it on zeros of shape {shapes}: {e}"
    model.close()
    return info


def measure(model, runs: int) -> float | None:
    if runs <= 0:
        return None
    inputs = model.warm_inputs()
    t0 = time.perf_counter()
    for _ in range(runs):
        model.backend.infer(inputs)
    return round((time.perf_counter() - t0) / runs * 1000, 4)
