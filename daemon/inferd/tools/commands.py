"""The tool commands (`inferd quantize`, `inferd export`, `inferd check --accuracy`): parse, call, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inferd.tools.entry import entry_text


def add_commands(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "quantize",
        help="static int8 quantization of a float ONNX model, calibrated on your frames",
        description="Calibrate on a folder of frames (passed through the daemon's preprocessing), "
        "write the quantized model, compare it with the float one on held-back frames and print a "
        "ready-to-use model entry.",
    )
    q.add_argument("model", type=Path, help="the float .onnx model")
    q.add_argument("--calibration", type=Path, required=True, help="folder of images or .npy frames")
    q.add_argument("--out", type=Path, required=True, help="where to write the quantized model")
    g = q.add_mutually_exclusive_group()
    g.add_argument(
        "--per-channel", dest="per_channel", action="store_true", default=True,
        help="one weight scale per output channel (the default: measured better on real models, "
        "benchmarks/quantize_default.py)",
    )  # fmt: skip
    g.add_argument(
        "--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor"
    )
    q.add_argument("--format", choices=["qdq", "qoperator"], default="qdq", help="default qdq")
    q.add_argument(
        "--preprocess-from",
        metavar="CONFIG:MODEL",
        help="apply that config entry's preprocessing to the frames (and copy its labels/postprocess)",
    )
    q.add_argument("--activations", choices=["uint8", "int8"], default="uint8", help="default uint8")
    q.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    q.add_argument(
        "--holdout", type=float, default=0.2, help="share of frames kept back to compare (default 0.2)"
    )
    q.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    q.add_argument("--name", help="model name in the printed entry (default: from --out)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser(
        "export",
        help="PyTorch model or checkpoint (optionally its EMA weights) to ONNX, checked in onnxruntime",
        description="Load on the CPU a TorchScript file, a torch.export .pt2 program or a training "
        "checkpoint, export it to ONNX, compare onnxruntime with PyTorch on a random input and print "
        "a ready-to-use model entry. Needs pip install 'inferd[export]' (and torch).",
    )
    e.add_argument("source", type=Path, help="TorchScript file, .pt2 program, or training checkpoint")
    e.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    e.add_argument(
        "--input-shape",
        action="append",
        required=True,
        metavar="1x3x224x224",
        help="float32 input shape, batch first; repeat for each input of a multi-input model",
    )
    e.add_argument(
        "--module",
        metavar="PKG.MOD:FACTORY",
        help="for a checkpoint: builds the nn.Module (or FILE.py:FACTORY)",
    )
    e.add_argument("--weights", type=Path, help="checkpoint whose state dict replaces a TorchScript/.pt2's")
    e.add_argument(
        "--ema", action="store_true", help="load the checkpoint's EMA weights (ema, model_ema, ...)"
    )
    e.add_argument(
        "--opset", type=int, default=18, help="ONNX opset (default 18; below 18: TorchScript exporter)"
    )
    e.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave the batch dimension free, for inferd's batching (default on)",
    )
    e.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load checkpoints that hold pickled objects (runs their code)",
    )
    e.add_argument("--name", help="model name in the printed entry (default: from --out)")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_export)


def cmd_quantize(args: argparse.Namespace) -> int:
    from inferd.tools.quantize import Recipe, quantize_model, recipe_from

    if not 0 < args.holdout < 1:
        print("inferd quantize: --holdout must be between 0 and 1", file=sys.stderr)
        return 2
    recipe = recipe_from(args.preprocess_from) if args.preprocess_from else Recipe()
    report = quantize_model(
        args.model, args.out, args.calibration, recipe=recipe, per_channel=args.per_channel,
        fmt=args.format, activations=args.activations, method=args.method, holdout=args.holdout,
        max_frames=args.max_frames, progress=None if args.json else _bar,
    )  # fmt: skip
    if args.name:
        report.entry["name"] = args.name
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    a, size, lat = report.agreement, report.size_bytes, report.latency_ms
    print(
        f"quantized {report.model} -> {report.out}\n"
        f"  {report.format}, {'per-channel' if report.per_channel else 'per-tensor'} int8 weights, "
        f"{report.activations} activations, {report.method} on {report.calibration_frames} frames"
    )
    print(f"  held-back frames   {a.frames}")
    if a.top1 is not None:
        print(f"  top-1 agreement    {a.top1 * 100:.1f} %")
    print(f"  output cosine      mean {a.cosine_mean:.5f}, min {a.cosine_min:.5f}")
    print(f"  max abs difference {a.max_abs_diff:.4g}")
    print(f"  size               {size['float'] / 1e3:.1f} kB -> {size['quantized'] / 1e3:.1f} kB")
    print(f"  latency (median)   {lat['float']:.3f} ms -> {lat['quantized']:.3f} ms (this machine)")
    for note in report.notes:
        print(f"  note: {note}")
    print("model entry for the config (models:):")
    print(entry_text(report.entry))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from inferd.tools.export import config_entry, export_model, parse_shape

    r = export_model(
        args.source,
        args.out,
        [parse_shape(s) for s in args.input_shape],
        module=args.module,
        weights=args.weights,
        ema=args.ema,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        trust_pickle=args.trust_pickle,
    )
    if args.json:
        print(json.dumps({**r.to_dict(), "config_entry": config_entry(r, args.name)}, indent=2))
        return 0
    print(f"exported {r.source} ({r.kind.replace('_', ' ')}) -> {r.out}")
    if r.weights_from:
        print(f"  weights: {r.weights_from}{' (EMA)' if r.ema else ''}")
    if r.stripped_prefixes:
        print(f"  stripped key prefix(es): {', '.join(r.stripped_prefixes)}")
    for label, keys in (("missing", r.missing_keys), ("unexpected", r.unexpected_keys)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
            print(f"  WARNING: {len(keys)} {label} key(s): {', '.join(keys[:10])}{more}")
    for note in r.notes:
        print(f"  note: {note}")
    for kind, specs in (("input", r.inputs), ("output", r.outputs)):
        for t in specs:
            dims = "x".join(str(d) if isinstance(d, int) else "?" for d in t["shape"])
            print(f"  {kind:6} {t['name']:12} {dims:16} {t['type']}")
    batches = ", ".join(map(str, r.verify_batches))
    print(
        f"  {r.exporter} exporter, opset {r.opset}, batch {'free' if r.dynamic_batch else 'fixed'}; "
        f"onnxruntime vs PyTorch (batch {batches}): max abs diff {r.max_abs_diff:.3g}"
    )
    print("model entry for the config (models:):")
    print(config_entry(r, args.name))
    return 0


def _bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="calibrating", unit="frame", file=sys.stderr, leave=False)


def run_accuracy(models: dict, folder: Path) -> dict[str, dict]:
    """`inferd check --accuracy`: top-1 per loaded model on a folder per class."""
    from inferd.tools.accuracy import measure_accuracy
    from inferd.tools.frames import labelled_files

    classes = labelled_files(folder)
    return {name: measure_accuracy(m, classes).to_dict() for name, m in models.items()}


def print_accuracy(results: dict[str, dict]) -> None:
    for name, r in results.items():
        if r["skipped"]:
            print(f"  accuracy {name}: skipped, {r['skipped']}")
            continue
        top5 = f", top-5 {r['top5'] * 100:.1f} %" if r["top5"] is not None else ""
        top1 = f"{r['top1'] * 100:.1f} %" if r["top1"] is not None else "n/a"
        print(f"  accuracy {name}: top-1 {top1}{top5} on {r['frames']} frames")
        for cls, c in r["per_class"].items():
            value = f"{c['top1'] * 100:5.1f} %" if c["top1"] is not None else "  n/a"
            print(f"    {cls:20} {value}  ({c['frames']} frames)")
        for m in r["confusions"]:
            print(f"    confused: {m['true']} -> {m['predicted']} ({m['frames']} frames)")
        for path, why in list(r["failed"].items())[:5]:
            print(f"    failed: {path}: {why}")
        if len(r["failed"]) > 5:
            print(f"    ... and {len(r['failed']) - 5} more failed frames")
