"""Zones and lines (engine/zones.py) on the tracker: the rules on hand-made frames, then the event
stream of a noisy scene against the one its ground truth gives (a plain per-object reading of the
rules in docs/zones.md, on the true boxes), and the config."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from pydantic import ValidationError

from inferd.config import parse_config
from inferd.engine.shapes import ANCHORS, cuts, inside
from inferd.engine.tracking import CLS, TrackConfig, Tracker
from inferd.engine.zones import ZoneConfig
from inferd.outputs import annotate
from tests import scenes
from tests.test_tracking import box

W, H = scenes.W, scenes.H
CFG = TrackConfig(min_hits=3, max_age_s=1.0)
LABELS = ["person", "car", "dog"]
LOWER = ZoneConfig(name="lower", source="cam", polygon=[[0, 0.5], [1, 0.5], [1, 1], [0, 1]])
GATE = ZoneConfig(name="gate", source="cam", line=[[0.5, 0], [0.5, 1]])


def run(tracker: Tracker, frames: list[tuple[float, list]]) -> list[tuple]:
    """Frames of (t, [(box, class), ...]) at score 0.9: every event as (t, type, zone, track_id,
    direction or duration)."""
    out = []
    for t, dets in frames:
        boxes = np.array([d[0] for d in dets], float).reshape(-1, 4)
        cls = np.array([d[1] for d in dets], np.int64)
        up = tracker.update(boxes, np.full(len(dets), 0.9), cls, t, (W, H))
        out += [
            (t, e["type"], e["zone"], e["track_id"], e.get("direction", e.get("duration_s")))
            for e in up.events
        ]
    return out


def walk(x0: float, x1: float, y: float, n: int, t0: float = 0.0, cls: int = 0, fps: float = 10) -> list:
    """n frames of one object whose box centre goes from (x0, y) to (x1, y)."""
    return [(t0 + k / fps, [(box(x0 + (x1 - x0) * k / max(n - 1, 1), y), cls)]) for k in range(n)]


# ---- the rules ---------------------------------------------------------------------------------


def test_enter_after_min_frames_inside_and_leave_after_min_frames_outside():
    # the box is 120 high: bottom centre at y + 60; the zone's top edge is at y = 360
    ys = [200, 240, 280, 320, 360, 400, 400, 400, 400, 360, 320, 280, 240, 200, 200, 200]
    frames = [(k / 10, [(box(400, y), 0)]) for k, y in enumerate(ys)]
    events = run(Tracker(CFG, LABELS, [LOWER]), frames)
    assert [e[1:4] for e in events] == [("enter", "lower", 1), ("leave", "lower", 1)]
    assert events[0][0] == pytest.approx(0.5)  # inside from frame 3 (y 320): decided on its 3rd frame in
    assert events[1][0] == pytest.approx(1.3)  # outside from frame 11 (y 280)
    assert events[1][4] == pytest.approx(0.8)  # in from 0.3 s to 1.1 s


def test_an_object_on_the_border_does_not_flicker():
    frames = [(k / 10, [(box(400, 300 + (10 if k % 2 else -10)), 0)]) for k in range(40)]  # anchor 350/370
    assert run(Tracker(CFG, LABELS, [LOWER]), frames) == []


def test_a_track_born_inside_enters_when_confirmed_and_dwell_fires_once_per_stay():
    zone = LOWER.model_copy(update={"dwell_s": 2.0})
    frames = [(k / 10, [(box(400, 500), 0)]) for k in range(60)]
    events = run(Tracker(CFG, LABELS, [zone]), frames)
    assert [e[1] for e in events] == ["enter", "dwell"]
    assert events[0][0] == pytest.approx(0.2)  # confirmed on its 3rd frame, inside on all three
    assert events[1][0] == pytest.approx(2.0) and events[1][4] == pytest.approx(2.0)  # since frame 0


def test_a_track_that_ends_inside_leaves_when_it_is_dropped():
    frames = [(k / 10, [(box(400, 500), 0)]) for k in range(10)] + [(1.0 + k / 10, []) for k in range(15)]
    events = run(Tracker(CFG, LABELS, [LOWER]), frames)
    assert [e[1:4] for e in events] == [("enter", "lower", 1), ("leave", "lower", 1)]
    assert events[1][0] == pytest.approx(2.0)  # last matched at 0.9, dropped past max_age_s 1.0
    assert events[1][4] == pytest.approx(0.9)


def test_labels_choose_what_counts():
    cars = LOWER.model_copy(update={"labels": ("car",)})
    frames = [(k / 10, [(box(300, 500), 0), (box(900, 500), 1)]) for k in range(6)]
    events = run(Tracker(CFG, LABELS, [cars]), frames)
    assert [(e[1], e[3]) for e in events] == [("enter", 2)]  # the car (the person got id 1)


def test_a_line_crossed_each_way_and_passed_round_its_end():
    half = GATE.model_copy(update={"line": ((0.5, 0.5), (0.5, 1.0))})  # the lower half of x = 640
    right = walk(300, 1000, 500, 36)  # 20 px a frame, bottom centre y 560: crosses the segment
    back = walk(1000, 300, 500, 36, t0=3.6)  # and back
    above = walk(300, 1000, 100, 36, t0=7.2)  # y 160: passes above the segment's end
    events = run(Tracker(CFG, LABELS, [half]), right + back + above)
    # walking the line from (0.5, 0.5) down to (0.5, 1.0), the left-hand side is screen right:
    # crossing right to left is `in`
    assert [(e[1], e[4]) for e in events] == [("cross", "out"), ("cross", "in")]
    assert events[0][0] == pytest.approx(2.0)  # on the line at frame 17 (no side), right of it from 18


def test_pixel_zones_and_the_anchor():
    porch = ZoneConfig(name="porch", source="cam", polygon=[[350, 100], [450, 100], [450, 200], [350, 200]],
                       units="pixels", anchor="center")  # fmt: skip
    frames = [(k / 10, [(box(400, 150), 0)]) for k in range(5)]  # centre (400, 150), bottom at 210
    assert [e[1] for e in run(Tracker(CFG, LABELS, [porch]), frames)] == ["enter"]
    bottom = porch.model_copy(update={"anchor": "bottom_center"})
    assert run(Tracker(CFG, LABELS, [bottom]), frames) == []


def test_the_summary_follows_every_change_of_membership():
    """The zones' summary (made again only after an update with events) is right on every frame:
    after an enter, a cross, a leave, and a track that ends inside."""
    tracker = Tracker(CFG, LABELS, [LOWER, GATE])
    person, dog = box(400, 500), box(900, 500)  # bottom centres at y 560: inside the lower zone
    frames = [(k / 10, [(person, 0), (dog, 2)]) for k in range(4)]  # both enter on their 3rd frame
    frames += [(0.3 + k / 10, [(box(400 + 20 * k, 500), 0), (dog, 2)]) for k in range(1, 22)]  # crosses x 640
    frames += [(2.4 + k / 10, [(box(820, 500 - 20 * k), 0), (dog, 2)]) for k in range(1, 16)]  # up, out of it
    frames += [(3.9 + k / 10, [(box(820, 200), 0)]) for k in range(1, 13)]  # the dog is gone: dropped inside
    seen = []
    for t, dets in frames:
        boxes = np.array([d[0] for d in dets], float)
        up = tracker.update(boxes, np.full(len(dets), 0.9), np.array([d[1] for d in dets]), t, (W, H))
        summary = tracker.summary()
        fresh = Tracker(CFG, LABELS, [LOWER, GATE]).zones  # the same state, summarized from scratch
        fresh.f, fresh.b, fresh.crossed = tracker.zones.f, tracker.zones.b, tracker.zones.crossed
        assert summary == fresh.summary(tracker.ids, tracker._x[CLS, : len(tracker)].astype(np.int64)), t
        seen += [(e["type"], e["zone"]) for e in up.events]
    assert seen == [
        ("enter", "lower"),
        ("enter", "lower"),
        ("cross", "gate"),
        ("leave", "lower"),
        ("leave", "lower"),
    ]
    assert tracker.summary() == {
        "lower": {"count": 0, "track_ids": [], "labels": {}},
        "gate": {"in": 0, "out": 1},
    }


def test_the_geometry_helpers():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    pts = np.array([[5, 5], [15, 5], [-1, 5], [5, 11], [9.9, 0.1]])
    assert inside(pts, square).tolist() == [True, False, False, False, True]
    concave = np.array([[0, 0], [10, 0], [10, 10], [5, 2], [0, 10]], float)  # a notch from the top
    assert inside(np.array([[5, 5], [2, 2]]), concave).tolist() == [False, True]
    a, b = np.array([0.0, 0.0]), np.array([0.0, 10.0])
    p, q = np.array([[-1.0, 5], [-1, 11], [1, 5]]), np.array([[1.0, 5], [1, 12], [2, 5]])
    assert cuts(p, q, a, b).tolist() == [True, False, False]
    assert set(ANCHORS) == {"bottom_center", "center", "top_center"}


def test_a_frame_size_is_needed_for_normalized_zones_only(caplog):
    tracker = Tracker(CFG, LABELS, [LOWER])
    for k in range(5):
        up = tracker.update(np.array([box(400, 500)]), np.array([0.9]), np.array([0]), k / 10, None)
        assert up.events == []  # no frame size: a normalized zone cannot be placed
    said = [r.getMessage() for r in caplog.records if r.name == "inferd.zones"]
    assert len(said) == 1 and "lower" in said[0] and "units: pixels" in said[0]  # once, with the way out


# ---- a scene against its ground truth ----------------------------------------------------------

ZONES = [
    ZoneConfig(name="driveway", source="cam", polygon=[[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]],
               labels=["person", "car"], dwell_s=3),
    ZoneConfig(name="gate", source="cam", line=[[0.5, 0.0], [0.5, 1.0]]),
    ZoneConfig(name="porch", source="cam", polygon=[[1000, 100], [1250, 100], [1250, 300], [1000, 300]],
               units="pixels", dwell_s=1),
]  # fmt: skip
OBJECTS = [
    scenes.Obj(0.0, (100, 500), (150, 0), (60, 120), cls=0),  # walks right along the driveway
    scenes.Obj(1.0, (1200, 600), (-250, 0), (160, 90), cls=1, depth=1),  # a car the other way
    scenes.Obj(2.0, (300, 450), (0, 40), (50, 40), cls=2),  # a dog in the driveway: not a label of it
    scenes.Obj(4.55, (1100, 150), (20, 0), (40, 100), cls=0, t1=8.0),  # on the porch, then gone
]


def truth(scene: scenes.Scene, zones: list[ZoneConfig], cfg: TrackConfig) -> list[tuple]:
    """The events the rules give on the true boxes: (t, type, zone, object, direction)."""
    geo = [np.array(z.polygon or z.line) * ([W, H] if z.units == "normalized" else 1) for z in zones]
    state: dict = {}  # (object, zone) -> [in or side, streak, start, since, dwelt, last point, cut]
    seen: dict[int, int] = {}
    last_t: dict[int, float] = {}
    out = []
    for t, (ids, boxes) in zip(scene.times, scene.gt, strict=True):
        for obj, b in zip(ids.tolist(), boxes, strict=True):
            seen[obj] = seen.get(obj, 0) + 1
            last_t[obj] = t
            for z, g in zip(zones, geo, strict=True):
                fx, fy = ANCHORS[z.anchor]
                p = np.array([b[0] + fx * (b[2] - b[0]), b[1] + fy * (b[3] - b[1])])
                label = LABELS[OBJECTS[obj].cls]
                ok = z.labels is None or label in z.labels
                s = state.setdefault((obj, z.name), [None, 0, 0.0, 0.0, False, p, False])
                ready = seen[obj] >= cfg.min_hits
                if z.polygon is not None:
                    raw = ok and bool(inside(p[None], g)[0])
                    s[0] = bool(s[0])
                    if raw != s[0]:
                        s[1] += 1
                        s[2] = t if s[1] == 1 else s[2]
                        if s[1] >= cfg.min_hits and ready:
                            if raw:
                                s[3], s[4] = s[2], False
                            out.append((t, "enter" if raw else "leave", z.name, obj, None))
                            s[0], s[1] = raw, 0
                    else:
                        s[1] = 0
                    if s[0] and not s[4] and z.dwell_s and t - s[3] >= z.dwell_s and ready:
                        out.append((t, "dwell", z.name, obj, None))
                        s[4] = True
                else:
                    d = g[1] - g[0]
                    raw = int(np.sign(d[0] * (p[1] - g[0][1]) - d[1] * (p[0] - g[0][0]))) if ok else 0
                    if s[0] is None and raw:
                        s[0], s[5] = raw, p
                    elif raw and raw != s[0]:
                        if s[1] == 0:
                            s[6] = bool(cuts(s[5][None], p[None], g[0], g[1])[0])
                        s[1] += 1
                        if s[1] >= cfg.min_hits and ready:
                            if s[6]:
                                out.append((t, "cross", z.name, obj, "in" if raw > 0 else "out"))
                            s[0], s[1], s[5] = raw, 0, p
                    elif raw:
                        s[1], s[5] = 0, p
    for (obj, zone), s in state.items():  # tracks that end inside leave when they are dropped
        if s[0] is True and last_t[obj] + cfg.max_age_s < scene.times[-1]:
            out.append((last_t[obj] + cfg.max_age_s, "leave", zone, obj, None))
    return sorted(out, key=lambda e: e[:3])


def observed(scene: scenes.Scene, zones: list[ZoneConfig], cfg: TrackConfig) -> list[tuple]:
    """inferd's events on the noisy detections, each track named by the true object it follows."""
    tracker = Tracker(cfg, LABELS, zones)
    out, owner = [], {}
    for t, (b, s, c), (ids, gt) in zip(scene.times, scene.dets, scene.gt, strict=True):
        up = tracker.update(b, s, c, t, (W, H))
        for e in up.events:
            if e["track_id"] not in owner:  # the object whose true box it overlaps most, now
                eb = np.array(e["box"])
                inter = np.clip(np.minimum(gt[:, 2:], eb[2:]) - np.maximum(gt[:, :2], eb[:2]), 0, None).prod(
                    1
                )
                owner[e["track_id"]] = int(ids[inter.argmax()]) if len(ids) else -1
            out.append((t, e["type"], e["zone"], owner[e["track_id"]], e.get("direction"), e["track_id"]))
    return sorted(out, key=lambda e: e[:3])  # one frame's events in a stated order, as truth's


@pytest.mark.parametrize("noise", ["clean", "noisy"])
def test_the_event_stream_equals_the_ground_truths(noise):
    """Enter, leave, dwell and cross of four objects (a person walking the driveway across the
    gate, a car the other way behind it, a dog the driveway's labels leave out, a person who stays
    on the porch and vanishes), from jittered detections (noisy: also 8 % missed and false
    positives): the same events in the same order, about the same object, each track one object."""
    kw = {"jitter": 0.01, "miss": 0.0, "fp_rate": 0.0} if noise == "clean" else {"jitter": 0.02, "miss": 0.08}
    scene = scenes.build("zones", OBJECTS, seconds=10, fps=10, classes=3, seed=3, **kw)
    want, got = truth(scene, ZONES, CFG), observed(scene, ZONES, CFG)
    if noise == "clean":
        assert [e[1:5] for e in got] == [e[1:5] for e in want], (got, want)
    # a missed detection pauses a streak, and a tentative track that misses a frame starts again:
    # noise delays an event by some frames (so events of different objects less than that apart
    # may swap), never brings it forward by more than the filter's smoothing
    late = 0.15 if noise == "clean" else 1.0
    for obj in range(len(OBJECTS)):
        mine, truly = [e for e in got if e[3] == obj], [e for e in want if e[3] == obj]
        assert [e[1:5] for e in mine] == [e[1:5] for e in truly], (obj, got, want)
        assert all(-0.15 <= g[0] - w[0] <= late for g, w in zip(mine, truly, strict=True)), (got, want)
    tracks = {}
    for e in got:
        assert tracks.setdefault(e[3], e[5]) == e[5]  # one track per object
    assert {e[1] for e in want} == {"enter", "leave", "dwell", "cross"}  # the scene has every kind


# ---- config ------------------------------------------------------------------------------------


def config(zones: str, track: bool = True, extra: str = "") -> str:
    post = "{type: detect, format: end2end" + (", track: {min_hits: 2}}" if track else "}")
    return f"""
models:
  - {{name: det, path: det.onnx, postprocess: {post}}}
  - {{name: cls, path: cls.onnx}}{extra}
zones:
{zones}
"""


def test_zones_go_to_the_tracked_models_they_name():
    cfg = parse_config(config("  - {name: door, source: cam0, polygon: [[0, 0], [1, 0], [1, 1]]}"))
    assert [z.name for z in cfg.models[0].postprocess.zones] == ["door"]
    assert cfg.models[0].postprocess.zones[0].units == "normalized"


@pytest.mark.parametrize(
    ("zones", "track", "message"),
    [
        ('  - {name: a, source: c, polygon: [[0, 0], [1, 0], [1, 1]]}', False, "no model tracks objects"),
        ('  - {name: a, source: c, polygon: [[0, 0], [1, 0], [1, 1]], models: [cls]}', True,
         "does not track objects"),
        ('  - {name: a, source: c, polygon: [[0, 0], [1, 0], [1, 1]], models: [nope]}', True, "is not configured"),
        ('  - {name: a, source: c, polygon: [[0, 0], [1, 0]]}', True, "at least 3 points"),
        ('  - {name: a, source: c, line: [[0, 0], [1, 1]], dwell_s: 3}', True, "dwell_s is for polygons"),
        ('  - {name: a, source: c, polygon: [[0, 0], [100, 0], [1, 1]]}', True, "units: pixels"),
        ('  - {name: a, source: c}', True, "either polygon or line"),
        ('  - {name: "a b", source: c, line: [[0, 0], [1, 1]]}', True, "letters, digits"),
        ('  - {name: a, source: c, line: [[0, 0], [1, 1]]}\n  - {name: a, source: c, line: [[0, 1], [1, 1]]}',
         True, "drawn twice"),
        ('  - {name: a, source: c, line: [[0, 0], [1, 1]], colour: red}', True, "colour"),
    ],
)  # fmt: skip
def test_bad_zones_are_refused_with_the_reason(zones, track, message):
    with pytest.raises(Exception, match=message):
        parse_config(config(zones, track))


def test_zones_are_written_at_the_top_level_only_and_no_model_is_called_events():
    with pytest.raises(ValidationError):
        ZoneConfig(name="a", source="c", line=[[0, 0], [0, 0]])
    post = "{type: detect, format: end2end, track: {}, zones: [{name: a, source: c, line: [[0, 0], [1, 1]]}]}"
    with pytest.raises(Exception, match="top-level zones"):
        parse_config(f"models:\n  - {{name: det, path: det.onnx, postprocess: {post}}}\n")
    with pytest.raises(Exception, match="cannot be called 'events'"):
        parse_config("models:\n  - {name: events, path: det.onnx}\n")


# ---- end to end --------------------------------------------------------------------------------


def blob_detector(path, size: int = 64):
    """A real ONNX detector whose boxes follow the picture: the bounding box of the pixels above
    0.5 in the red channel (class 0) and in the green one (class 1), end2end rows of model-input
    pixels, score 0.9 (0 when the channel is dark)."""
    import onnx
    from onnx import TensorProto, helper

    nodes, outs = [], []

    def const(name, value, dtype=np.int64):
        nodes.append(
            helper.make_node(
                "Constant", [], [name], value=onnx.numpy_helper.from_array(np.array(value, dtype))
            )
        )

    const("one", [1]), const("zero_f", 0.5, np.float32), const("score", [0.9], np.float32)
    for c in (0, 1):
        p = f"c{c}_"
        const(p + "start", [c]), const(p + "end", [c + 1]), const(p + "cls", [[[float(c)]]], np.float32)
        nodes += [
            helper.make_node("Slice", ["image", p + "start", p + "end", "one"], [p + "ch"]),  # [1, 1, H, W]
            helper.make_node("Greater", [p + "ch", "zero_f"], [p + "on"]),
            helper.make_node("Cast", [p + "on"], [p + "mask"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", [p + "mask"], [p + "rows"], axes=[3], keepdims=0),  # [1, 1, H]
            helper.make_node("ReduceMax", [p + "mask"], [p + "cols"], axes=[2], keepdims=0),  # [1, 1, W]
            helper.make_node("ArgMax", [p + "rows"], [p + "y1"], axis=2, keepdims=1),
            helper.make_node("ArgMax", [p + "rows"], [p + "y2"], axis=2, keepdims=1, select_last_index=1),
            helper.make_node("ArgMax", [p + "cols"], [p + "x1"], axis=2, keepdims=1),
            helper.make_node("ArgMax", [p + "cols"], [p + "x2"], axis=2, keepdims=1, select_last_index=1),
            helper.make_node("Add", [p + "y2", "one"], [p + "y2e"]),
            helper.make_node("Add", [p + "x2", "one"], [p + "x2e"]),
            helper.make_node("Concat", [p + "x1", p + "y1", p + "x2e", p + "y2e"], [p + "xyxy"], axis=2),
            helper.make_node("Cast", [p + "xyxy"], [p + "box"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", [p + "mask"], [p + "any"], axes=[1, 2, 3], keepdims=1),  # [1,1,1,1]
            helper.make_node("Reshape", [p + "any", "one"], [p + "any1"]),
            helper.make_node("Mul", [p + "any1", "score"], [p + "s"]),
            helper.make_node("Reshape", [p + "s", "shape111"], [p + "s3"]),
            helper.make_node("Concat", [p + "box", p + "s3", p + "cls"], [p + "row"], axis=2),
        ]
        outs.append(p + "row")
    const("shape111", [1, 1, 1])
    nodes.append(helper.make_node("Concat", outs, ["detections"], axis=1))
    graph = helper.make_graph(
        nodes, "blobs", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 2, 6])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def picture(red_x: int | None, green_x: int | None = None, w: int = 320, h: int = 240) -> np.ndarray:
    """A dark frame with a 40x40 red square at (red_x, 150) and a green one at (green_x, 40)."""
    img = np.zeros((h, w, 3), np.uint8)
    if red_x is not None:
        img[150:190, red_x : red_x + 40, 0] = 255
    if green_x is not None:
        img[40:80, green_x : green_x + 40, 1] = 255
    return img


def test_blob_detector_boxes_follow_the_picture(tmp_path):
    import onnxruntime as ort

    path = str(blob_detector(tmp_path / "blobs.onnx"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    img = np.zeros((1, 3, 64, 64), np.float32)
    img[0, 0, 5:15, 10:30] = 1.0
    rows = sess.run(None, {"image": img})[0][0]
    assert rows[0].tolist() == pytest.approx([10, 5, 30, 15, 0.9, 0])
    assert rows[1][4] == 0  # no green pixel: score 0


ZONE_CONFIG = """
models:
  - name: det
    path: {model}
    labels: {labels}
    preprocess: {{resize: [64, 64], scale: 0.00392156862745098}}
    postprocess: {{type: detect, format: end2end, score_threshold: 0.5, track: {{min_hits: 3, max_age_s: 10}}}}
endpoints:
  - {{type: router, bind: "{{router}}"}}
  - {{type: pull, bind: "{{pull}}"}}
results: {{bind: "{{results}}"}}
zones:
  - {{name: left, source: cam0, polygon: [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]], labels: [person], dwell_s: 0.5}}
  - {{name: gate, source: cam0, line: [[0.5, 0], [0.5, 1]]}}
{extra}"""


def live_picture(d, model: str, source: str, send) -> np.ndarray:
    """/live/MODEL/SOURCE.jpg while `send(client, k)` sends frames (a view keeps only frames
    that come after someone asked)."""
    import io
    import threading
    import urllib.request

    from PIL import Image

    from inferd.client import InferClient

    got: list[bytes] = []
    url = f"http://127.0.0.1:{d.metrics_port}/live/{model}/{source}.jpg"
    thread = threading.Thread(target=lambda: got.append(urllib.request.urlopen(url, timeout=30).read()))
    thread.start()
    with InferClient(d.router, timeout=30) as client:
        k = 0
        while thread.is_alive() and k < 300:
            send(client, k)
            k += 1
            time.sleep(0.05)
    thread.join(30)
    return np.asarray(Image.open(io.BytesIO(got[0])).convert("RGB"))


def near(pixel, colour, tol: int = 50) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel[:3], colour, strict=True))


def test_a_served_detector_tracks_a_moving_object_through_zones(tmp_path):
    """End to end: a red square (a "person") walks right across a 320x240 picture, past a green
    one (a "car") that stands still; the blob detector finds both in 64x64 model pixels, inferd
    puts them back in frame pixels, tracks them, and the zones (normalized) give enter, dwell,
    leave and a cross `out` on the results socket under events/det/cam0, with the track's id, in
    the results' `zones` and `events`, in the metrics, and the live view draws the zones."""
    from inferd.client import InferClient, RequestTimeout, ResultSubscriber
    from tests.daemon_harness import DaemonProcess

    (tmp_path / "labels.txt").write_text("person\ncar\n")
    model = blob_detector(tmp_path / "blobs.onnx")
    live = 'metrics: {listen: "{metrics}", live_view: true}\n'
    d = DaemonProcess(tmp_path, ZONE_CONFIG.format(model=model, labels=tmp_path / "labels.txt", extra=live))
    try:
        sub = ResultSubscriber(d.results, ["events/"])
        results = []
        t0 = time.time()
        with InferClient(d.router, timeout=30) as client:
            # a camera at 10 fps (the frames' own timestamps: the tracker's clock): 8 frames still,
            # then walking right at 100 px/s
            for k, x in enumerate([20] * 8 + list(range(20, 281, 10))):
                r = client.infer(picture(x, 240), model="det", source="cam0", ts=t0 + k / 10)
                results.append(r.result)
        events = []
        while len(events) < 4:
            events.append(sub.recv(10))
        with pytest.raises(RequestTimeout):  # each once (worker processes relay them: not twice)
            sub.recv(1.0)
        assert all(r.topic == "events/det/cam0" and r.event is not None for r in events)
        got = [(e.event["type"], e.event["zone"], e.event.get("direction")) for e in events]
        assert got == [("enter", "left", None), ("dwell", "left", None), ("leave", "left", None),
                       ("cross", "gate", "out")]  # fmt: skip
        first = events[0].event
        assert first["model"] == "det" and first["source"] == "cam0" and first["label"] == "person"
        assert first["frame"] == {"width": 320, "height": 240} and {e.event["track_id"] for e in events} == {
            1
        }
        assert first["box"] == pytest.approx([20, 150, 60, 190], abs=6)  # frame pixels (5 px per model pixel)
        ids = {(r["detections"][0]["track_id"], r["detections"][1]["track_id"]) for r in results[3:]}
        assert ids == {(1, 2)} or ids == {(2, 1)}  # stable from the 3rd frame on
        assert results[5]["zones"]["left"] == {"count": 1, "track_ids": [1], "labels": {"person": 1}}
        empty = {"count": 0, "track_ids": [], "labels": {}}
        assert results[-1]["zones"] == {"left": empty, "gate": {"in": 0, "out": 1}}
        assert sum(len(r.get("events", [])) for r in results) == 4
        moving = results[-1]["detections"][0]
        assert moving["label"] == "person" and moving["velocity"][0] > 0 and moving["track_age_s"] > 0
        assert d.total("inferd_zone_events_total", zone="left", type="enter") == 1
        assert d.total("inferd_zone_events_total", zone="gate", type="cross") == 1
        assert d.metric("inferd_tracked_objects", model="det", source="cam0") == 2
        assert d.metric("inferd_zone_objects", model="det", source="cam0", zone="left") == 0
        sub.close()
        # the live view draws the zones: the polygon's left side and the gate line, amber (empty)
        img = live_picture(d, "det", "cam0", lambda client, k: client.infer(picture(280, 240), model="det",
                           source="cam0", ts=t0 + 4 + k / 10))  # fmt: skip
        assert img.shape == (240, 320, 3)
        assert all(near(img[y, 1], annotate.ZONE) for y in (150, 180, 220))  # x = 0 of the frame
        assert all(near(img[y, 160], annotate.ZONE) for y in (40, 60, 100))  # the line at x = 0.5
        assert near(img[200, 100], (0, 0, 0), 60)  # inside: the frame (black)
    finally:
        assert d.stop() == 0, d.logs()


MQTT = """metrics: {{listen: "{{metrics}}"}}
mqtt:
  broker: "mqtt://127.0.0.1:{port}"
  device_id: board1
  publish: {{mode: every}}
  home_assistant: {{labels: [person]}}
sources:
  - {{match: "*", policy: fifo, queue_size: 64}}
"""
HA = "homeassistant/{}/inferd_board1/det_cam0_{}/config"


def test_zone_events_and_entities_reach_mqtt_and_home_assistant(tmp_path):
    """The same walk streamed (MQTT publishes streamed results): each event once on
    inferd/board1/det/cam0/events, not retained; the state without them; Home Assistant's
    discovery gets the zone's occupancy and count, the line's in and out counters and the event
    entity (before any frame), and their templates, rendered as Home Assistant renders them, read
    the right values."""
    if shutil.which("mosquitto") is None:
        pytest.skip("needs mosquitto (make test installs it as root)")
    jinja2 = pytest.importorskip("jinja2")
    from inferd.client import FramePublisher
    from tests.daemon_harness import DaemonProcess
    from tests.mqtt_broker import Broker, Listener
    from tests.test_mqtt import check_discovery_schema

    (tmp_path / "labels.txt").write_text("person\ncar\n")
    model = blob_detector(tmp_path / "blobs.onnx")
    broker = Broker(tmp_path)
    listener = Listener(broker.port, "inferd/#", "homeassistant/#")
    extra = MQTT.format(port=broker.port)
    d = DaemonProcess(tmp_path, ZONE_CONFIG.format(model=model, labels=tmp_path / "labels.txt", extra=extra))
    try:  # the entities of a source with zones are announced before its first frame
        listener.wait(lambda m: m[0] == HA.format("event", "events"))
        xs = [20] * 8 + list(range(20, 281, 10))
        t0 = time.time()
        with FramePublisher(d.pull, source="cam0") as cam:
            for k, x in enumerate(xs):
                cam.send(picture(x, 240), seq=k, ts=t0 + k / 10)
        topic = "inferd/board1/det/cam0"
        listener.wait(lambda m: m[0] == topic and json.loads(m[1])["seq"] == len(xs) - 1)
        events = listener.wait(lambda m: m[0] == topic + "/events")
        listener.sync("inferd/board1/tests/sync")
        events = [m for m in listener.messages if m[0] == topic + "/events"]
        got = [(json.loads(p)["type"], json.loads(p)["zone"]) for _, p, _ in events]
        assert got == [("enter", "left"), ("dwell", "left"), ("leave", "left"), ("cross", "gate")]
        assert not any(retained for *_, retained in events)  # an event happens once
        states = listener.results(topic)
        assert all("events" not in s for s in states) and states[-1]["zones"]["gate"] == {"in": 0, "out": 1}
        inside = next(s for s in states if s["zones"]["left"]["count"] == 1)

        env = jinja2.Environment()  # Home Assistant's template language
        occupied = json.loads(listener.wait(lambda m: m[0] == HA.format("binary_sensor", "zone_left"))[0][1])
        count = json.loads(listener.wait(lambda m: m[0] == HA.format("sensor", "zone_left_count"))[0][1])
        out = json.loads(listener.wait(lambda m: m[0] == HA.format("sensor", "zone_gate_out"))[0][1])
        into = json.loads(listener.wait(lambda m: m[0] == HA.format("sensor", "zone_gate_in"))[0][1])
        event = json.loads(listener.wait(lambda m: m[0] == HA.format("event", "events"))[0][1])
        people = json.loads(
            listener.wait(lambda m: m[0] == HA.format("sensor", "zone_left_label_person"))[0][1]
        )
        for entity, component in [(occupied, "binary_sensor"), (count, "sensor"), (out, "sensor"),
                                  (into, "sensor"), (event, "event"), (people, "sensor")]:  # fmt: skip
            check_discovery_schema(entity, component)
        render = lambda entity, value: env.from_string(entity["value_template"]).render(value_json=value)  # noqa: E731
        assert (render(occupied, inside), render(occupied, states[-1])) == ("ON", "OFF")
        assert (render(count, inside), render(count, states[-1])) == ("1", "0")
        assert (render(people, inside), render(people, states[-1])) == ("1", "0")  # the person in it
        assert (render(into, states[-1]), render(out, states[-1])) == ("0", "1")
        assert into["state_class"] == "total_increasing" and event["state_topic"] == topic + "/events"
        fired = json.loads(render(event, json.loads(events[-1][1])))
        assert fired["event_type"] == "cross" and fired["event_type"] in event["event_types"]
        assert fired["direction"] == "out" and fired["track_id"] == 1
    finally:
        assert d.stop() == 0, d.logs()
        listener.close()
        broker.kill()


def test_a_reload_keeps_an_untouched_model_s_tracks_and_restarts_a_changed_one(tmp_path):
    """A reload that leaves the tracked model as it was (here: a sources section added) keeps its
    tracks: the same id, its age going on, its stay's dwell on time, no second `enter`; one that
    changes its zones restarts them (the next frame's track is tentative again)."""
    import subprocess
    import sys

    from inferd.client import InferClient
    from tests.daemon_harness import DaemonProcess

    (tmp_path / "labels.txt").write_text("person\ncar\n")
    model = blob_detector(tmp_path / "blobs.onnx")
    config = ZONE_CONFIG.format(model=model, labels=tmp_path / "labels.txt", extra="")
    d = DaemonProcess(tmp_path, config)

    def reload(text: str) -> None:
        for key in ("router", "pull", "results"):
            text = text.replace("{" + key + "}", getattr(d, key))
        d.config_path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "inferd", "reload", "--pid", str(d.proc.pid), "--timeout", "30"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        t0 = time.time()
        with InferClient(d.router, timeout=30) as client:

            def person(k: int) -> dict:
                r = client.infer(picture(20), model="det", source="cam0", ts=t0 + k / 10).result
                return {**r["detections"][0], "events": [e["type"] for e in r.get("events", [])]}

            first = [person(k) for k in range(5)]
            assert first[-1]["track_id"] == 1 and first[-1]["track_age_s"] == pytest.approx(0.4)
            assert [p["events"] for p in first] == [[], [], ["enter"], [], []]
            reload(config + 'sources:\n  - {match: "*", policy: fifo, queue_size: 8}\n')
            kept = person(5)
            assert kept["track_id"] == 1 and kept["track_age_s"] == pytest.approx(0.5)
            assert kept["events"] == ["dwell"]  # 0.5 s in the zone across the reload; no 2nd enter
            reload(config.replace("dwell_s: 0.5", "dwell_s: 2"))
            restarted = person(6)
            assert restarted["track_id"] is None and "track_age_s" not in restarted
    finally:
        assert d.stop() == 0, d.logs()


def test_zone_entities_come_from_the_config_and_stale_ones_are_told():
    """Home Assistant's zone entities are made from the zones configured (before any frame);
    at a start, a retained config is stale when its zone is gone, or its label is no longer of
    interest or no longer counted by the zone."""
    from inferd.config import MqttConfig
    from inferd.outputs.homeassistant import Discovery

    cfg = MqttConfig.model_validate({"broker": "mqtt://127.0.0.1", "device_id": "board1",
                                     "home_assistant": {"labels": ["person", "car"]}})  # fmt: skip
    porch = ZoneConfig(name="porch_1", source="cam_0", polygon=[[0, 0], [1, 0], [1, 1]], labels=["person"])
    gate = ZoneConfig(name="gate", source="cam_0", line=[[0.5, 0], [0.5, 1]])
    discovery = Discovery(
        None, cfg, "inferd/board1/status", {"det"}, {("det", "cam_0"): {"porch_1": porch, "gate": gate}}
    )
    topics = sorted(discovery.entities("det", "cam_0", {"detections": []}))
    zone = [t.split("/")[-2].split("_", 2)[2] for t in topics if "_zone_" in t]
    assert sorted(zone) == ["zone_gate_in", "zone_gate_out", "zone_porch-5f1", "zone_porch-5f1_count",
                            "zone_porch-5f1_label_person"]  # no car count: the zone counts people only  # fmt: skip
    assert any(t.startswith("homeassistant/event/") for t in topics)
    assert not any(discovery.stale(t) for t in topics)
    car = "homeassistant/sensor/inferd_board1/det_cam-5f0_zone_porch-5f1_label_car/config"
    assert discovery.stale(car)  # a label the zone does not count
    discovery.ha = discovery.ha.model_copy(update={"labels": ["car"]})
    assert [t for t in topics if discovery.stale(t)] == [
        t
        for t in topics
        if t.endswith("_person/config")  # the label's own binary sensor too
    ]
    discovery.ha = discovery.ha.model_copy(update={"labels": ["person", "car"]})
    discovery._zones({("det", "cam_0"): {"gate": gate}})  # the porch removed
    assert {t for t in topics if discovery.stale(t)} == {t for t in topics if "porch" in t}
    discovery._zones({})
    assert all(discovery.stale(t) for t in topics if "_zone_" in t or "/event/" in t)
