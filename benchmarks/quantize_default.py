"""Per-tensor or per-channel int8 weights: which should `inferd quantize` default to?

Quantizes each available real float model twice with the project's own
`inferd.tools.quantize.quantize_model` (QDQ, uint8 activations, int8 weights, MinMax; the recipe
comes from a generated config entry through `recipe_from`), once with per-tensor and once with
per-channel weight scales, and records for each:

* the tool's own report: `QuantizeReport.agreement` (top-1 agreement, output cosine mean/min, largest
  absolute difference) on the 20 % of the calibration folder it holds back, sizes, latency (noisy
  on a shared machine), and how many weight tensors got one scale or one per channel;
* metrics on a separate held-out set that shares no frame, and for text no word pair, with any
  calibration folder, run through the daemon's preprocessing (`inferd.engine.models.load_model`):
  - `textdir_cls`: PaddleOCR's text-direction classifier (rapidocr, labels 0/180) on lines rendered
    as the tests render them (tests/backends/test_pretrained.py `text_line`), half upside down:
    top-1 ACCURACY against the true labels for float, per-tensor and per-channel on 200 held-out
    lines; calibrated on 16 and on 40 lines (folders of 20 and 50), three calibration seeds each;
  - `textdir_cls_varied`: the same model, calibrated and evaluated (400 held-out lines) on harder
    lines of random size, offset and contrast (48x320, squeezed to 48x192 by the preprocessing);
    paired counts of the lines only one setting gets right, with an exact McNemar p-value;
  - `ppocrv4_det` (PP-OCRv4 DB detector, 96x320): output cosine, largest/mean absolute difference
    and IoU of the text mask (probability > 0.3, DB's threshold) against float, 200 two-line images;
  - `ppocrv4_rec` (PP-OCRv4 CTC recognizer, 48x320): output cosine, per-step argmax agreement,
    greedy CTC strings equal to float's, exact match (also ignoring spaces) and character error
    rate against the rendered text, 200 lines; det and rec calibrated on 16 and on 40 frames;
  - the synthetic example models (examples/models/classifier_float.onnx with the example config's
    `classifier` preprocessing, 200 images; larger_float.onnx fed normalized .npy arrays, 100):
    random weights, so no true labels: top-1 agreement with float, logit cosine.

Everything is seeded (frames, word choice, calibration subsets) and onnxruntime's MinMax calibration
is deterministic, so a rerun gives the same numbers (latencies and timings excepted). A model that
fails to be found, quantized or loaded is recorded with its error and the run carries on.

Run from the repository root (about 2 minutes on 2 cores; needs the quantize extra and the
pretrained packages `make test` installs, rapidocr==3.6.0):

    .venv/bin/python -m benchmarks.quantize_default [--heldout 200] [--seeds 1 2 3] [--models ...]

Prints a table and writes benchmarks/results/quantize_default.json (with versions and machine).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, files, version
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from benchmarks.common import MODELS, ROOT, save
from inferd.config import parse_config
from inferd.engine.models import Model, load_model
from inferd.tools.quantize import quantize_model, recipe_from

sys.path.insert(0, str(ROOT / "examples"))
import make_models  # examples/make_models.py: the synthetic images of the example models

# Same words and line rendering as the tests (tests/tools/conftest.py, tests/backends/test_pretrained.py).
WORDS = [
    "edge", "inference", "daemon", "quantized", "model", "camera", "frame", "sensor", "metrics", "systemd",
    "board", "latency", "ZeroMQ", "Hello", "2024", "ARM", "Linux", "field", "engineer", "Raspberry", "Jetson",
]  # fmt: skip
PAIRS = list(itertools.permutations(WORDS, 2))  # 420 two-word lines
random.Random(0).shuffle(PAIRS)
HELD_PAIRS, CALIB_PAIRS = PAIRS[:200], PAIRS[200:]  # held-out text never appears in calibration

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
DB_THRESHOLD = 0.3  # PaddleOCR's DB post-processing binarizes the probability map here
HELD_SEED = 1000  # held-out frames; calibration seeds are small integers


def packaged(dist: str, name: str) -> Path:
    """A file shipped inside an installed distribution."""
    found = [f for f in files(dist) or [] if f.name == name]
    if not found:
        raise FileNotFoundError(f"{name} not found in {dist}")
    return Path(found[0].locate())


def text_line(text: str, angle: int) -> np.ndarray:
    """A 48x192 line as the tests render it, rotated by `angle`."""
    img = Image.new("RGB", (192, 48), "white")
    ImageDraw.Draw(img).text((6, 4), text, fill="black", font=ImageFont.load_default(size=34))
    return np.asarray(img.rotate(angle))


def ocr_line(text: str, rng: random.Random) -> np.ndarray:
    """A 48x320 line for the recognizer: random size, offset and contrast, the whole text visible."""
    img = Image.new("RGB", (320, 48), (rng.randint(205, 255),) * 3)
    draw = ImageDraw.Draw(img)
    size = rng.randint(24, 32)
    while draw.textlength(text, font=ImageFont.load_default(size=size)) > 300:
        size -= 1
    font = ImageFont.load_default(size=size)
    x = rng.randint(2, max(2, 316 - int(draw.textlength(text, font=font))))
    draw.text((x, rng.randint(2, 46 - size)), text, fill=(rng.randint(0, 70),) * 3, font=font)
    return np.asarray(img)


def ocr_page(pairs: list[tuple[str, str]], rng: random.Random) -> np.ndarray:
    """A 96x320 image with two text lines for the detector."""
    img = Image.new("RGB", (320, 96), (rng.randint(205, 255),) * 3)
    draw = ImageDraw.Draw(img)
    for row, pair in enumerate(pairs):
        font = ImageFont.load_default(size=rng.randint(18, 26))
        text = " ".join(pair)
        x = rng.randint(2, max(2, 316 - int(draw.textlength(text, font=font))))
        draw.text((x, 4 + 46 * row + rng.randint(0, 10)), text, fill=(rng.randint(0, 70),) * 3, font=font)
    return np.asarray(img)


def ctc_text(steps: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC decoding of one [T, classes] output (index 0 is the blank)."""
    best = steps.argmax(-1)
    keep = [i for k, i in enumerate(best) if i != 0 and (k == 0 or i != best[k - 1])]
    return "".join(charset[i] for i in keep).strip()


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / norm) if norm else float(np.array_equal(x, y))


# ------------------------------------------------------------------------------------------------------
# The models: where they come from, their config entry, their frames and how to score them
# ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    source: Callable[[], Path]
    kind: str  # "labels" (true labels), "agree" (top-1 vs float), "det", "rec"
    calibration: Callable[[int, int], list[np.ndarray]]  # (folder size, seed) -> frames
    heldout: Callable[[int], tuple[list[np.ndarray], list]]  # n -> frames, truths (or Nones)
    preprocess: dict | None = None  # the config entry's preprocess; None: frames are model inputs
    recipe: str | None = None  # an existing CONFIG:MODEL to take the recipe from
    labels: list[str] | None = None
    folders: list[tuple[int, int]] = field(default_factory=list)  # (frames in folder, seed) per variant
    suffix: str = ".png"
    heldout_share: float = 1.0  # held-out frames: this times --heldout (at least 100)


def textdir_calibration(n: int, seed: int) -> list[np.ndarray]:
    pairs = random.Random(seed).sample(CALIB_PAIRS, n)
    return [text_line(" ".join(p), 180 * (i % 2)) for i, p in enumerate(pairs)]


def textdir_heldout(n: int) -> tuple[list[np.ndarray], list]:
    n = min(n, len(HELD_PAIRS))  # the tests' rendering is fixed: more would repeat frames
    pairs = HELD_PAIRS[:n]
    return [text_line(" ".join(p), 180 * (i % 2)) for i, p in enumerate(pairs)], [i % 2 for i in range(n)]


def varied_lines(pairs: list[tuple[str, str]], rng: random.Random) -> list[np.ndarray]:
    """Recognizer-style lines (random size, offset, contrast; 48x320, squeezed to 48x192 by the
    preprocessing), every other one upside down: harder than the tests' lines."""
    return [
        np.asarray(Image.fromarray(ocr_line(" ".join(p), rng)).rotate(180 * (i % 2)))
        for i, p in enumerate(pairs)
    ]


def varied_calibration(n: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    return varied_lines(rng.sample(CALIB_PAIRS, n), rng)


def varied_heldout(n: int) -> tuple[list[np.ndarray], list]:
    return varied_lines([HELD_PAIRS[i % len(HELD_PAIRS)] for i in range(n)], random.Random(HELD_SEED)), [
        i % 2 for i in range(n)
    ]


def rec_calibration(n: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    return [ocr_line(" ".join(p), rng) for p in rng.sample(CALIB_PAIRS, n)]


def rec_heldout(n: int) -> tuple[list[np.ndarray], list]:
    rng = random.Random(HELD_SEED)
    texts = [" ".join(HELD_PAIRS[i % len(HELD_PAIRS)]) for i in range(n)]
    return [ocr_line(t, rng) for t in texts], texts


def det_calibration(n: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    return [ocr_page(rng.sample(CALIB_PAIRS, 2), rng) for _ in range(n)]


def det_heldout(n: int) -> tuple[list[np.ndarray], list]:
    rng = random.Random(HELD_SEED)
    return [ocr_page(rng.sample(HELD_PAIRS, 2), rng) for _ in range(n)], [None] * n


def camera_calibration(n: int, seed: int) -> list[np.ndarray]:
    """Synthetic camera images as the tests make them: two sizes, resized by the config to 64x64."""
    out = []
    for i, img in enumerate(make_models.calibration_images(n, seed=seed, size=96)):
        out.append(np.asarray(Image.fromarray(img).resize((120, 80))) if i % 2 else img)
    return out


def camera_heldout(n: int) -> tuple[list[np.ndarray], list]:
    return camera_calibration(n, HELD_SEED), [None] * n


def larger_calibration(n: int, seed: int) -> list[np.ndarray]:
    """Already-normalized 3x224x224 float32 inputs (stored as .npy: no preprocessing)."""
    return list(make_models.normalize_nchw(make_models.calibration_images(n, seed=seed, size=224)))


def larger_heldout(n: int) -> tuple[list[np.ndarray], list]:
    return larger_calibration(n, HELD_SEED), [None] * n


def cases(seeds: list[int]) -> list[Case]:
    rapid = "rapidocr"
    return [
        Case("textdir_cls", lambda: packaged(rapid, "ch_ppocr_mobile_v2.0_cls_infer.onnx"), "labels",
             textdir_calibration, textdir_heldout, {"resize": [48, 192], "scale": "1/255", **HALF},
             labels=["0", "180"], folders=[(f, s) for f in (20, 50) for s in seeds]),
        Case("textdir_cls_varied", lambda: packaged(rapid, "ch_ppocr_mobile_v2.0_cls_infer.onnx"), "labels",
             varied_calibration, varied_heldout, {"resize": [48, 192], "scale": "1/255", **HALF},
             labels=["0", "180"], folders=[(f, s) for f in (20, 50) for s in seeds], heldout_share=2),
        Case("ppocrv4_det", lambda: packaged(rapid, "ch_PP-OCRv4_det_infer.onnx"), "det",
             det_calibration, det_heldout, {"resize": [96, 320], "scale": "1/255", **IMAGENET},
             folders=[(20, seeds[0]), (50, seeds[0])]),
        Case("ppocrv4_rec", lambda: packaged(rapid, "ch_PP-OCRv4_rec_infer.onnx"), "rec",
             rec_calibration, rec_heldout, {"resize": [48, 320], "scale": "1/255", **HALF},
             folders=[(20, seeds[0]), (50, seeds[0])]),
        Case("classifier_float", lambda: MODELS / "classifier_float.onnx", "agree",
             camera_calibration, camera_heldout, recipe=f"{ROOT / 'examples' / 'inferd.yaml'}:classifier",
             folders=[(40, seeds[0])]),
        Case("larger_float", lambda: MODELS / "larger_float.onnx", "agree",
             larger_calibration, larger_heldout, folders=[(40, seeds[0])], suffix=".npy", heldout_share=0.5),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------------


def entry(case: Case, path: Path, tmp: Path) -> dict:
    """The model's config entry: the case's preprocessing (or the example config's), labels, classify."""
    if case.recipe:
        e = recipe_from(case.recipe).entry
    else:
        e = {}
        if case.preprocess:
            e["preprocess"] = case.preprocess
        if case.labels:
            (tmp / "labels.txt").write_text("\n".join(case.labels) + "\n")
            e["labels"] = str(tmp / "labels.txt")
            e["postprocess"] = {"type": "classify", "top_k": 1}
    return {"name": case.name, "path": str(path), "threads": 1, "warmup": 1, **e}


def load(e: dict, path: Path) -> Model:
    cfg = parse_config(yaml.safe_dump({"models": [{**e, "path": str(path)}]}))
    return load_model(cfg.models[0], Path.cwd())


def run_all(model: Model, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    return [model.infer(model.prepare([f])) for f in frames]


def weight_scales(path: Path) -> dict:
    """How many weight (rank >= 2) DequantizeLinear nodes have one scale, how many one per channel,
    and which ops take the per-tensor ones."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.op_type)
    sizes, per_tensor_ops = [], []
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2:
            sizes.append(numpy_helper.to_array(inits[n.input[1]]).size)
            if sizes[-1] == 1:
                per_tensor_ops += consumers.get(n.output[0], [])
    return {"per_tensor": sum(s == 1 for s in sizes), "per_channel": sum(s > 1 for s in sizes),
            "per_tensor_ops": dict(Counter(per_tensor_ops))}  # fmt: skip


def score(case: Case, ref: list[list[np.ndarray]], out: list[list[np.ndarray]], truths: list,
          extra: dict) -> dict:  # fmt: skip
    """Held-out metrics of one model's outputs (`out`) against the float model's (`ref`) and the truth."""
    cos = [cosine(a, b) for r, o in zip(ref, out, strict=True) for a, b in zip(r, o, strict=True)]
    diffs = [np.abs(a - b) for r, o in zip(ref, out, strict=True) for a, b in zip(r, o, strict=True)]
    s = {"frames": len(out), "cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
         "max_abs_diff": max(float(d.max()) for d in diffs),
         "mean_abs_diff": float(np.mean([d.mean() for d in diffs]))}  # fmt: skip
    if case.kind in ("labels", "agree"):
        top = [int(np.argmax(o[0][0])) for o in out]
        ref_top = [int(np.argmax(r[0][0])) for r in ref]
        s["top1_agreement"] = float(np.mean([a == b for a, b in zip(top, ref_top, strict=True)]))
        # the best score shared by several classes: the output hit its calibrated range (clipped)
        s["top1_ties"] = sum(int(np.sum(o[0][0] == o[0][0].max()) > 1) for o in out)
        if case.kind == "labels":
            s["correct"] = [int(a == t) for a, t in zip(top, truths, strict=True)]
            s["accuracy"] = float(np.mean(s["correct"]))
    elif case.kind == "det":
        ious = []
        for r, o in zip(ref, out, strict=True):
            a, b = r[0] > DB_THRESHOLD, o[0] > DB_THRESHOLD
            union = np.logical_or(a, b).sum()
            ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
        s["mask_iou_mean"], s["mask_iou_min"] = float(np.mean(ious)), float(np.min(ious))
    elif case.kind == "rec":
        charset = extra["charset"]
        texts = [ctc_text(o[0][0], charset) for o in out]
        ref_texts = [ctc_text(r[0][0], charset) for r in ref]
        steps = [np.mean(o[0][0].argmax(-1) == r[0][0].argmax(-1)) for r, o in zip(ref, out, strict=True)]
        s["step_argmax_agreement"] = float(np.mean(steps))
        s["same_text_as_float"] = float(np.mean([a == b for a, b in zip(texts, ref_texts, strict=True)]))
        s["exact_match"] = float(np.mean([a == t for a, t in zip(texts, truths, strict=True)]))
        s["exact_match_ignoring_spaces"] = float(
            np.mean([a.replace(" ", "") == t.replace(" ", "") for a, t in zip(texts, truths, strict=True)])
        )
        s["cer"] = sum(edit_distance(a, t) for a, t in zip(texts, truths, strict=True)) / sum(
            map(len, truths)
        )
        s["wrong_examples"] = [{"truth": t, "read": a} for a, t in zip(texts, truths, strict=True) if a != t][
            :5
        ]
    return s


def float_score(case: Case, ref: list[list[np.ndarray]], truths: list, extra: dict) -> dict:
    """What the float model itself gets on the held-out set (where there is a truth to compare with)."""
    s = score(case, ref, ref, truths, extra)
    keep = {
        "labels": ("frames", "correct", "accuracy"),
        "rec": ("frames", "exact_match", "exact_match_ignoring_spaces", "cer", "wrong_examples"),
    }
    return {k: s[k] for k in keep.get(case.kind, ("frames",))}


def measure(case: Case, n_heldout: int, tmp: Path) -> dict:
    result: dict = {"model": case.name, "kind": case.kind, "runs": [], "errors": []}
    try:
        source = case.source()
    except (FileNotFoundError, PackageNotFoundError) as e:
        result["errors"].append({"stage": "find", "error": f"{type(e).__name__}: {e}"})
        return result
    result["source"] = str(source)
    work = tmp / case.name
    work.mkdir()
    e = entry(case, source, work)
    result["entry"] = {k: v for k, v in e.items() if k not in ("path", "threads", "warmup")}
    if case.labels:  # the labels, not the temp file that held them
        result["entry"]["labels"] = case.labels
    cfg_path = work / "inferd.yaml"  # the recipe the quantizer gets: CONFIG:MODEL, as on the command line
    cfg_path.write_text(yaml.safe_dump({"models": [{k: v for k, v in e.items() if k != "threads"}]}))
    recipe = recipe_from(f"{cfg_path}:{case.name}")
    try:
        ref_model = load(e, source)
    except Exception as err:
        result["errors"].append({"stage": "load float", "error": f"{type(err).__name__}: {err}"})
        return result
    extra = {}
    if case.kind == "rec":
        meta = ref_model.backend.session.get_modelmeta().custom_metadata_map
        extra["charset"] = ["blank", *meta["character"].splitlines(), " "]
    frames, truths = case.heldout(n_heldout)
    t0 = time.perf_counter()
    ref = run_all(ref_model, frames)
    ref_model.close()
    result["float"] = float_score(case, ref, truths, extra)
    result["float"]["seconds"] = round(time.perf_counter() - t0, 2)
    for n_folder, seed in case.folders:
        folder = work / f"calib-{n_folder}-{seed}"
        folder.mkdir()
        for i, f in enumerate(case.calibration(n_folder, seed)):
            if case.suffix == ".npy":
                np.save(folder / f"{i:03d}.npy", f)
            else:
                Image.fromarray(f).save(folder / f"{i:03d}.png")
        for per_channel in (False, True):
            setting = "per-channel" if per_channel else "per-tensor"
            run: dict = {"calibration_folder": n_folder, "seed": seed, "weights": setting}
            out = work / f"{case.name}.{n_folder}-{seed}.{setting}.onnx"
            t0 = time.perf_counter()
            try:
                report = quantize_model(source, out, folder, recipe=recipe, per_channel=per_channel)
            except Exception as err:
                run["error"] = f"quantize: {type(err).__name__}: {err}"
                run["traceback"] = traceback.format_exc(limit=3)
                result["runs"].append(run)
                print(f"  {case.name} {setting}: {run['error']}", flush=True)
                continue
            run["quantize_seconds"] = round(time.perf_counter() - t0, 2)
            run["report"] = {k: v for k, v in report.to_dict().items() if k not in ("entry", "out", "model")}
            run["weight_scales"] = weight_scales(out)
            try:
                q = load(e, out)
                t0 = time.perf_counter()
                run["heldout"] = score(case, ref, run_all(q, frames), truths, extra)
                run["heldout"]["seconds"] = round(time.perf_counter() - t0, 2)
                q.close()
            except Exception as err:
                run["error"] = f"held-out run: {type(err).__name__}: {err}"
            result["runs"].append(run)
            print(f"  {case.name} calib {report.calibration_frames} seed {seed} {setting}: "
                  f"{run['quantize_seconds']} s", flush=True)  # fmt: skip
    return result


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs (binomial, p = 1/2)."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n) if n else 1.0


def paired(result: dict) -> list[dict]:
    """Per calibration variant of a labelled model: frames only one of the two settings gets right."""
    out = []
    runs = {(r["calibration_folder"], r["seed"], r["weights"]): r for r in result["runs"] if "heldout" in r}
    for (folder, seed, w), r in sorted(runs.items()):
        other = runs.get((folder, seed, "per-channel"))
        if w != "per-tensor" or other is None:
            continue
        a, b = r["heldout"]["correct"], other["heldout"]["correct"]
        only_a = sum(x > y for x, y in zip(a, b, strict=True))
        only_b = sum(y > x for x, y in zip(a, b, strict=True))
        out.append({
            "calibration_frames": r["report"]["calibration_frames"], "seed": seed,
            "per_tensor_correct": sum(a), "per_channel_correct": sum(b),
            "only_per_tensor_right": only_a, "only_per_channel_right": only_b,
            "mcnemar_exact_p": round(mcnemar_p(only_a, only_b), 4),
        })  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------


def f4(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def table(results: list[dict]) -> str:
    head = (f"{'model':<17} {'cal':>3} {'seed':>4} {'weights':<11} {'size KB':>8} | {'rep top1':>8} "
            f"{'rep cos mean':>12} {'rep cos min':>11} {'rep maxabs':>10} | held-out ({'n'}): metrics")  # fmt: skip
    lines = [head, "-" * len(head)]
    for res in results:
        for err in res["errors"]:
            lines.append(f"{res['model']:<17} FAILED at {err['stage']}: {err['error']}")
        fl = res.get("float")
        if fl and ("accuracy" in fl or "exact_match" in fl):
            what = (f"accuracy {sum(fl['correct'])}/{fl['frames']} = {fl['accuracy']:.3f}" if "accuracy" in fl
                    else f"exact {fl['exact_match']:.3f} (no spaces {fl['exact_match_ignoring_spaces']:.3f})"
                         f" cer {fl['cer']:.4f}")  # fmt: skip
            lines.append(f"{res['model']:<17} {'':>3} {'':>4} {'float':<11} {'':>8} | {'':>46} | {what}")
        for r in res["runs"]:
            if "report" not in r:
                lines.append(f"{res['model']:<17} {'':>3} {r['seed']:>4} {r['weights']:<11} {r['error']}")
                continue
            rep, agr = r["report"], r["report"]["agreement"]
            h = r.get("heldout", {})
            m = f"({h.get('frames', 0)}) cos {f4(h.get('cosine_mean'))}/{f4(h.get('cosine_min'))} maxabs {f4(h.get('max_abs_diff'))} meanabs {h.get('mean_abs_diff', 0):.2e}"
            if "top1_agreement" in h:
                m += f" top1agr {h['top1_agreement']:.3f} ties {h['top1_ties']}"
            if "accuracy" in h:
                m += f" accuracy {sum(h['correct'])}/{h['frames']} = {h['accuracy']:.3f}"
            elif "mask_iou_mean" in h:
                m += f" maskIoU {h['mask_iou_mean']:.4f}/{h['mask_iou_min']:.4f}"
            elif "exact_match" in h:
                m += (f" steps {h['step_argmax_agreement']:.4f} same-text {h['same_text_as_float']:.3f}"
                      f" exact {h['exact_match']:.3f} (no spaces {h['exact_match_ignoring_spaces']:.3f})"
                      f" cer {h['cer']:.4f}")  # fmt: skip
            if "error" in r:
                m += f" ERROR {r['error']}"
            lines.append(
                f"{res['model']:<17} {rep['calibration_frames']:>3} {r['seed']:>4} {r['weights']:<11} "
                f"{rep['size_bytes']['quantized'] / 1024:>8.1f} | {f4(agr['top1']):>8} {agr['cosine_mean']:>12.6f} "
                f"{agr['cosine_min']:>11.6f} {agr['max_abs_diff']:>10.4f} | {m}"
            )
        for p in res.get("paired", []):
            lines.append(
                f"{res['model']:<17} {p['calibration_frames']:>3} {p['seed']:>4} paired: per-tensor "
                f"{p['per_tensor_correct']} vs per-channel {p['per_channel_correct']} correct; only per-tensor "
                f"right {p['only_per_tensor_right']}, only per-channel right {p['only_per_channel_right']} "
                f"(McNemar p {p['mcnemar_exact_p']:.3f})"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--heldout", type=int, default=200, help="held-out frames (det/rec/larger: half, varied text: twice)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="calibration seeds (text classifier)"
    )
    p.add_argument("--models", nargs="+", help="only these (textdir_cls ppocrv4_det ppocrv4_rec ...)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import onnx
    import onnxruntime

    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="inferd-qdefault-") as tmp:
        for case in cases(args.seeds):
            if args.models and case.name not in args.models:
                continue
            n = max(100, round(args.heldout * case.heldout_share))
            print(f"{case.name}: {n} held-out frames", flush=True)
            res = measure(case, n, Path(tmp))
            if case.kind == "labels":
                res["paired"] = paired(res)
            results.append(res)
    runtime = round(time.perf_counter() - t_start, 1)
    print()
    print(table(results))
    print(f"\nruntime {runtime} s")
    path = save("quantize_default", {
        "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                     "rapidocr": _version("rapidocr"), "pillow": _version("pillow")},
        "settings": {"format": "qdq", "activations": "uint8", "weights": "int8", "method": "minmax",
                     "holdout": 0.2, "heldout_frames": args.heldout, "seeds": args.seeds,
                     "db_threshold": DB_THRESHOLD},
        "runtime_s": runtime,
        "models": results,
    })  # fmt: skip
    print(f"wrote {path}")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
