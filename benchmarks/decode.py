"""Per-frame decode cost of each postprocess format, on outputs of the sizes real models give
(YOLOv8 at 640: [1, 84, 8400]; YOLOv5 at 640: [1, 25200, 85]; BlazeFace: 896 anchors; a 21-class
segmentation at 256x256 mapped onto a 640x480 frame), with a realistic share of candidates above
the threshold. Everything after the runtime: threshold, NMS, mapping back to the frame, the dict.

    .venv/bin/python -m benchmarks.decode [--runs 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import percentiles, save
from inferd.config import AnchorsConfig, DetectPostprocess, SegmentPostprocess
from inferd.engine.backends.base import TensorSpec
from inferd.engine.geometry import geometry
from inferd.engine.postprocess import Detect, Segment

RNG = np.random.default_rng(0)
FRAME = geometry(480, 640, (640, 640), True, None)


def boxes(n: int, size: float = 640) -> np.ndarray:
    xy = RNG.uniform(0, size * 0.9, (n, 2))
    wh = RNG.uniform(8, size * 0.3, (n, 2))
    return np.concatenate([xy + wh / 2, wh], axis=1).astype(np.float32)  # cx, cy, w, h


def yolov8(n=8400, classes=80, hits=300) -> np.ndarray:
    scores = RNG.uniform(0, 0.2, (n, classes)).astype(np.float32)
    scores[RNG.choice(n, hits, replace=False), RNG.integers(0, classes, hits)] = RNG.uniform(0.3, 0.95, hits)
    return np.concatenate([boxes(n), scores], axis=1).T[None]  # [1, 84, 8400]


def yolov5(n=25200, classes=80, hits=300) -> np.ndarray:
    obj = RNG.uniform(0, 0.2, (n, 1)).astype(np.float32)
    obj[RNG.choice(n, hits, replace=False)] = RNG.uniform(0.4, 0.99, (hits, 1))
    cls = RNG.uniform(0, 1, (n, classes)).astype(np.float32)
    return np.concatenate([boxes(n), obj, cls], axis=1)[None]


def cases() -> dict:
    v8, v5 = yolov8(), yolov5()
    e2e = np.concatenate([boxes(300)[:, :2], boxes(300)[:, :2] + 50, RNG.uniform(0, 1, (300, 1)),
                          RNG.integers(0, 80, (300, 1))], axis=1).astype(np.float32)[None]  # fmt: skip
    regress = RNG.normal(0, 10, (1, 896, 16)).astype(np.float32)
    logits = RNG.normal(-6, 3, (1, 896, 1)).astype(np.float32)
    seg = RNG.normal(0, 1, (1, 21, 256, 256)).astype(np.float32)
    labels = [f"c{i}" for i in range(80)]

    def det(fmt, outs, **cfg):
        specs = [TensorSpec(f"o{i}", o.shape, o.dtype) for i, o in enumerate(outs)]
        inp = TensorSpec("x", (1, 128, 128, 3), np.dtype(np.float32))
        return Detect(DetectPostprocess(type="detect", format=fmt, **cfg), specs, labels, "m", inp), outs

    anchors = AnchorsConfig(num_layers=4, strides=[8, 16, 16, 16], num_keypoints=6)
    seg_post = Segment(SegmentPostprocess(type="segment"), [TensorSpec("o", seg.shape, seg.dtype)], None, "m")
    return {
        "yolov8 [1,84,8400]": det("yolo", [v8], layout="cn"),
        "yolov5 [1,25200,85]": det("yolov5", [v5], layout="nc"),
        "end2end [1,300,6]": det("end2end", [e2e]),
        "anchors BlazeFace 896": det(
            "anchors",
            [regress, logits],
            anchors=anchors,
            score_threshold=0.5,
            nms="weighted",
            iou_threshold=0.3,
        ),
        "segment 21x256x256 -> 640x480 png": (seg_post, [seg]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    results = {}
    for name, (post, outs) in cases().items():
        for _ in range(5):
            post(outs, "cam0", FRAME)
        lat = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = post(outs, "cam0", FRAME)
            lat.append(time.perf_counter() - t0)
        n = len(out.get("detections", [])) if "detections" in out else "mask"
        results[name] = {**percentiles(lat), "results": n}
        print(
            f"{name:36} p50 {results[name]['p50_ms']:7.3f} ms  p99 {results[name]['p99_ms']:7.3f} ms  -> {n}",
            flush=True,
        )
    print("saved", save("decode", {"runs": args.runs, "cases": results}))


if __name__ == "__main__":
    main()
