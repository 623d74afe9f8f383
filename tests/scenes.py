"""Synthetic tracking scenes with known trajectories, a noisy detector, and their MOT scores.

Objects move at constant velocity (the hard scene adds a sideways wobble) across a 1280x720
frame, in front of or behind each other, behind pillars (full-height bands), in and out of the
frame. An object's visible share is what the frame edges, the pillars and nearer objects leave of
its box. The detector sees a mostly visible object (>= 60 %) with a high score, a half-hidden
one (25-60 %) with a low score (ByteTrack's second stage), a hidden one not at all; it jitters
every box, misses some objects at random and adds false positives of random size, class and
score. The ground truth of a frame is the objects at least 25 % visible; an object in the frame but
hidden counts as one object-frame of occlusion. The hard scene also jitters the timestamps and
drops frames. Scored with motmetrics (IoU >= 0.5), by the ids each tracker gives the detections.

Used by tests/test_tracking.py and benchmarks/tracking.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

W, H = 1280, 720
ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PYTHON = ROOT / ".venv-reference" / "bin" / "python"


@dataclass
class Obj:
    t0: float
    p0: tuple[float, float]  # centre at t0
    v: tuple[float, float]  # pixels per second
    size: tuple[float, float]
    cls: int = 0
    depth: float = 0.0  # nearer objects (smaller depth) hide farther ones
    t1: float = 1e9
    wobble: float = 0.0  # sideways sine amplitude, pixels

    def centre(self, t: float) -> np.ndarray:
        c = np.array(self.p0) + np.array(self.v) * (t - self.t0)
        if self.wobble:
            n = np.array([-self.v[1], self.v[0]]) / max(np.hypot(*self.v), 1e-9)
            c += n * self.wobble * np.sin(2 * np.pi * 0.4 * (t - self.t0))
        return c


@dataclass
class Scene:
    name: str
    fps: float  # nominal
    times: list[float] = field(default_factory=list)
    gt: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per frame: ids, boxes
    dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # boxes, scores, cls
    occluded: int = 0  # object-frames hidden while in the frame
    object_frames: int = 0


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def build(name: str, objs: list[Obj], *, seconds: float, fps: float, pillars=(), jitter=0.02, miss=0.05,
          fp_rate=0.2, classes=1, time_jitter=0.0, drop=0.0, seed=0) -> Scene:  # fmt: skip
    rng = np.random.default_rng(seed)
    scene = Scene(name, fps)
    for k in range(int(seconds * fps)):
        if drop and rng.random() < drop:
            continue
        t = (k + time_jitter * rng.uniform(-0.5, 0.5)) / fps
        alive = []
        for i, o in enumerate(objs):
            c = o.centre(t)
            if o.t0 <= t <= o.t1 and 0 <= c[0] < W and 0 <= c[1] < H:
                w, h = o.size
                alive.append((i, o, np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2])))
        ids, gts, boxes, scores, cls = [], [], [], [], []
        for i, o, box in alive:
            area = (box[2] - box[0]) * (box[3] - box[1])
            clip = np.clip(box, 0, [W, H, W, H])
            hidden = area - (clip[2] - clip[0]) * (clip[3] - clip[1])
            hidden += sum(_overlap(clip, np.array([x0, 0, x1, H])) for x0, x1 in pillars)
            hidden += sum(_overlap(clip, b) for _, p, b in alive if p.depth < o.depth)
            visible = 1 - hidden / area
            scene.object_frames += 1
            if visible < 0.25:
                scene.occluded += 1
                continue
            ids.append(i)
            gts.append(clip)
            if rng.random() < miss:
                continue
            size = np.array([clip[2] - clip[0], clip[3] - clip[1]] * 2)
            boxes.append(clip + rng.normal(0, jitter, 4) * size)
            scores.append(rng.uniform(0.55, 0.95) if visible >= 0.6 else rng.uniform(0.15, 0.5))
            cls.append(o.cls)
        for _ in range(rng.poisson(fp_rate)):
            x, y, s = rng.uniform(0, W - 150), rng.uniform(0, H - 150), rng.uniform(30, 150)
            boxes.append(np.array([x, y, x + s, y + s * rng.uniform(0.5, 2)]))
            scores.append(rng.uniform(0.1, 0.75))
            cls.append(int(rng.integers(classes)))
        scene.times.append(t)
        scene.gt.append((np.array(ids, np.int64), np.array(gts).reshape(-1, 4)))
        scene.dets.append((np.array(boxes).reshape(-1, 4), np.array(scores), np.array(cls, np.int64)))
    return scene


def straight() -> Scene:
    """8 objects in their own lanes, 40 to 400 px/s, at 30 fps."""
    speeds = [40, 80, 150, 250, 400, 60, 120, 300]
    objs = [Obj(0.5 * (i % 3), (20 if i % 2 else W - 20, 60 + 85 * i), (s if i % 2 else -s, 0), (50 + 12 * i, 70))
            for i, s in enumerate(speeds)]  # fmt: skip
    return build("straight", objs, seconds=8, fps=30, seed=1)


def crossing() -> Scene:
    """Pairs of one class meeting head-on (the farther one hidden while they pass) and crossing
    diagonally, at 30 fps."""
    objs = []
    for k, (y, s) in enumerate([(120, 150), (300, 250), (480, 100), (640, 200)]):
        objs.append(Obj(0, (100, y), (s, 0), (80, 160), depth=0))
        objs.append(Obj(0, (W - 100, y + 15), (-s, 0), (80, 150), depth=1 + k))
    objs.append(Obj(0.5, (100, 100), (200, 110), (90, 90), depth=0))
    objs.append(Obj(0.5, (100, 620), (200, -110), (90, 90), depth=1))
    return build("crossing", objs, seconds=7, fps=30, jitter=0.03, seed=2)


def occlusion() -> Scene:
    """People walking behind two pillars (hidden 0.3 to 0.8 s), at 15 fps."""
    objs = [Obj(0.4 * i, (0 if i % 2 else W - 1, 90 + 75 * i), ((1 if i % 2 else -1) * (110 + 20 * i), 0),
                (60, 140)) for i in range(8)]  # fmt: skip
    return build("occlusion", objs, seconds=9, fps=15, pillars=[(380, 500), (820, 920)], jitter=0.03,
                 fp_rate=0.3, seed=3)  # fmt: skip


def _random_objects(rng: np.random.Generator, n: int, vmin: float, wmax: float) -> list[Obj]:
    objs = []
    for i in range(n):
        angle, speed = rng.uniform(-0.6, 0.6) + (np.pi if i % 2 else 0), rng.uniform(vmin, 300)
        start = (W - 1 if i % 2 else 0, rng.uniform(80, H - 80))
        w = rng.uniform(40, wmax)
        objs.append(Obj(rng.uniform(0, 7), start, (speed * np.cos(angle), speed * np.sin(angle)),
                        (w, w * rng.uniform(0.8, 2.2)), cls=i % 3, depth=rng.uniform(),
                        wobble=rng.uniform(0, 20)))  # fmt: skip
    return objs


def hard(seed: int = 0) -> Scene:
    """Everything at once, occlusions shorter than max_age_s: 20 objects of 3 classes in all
    directions at 100-300 px/s, wobbling, crossing and hiding each other, behind 3 pillars; 8 %
    missed, 0.6 false positives a frame; 20 fps with jittered timestamps and 3 % of the frames
    dropped."""
    objs = _random_objects(np.random.default_rng(seed * 10 + 4), 20, 100, 110)
    return build(f"hard-{seed}" if seed else "hard", objs, seconds=12, fps=20, pillars=[(300, 360), (640, 740), (1000, 1050)], jitter=0.04,
                 miss=0.08, fp_rate=0.6, classes=3, time_jitter=0.3, drop=0.03, seed=seed * 10 + 5)  # fmt: skip


def crowd(seed: int = 0) -> Scene:
    """The hard scene with more, bigger and slower objects (24, 30-300 px/s) behind wider pillars:
    many occlusions last longer than max_age_s, where a new id is the specified behaviour."""
    objs = _random_objects(np.random.default_rng(seed * 10 + 4), 24, 30, 130)
    return build(f"crowd-{seed}" if seed else "crowd", objs, seconds=12, fps=20, pillars=[(300, 380), (640, 760), (1000, 1060)], jitter=0.04,
                 miss=0.08, fp_rate=0.6, classes=3, time_jitter=0.3, drop=0.03, seed=seed * 10 + 5)  # fmt: skip


SCENES = {"straight": straight, "crossing": crossing, "occlusion": occlusion, "hard": hard, "crowd": crowd}


def run_inferd(scene: Scene, cfg=None) -> list[np.ndarray]:
    """inferd's track id for each detection of each frame (-1: none)."""
    from inferd.engine.tracking import TrackConfig, Tracker

    tracker = Tracker(cfg or TrackConfig())
    return [tracker.update(b, s, c, t).ids for t, (b, s, c) in zip(scene.times, scene.dets, strict=True)]


def run_oracle(scene: Scene, cfg=None) -> list[np.ndarray]:
    """The best a tracker bound by the same rules can do: detections given their true object
    (IoU >= 0.5), an id after min_hits high-score frames in a row, a new id after an object went
    unmatched for longer than max_age_s, low scores only continuing tracks. inferd's ceiling."""
    from inferd.engine.tracking import TrackConfig
    from inferd.engine.tracking_solver import assign, iou_matrix

    cfg = cfg or TrackConfig()
    state: dict[int, list] = {}  # object -> [id or None, hits, last matched time]
    next_id, out = 1, []
    for t, (gid, gbox), (boxes, scores, _) in zip(scene.times, scene.gt, scene.dets, strict=True):
        ids = np.full(len(boxes), -1)
        r, c = assign(iou_matrix(gbox, boxes) - 0.5) if len(boxes) and len(gid) else ([], [])
        for i, j in zip(r, c, strict=True):
            g, high = int(gid[i]), scores[j] >= cfg.high_score
            st = state.get(g)
            if st and st[0] is not None and t - st[2] > cfg.max_age_s:
                st = None
            if st is None or (st[0] is None and not high):
                if not high:  # low scores only continue confirmed tracks
                    state.pop(g, None)
                    continue
                state[g] = st = [None, 0, t]
            st[1], st[2] = st[1] + 1, t
            if st[0] is None and st[1] >= cfg.min_hits:
                st[0], next_id = next_id, next_id + 1
            ids[j] = -1 if st[0] is None else st[0]
        for g in [g for g, st in state.items() if st[0] is None and st[2] != t]:
            del state[g]  # a tentative track that missed a frame
        out.append(ids)
    return out


REFERENCE = """
import json, sys
import numpy as np
import supervision as sv
scenes = json.load(sys.stdin)
out = {}
for name, sc in scenes.items():
    p = sc["params"]
    tracker = sv.ByteTrack(track_activation_threshold=p["high_score"], lost_track_buffer=round(30 * p["max_age_s"]),
                           frame_rate=round(sc["fps"]), minimum_consecutive_frames=p["min_hits"])
    frames = []
    for boxes, scores, classes in sc["dets"]:
        n = len(scores)
        d = sv.Detections(xyxy=np.array(boxes, float).reshape(-1, 4), confidence=np.array(scores, float),
                          class_id=np.array(classes, int), data={"i": np.arange(n)})
        r = tracker.update_with_detections(d)
        ids = np.full(n, -1)
        if len(r):
            ids[r.data["i"]] = r.tracker_id
        frames.append(ids.tolist())
    out[name] = frames
print(json.dumps({"version": sv.__version__, "ids": out}))
"""


def run_reference(scenes: list[Scene], cfg=None) -> tuple[str, dict[str, list[np.ndarray]]]:
    """supervision's ByteTrack (in .venv-reference) on the same detections: its version and the
    ids per scene, frame and detection. Its parameters are inferd's where they mean the same
    (activation score, lost buffer in seconds, frames to confirm); the rest its defaults."""
    from inferd.engine.tracking import TrackConfig

    p = (cfg or TrackConfig()).model_dump()
    data = {s.name: {"fps": s.fps, "params": p, "dets": [(b.tolist(), sc.tolist(), c.tolist())
                                                         for b, sc, c in s.dets]} for s in scenes}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(REFERENCE_PYTHON), "-c", REFERENCE], input=json.dumps(data), capture_output=True,
                          text=True, env=env, timeout=300, check=False)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["version"], {k: [np.array(f, np.int64) for f in v] for k, v in out["ids"].items()}


def score(scene: Scene, ids: list[np.ndarray]) -> dict:
    """MOTA, IDF1, ID switches (motmetrics) of the ids a tracker gave the scene's detections."""
    import motmetrics as mm

    from inferd.engine.tracking_solver import iou_matrix

    acc = mm.MOTAccumulator(auto_id=True)
    for (gid, gbox), (boxes, _, _), hid in zip(scene.gt, scene.dets, ids, strict=True):
        keep = hid >= 0
        dist = 1 - iou_matrix(gbox, boxes[keep])
        dist[dist > 0.5] = np.nan
        acc.update(gid.tolist(), hid[keep].tolist(), dist)
    names = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects"]
    row = mm.metrics.create().compute(acc, metrics=names, name=scene.name).iloc[0]
    out = {k: round(float(row[k]), 4) if k in ("mota", "idf1") else int(row[k]) for k in names}
    return {**out, "occluded_object_frames": scene.occluded, "object_frames": scene.object_frames}
