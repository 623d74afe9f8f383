"""What the tracker costs per frame (engine/tracking.py), what its assignment solver costs, and how
accurate it is on the synthetic scenes of tests/scenes.py: the optimal assignment against a greedy
one, and (where .venv-reference exists) supervision's ByteTrack on the same detections.

Per-frame cost: N objects (10, 30, 100) of 3 classes moving at up to 150 px/s in a 1920x1080 frame,
bouncing off its edges, crossing each other; 2 px of jitter, 5 % missed, scores 0.3-0.95 (a third
of them low), 1 false positive a frame; 30 fps; 100 frames to warm up, then 1000 timed one by one,
the best of 3 runs (the machine is shared: other load only adds time). The CPU time per frame
(time.thread_time) is the cost; the wall time adds whatever else the cores were doing. Then the
same with zones (engine/zones.py): issue #25's example (a driveway polygon for two labels with a
dwell, a gate line), and 4 polygons and 2 lines over the frame, every object in one or two of them,
events firing as they move. Last, the whole of what a detect model's worker does per frame for
tracking (engine/tracks.py: the detections as dicts in, ids, ages and velocities written on them,
the zones' summary and the events out) for 30 objects and the six zones.

    .venv/bin/python -m benchmarks.tracking [--frames 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import percentiles, save
from inferd.engine import tracking
from inferd.engine.tracking import TrackConfig, Tracker
from inferd.engine.tracking_solver import assign, greedy, hungarian, one_to_one
from inferd.engine.tracks import Tracks
from inferd.engine.zones import ZoneConfig
from tests import scenes

SIZE = np.array([1920.0, 1080.0])
ZONES = [  # normalized: four quadrant-ish polygons (one a concave L) and two lines across
    ZoneConfig(name="a", source="s", polygon=[[0, 0], [0.55, 0], [0.55, 0.55], [0, 0.55]]),
    ZoneConfig(name="b", source="s", polygon=[[0.45, 0], [1, 0], [1, 0.5], [0.45, 0.5]], dwell_s=2),
    ZoneConfig(
        name="c", source="s", polygon=[[0, 0.5], [0.5, 0.5], [0.5, 0.7], [0.3, 0.7], [0.3, 1], [0, 1]]
    ),
    ZoneConfig(name="d", source="s", polygon=[[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]], labels=["car"]),
    ZoneConfig(name="v", source="s", line=[[0.5, 0], [0.5, 1]]),
    ZoneConfig(name="h", source="s", line=[[0.1, 0.5], [0.9, 0.5]]),
]


EXAMPLE = [  # issue #25's: a polygon over the lower part of the frame, a line down the middle
    ZoneConfig(name="driveway", source="s", polygon=[[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]],
               labels=["person", "car"], dwell_s=5),
    ZoneConfig(name="gate", source="s", line=[[0.5, 0.0], [0.5, 1.0]]),
]  # fmt: skip


def frames(n: int, count: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    pos, vel = rng.uniform(100, SIZE - 100, (n, 2)), rng.uniform(-150, 150, (n, 2))
    size, classes = rng.uniform(30, 120, (n, 2)), np.arange(n) % 3
    out = []
    for k in range(count):
        c = np.abs(pos + vel * k / 30) % (2 * SIZE)
        c = np.where(c > SIZE, 2 * SIZE - c, c)  # bounce
        boxes = np.concatenate([c - size / 2, c + size / 2], 1) + rng.normal(0, 2, (n, 4))
        seen = rng.random(n) > 0.05
        xy = rng.uniform(0, SIZE - 100)
        fp = np.array([[*xy, *(xy + rng.uniform(30, 100, 2))]])
        out.append((k / 30, np.concatenate([boxes[seen], fp]), np.append(rng.uniform(0.3, 0.95, n)[seen],
                    rng.uniform(0.1, 0.7)), np.append(classes[seen], rng.integers(3))))  # fmt: skip
    return out


def per_frame(n: int, count: int, runs: int = 3, zones: list[ZoneConfig] | None = None) -> dict:
    """Wall time per frame (percentiles) and CPU time per frame (this thread's: what a shared
    machine's other load does not add), the best of `runs` runs."""
    data, best, cpu, size = frames(n, count + 100), None, [], (int(SIZE[0]), int(SIZE[1]))
    events = 0
    for _ in range(runs):
        tracker, lat, events = Tracker(TrackConfig(), ["person", "car", "dog"], zones), [], 0
        for t, b, s, c in data[:100]:
            tracker.update(b, s, c, t, size)
        c0 = time.thread_time()
        for t, b, s, c in data[100:]:
            t0 = time.perf_counter()
            events += len(tracker.update(b, s, c, t, size).events)
            lat.append(time.perf_counter() - t0)
        cpu.append((time.thread_time() - c0) / count)
        if best is None or np.mean(lat) < np.mean(best):
            best = lat
    return {"objects": n, "cpu_ms": round(min(cpu) * 1000, 4), "mean_ms": round(float(np.mean(best)) * 1000, 4),
            **percentiles(best), "live_tracks": len(tracker), "runs": runs, "zones": len(zones or ()),
            "events_per_frame": round(events / count, 2)}  # fmt: skip


def full_path(n: int, count: int, runs: int = 3) -> dict:
    """CPU per frame of engine/tracks.py's call, as the detect postprocess makes it: detection
    dicts in (box, score, class, label), track ids, ages and velocities set on them, the zones'
    summary and events out; the six zones."""
    data, cpu, size = frames(n, count + 100), [], (int(SIZE[0]), int(SIZE[1]))
    labels = ["person", "car", "dog"]
    for _ in range(runs):
        tracks = Tracks(TrackConfig(), labels, ZONES)
        todo = [(t, [{"box": bx, "score": sc, "class": c, "label": labels[c]}
                     for bx, sc, c in zip(b.tolist(), s.tolist(), cls.tolist(), strict=True)])
                for t, b, s, cls in data]  # fmt: skip
        for t, dets in todo[:100]:
            tracks("s", dets, size, t)
        c0 = time.thread_time()
        for t, dets in todo[100:]:
            tracks("s", dets, size, t)
        cpu.append((time.thread_time() - c0) / count)
    return {"objects": n, "zones": len(ZONES), "cpu_ms": round(min(cpu) * 1000, 4), "runs": runs}


def solver_cost(repeat: int = 200) -> dict:
    """Microseconds per call: on the stage-1 weight matrices a tracker really meets, and the worst
    case (a dense random matrix, every pair a candidate)."""
    out = {}
    for n in (30, 100):
        mats: list[np.ndarray] = []

        def recording(w: np.ndarray, mats=mats) -> tuple | None:
            mats.append(w.copy())
            return one_to_one(w)

        tracking.one_to_one = recording  # the whole frame's weights, before the stages
        try:
            tracker = Tracker(TrackConfig())
            for t, b, s, c in frames(n, 300, seed=1):
                tracker.update(b, s, c, t)
        finally:
            tracking.one_to_one = one_to_one
        mats = [m for m in mats if m.shape[0] >= n // 2]
        rng = np.random.default_rng(n)
        dense = [-rng.random((n, n)) for _ in range(max(repeat // n, 3))]
        for name, fn, cases in (("assign_tracking", assign, mats), ("greedy_tracking", greedy, mats),
                                ("hungarian_dense", hungarian, dense)):  # fmt: skip
            took = []
            for _ in range(3):  # best of 3
                t0 = time.perf_counter()
                for m in cases:
                    fn(m)
                took.append((time.perf_counter() - t0) / len(cases))
            out[f"{name}_{n}x{n}_us"] = round(min(took) * 1e6, 1)
    return out


def accuracy() -> dict:
    """MOTA / IDF1 / ID switches per scene: inferd (optimal assignment), inferd with the greedy
    solver, the oracle of the rules, and the reference ByteTrack where its venv exists."""
    try:
        import motmetrics  # noqa: F401
    except ImportError:
        return {"skipped": "motmetrics is not installed (pip install motmetrics)"}
    built = [make() for make in (scenes.straight, scenes.crossing, scenes.occlusion, scenes.hard,
                                 lambda: scenes.hard(1), lambda: scenes.hard(2), scenes.crowd)]  # fmt: skip
    ref, version = {}, None
    if scenes.REFERENCE_PYTHON.exists():
        version, ref = scenes.run_reference(built)
    rows = {}

    def brief(r: dict) -> dict:
        return {"mota": r["mota"], "idf1": r["idf1"], "id_switches": r["num_switches"]}

    for scene in built:
        row = {
            "occluded_object_frames": scene.occluded,
            "inferd": brief(scenes.score(scene, scenes.run_inferd(scene))),
        }
        tracking.assign = greedy
        try:
            row["inferd_greedy"] = brief(scenes.score(scene, scenes.run_inferd(scene)))
        finally:
            tracking.assign = assign
        row["oracle"] = brief(scenes.score(scene, scenes.run_oracle(scene)))
        if ref:
            row[f"supervision_{version}"] = brief(scenes.score(scene, ref[scene.name]))
        rows[scene.name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    cost = [per_frame(n, args.frames, zones=z) for n in (10, 30, 100) for z in (None, EXAMPLE, ZONES)]
    for row in cost:
        what = f"+ {row['zones']} zones ({row['events_per_frame']} events a frame)" if row["zones"] else ""
        print(f"{row['objects']:4d} objects {what}: {row['cpu_ms']:.3f} ms CPU a frame; wall {row['mean_ms']:.3f} ms "
              f"(p50 {row['p50_ms']:.3f}, p99 {row['p99_ms']:.3f})")  # fmt: skip
    full = full_path(30, args.frames)
    print(
        f"  30 objects, engine/tracks.py with dicts + {full['zones']} zones: {full['cpu_ms']:.3f} ms CPU a frame"
    )
    solver = solver_cost()
    for k, v in solver.items():
        print(f"{k}: {v} us")
    acc = accuracy()
    for name, row in acc.items():
        print(name, row)
    print(save("tracking", {"per_frame": cost, "full_path": full, "solver": solver, "accuracy": acc}))


if __name__ == "__main__":
    main()
