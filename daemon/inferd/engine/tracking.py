"""Multi-object tracking of decoded detections: a stable `track_id` per object, per (model, source).

ByteTrack's scheme (Zhang et al. 2022), vectorized: each update moves every track on to the
frame's timestamp with a constant-velocity Kalman filter (kalman.py), then associates by IoU in
two stages, each an optimal assignment (tracking_solver.py): the high-score detections against all
tracks, then the low-score ones (often partly hidden objects) against the confirmed tracks still
unmatched, lost ones included (ByteTrack takes only those seen on the previous frame; but an object
coming out from behind something is first seen in part, with a low score). A detection only matches
a track of its own class. A track starts from an unmatched high-score detection, tentative; it is
confirmed, and given the next id of this tracker, once it has been matched on `min_hits` frames in a
row (a tentative track that misses a frame is forgotten: one-frame false positives never get an id).
A confirmed track that no detection matches is lost: still predicted, still matchable, until
`max_age_s` of frame time has passed since it was last matched; then it is dropped and reported in
`Update.ended`. Time is the frames' own timestamps, never the wall clock or frame counts, so a
5 fps and a 30 fps source keep the same promises. At most `max_tracks` live tracks: past that,
new objects are not tracked (counted in `refused`) until tracks expire.

`Tracker.update` takes arrays (any detector format decodes to them); `Tracker.annotate` takes the
decoded detection dicts and sets their `track_id` (None while the track is tentative), age and
velocity. Given zones (zones.py), each update also decides their events, from state kept in rows
beside the tracks' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferd.engine import kalman
from inferd.engine.tracking_solver import assign, iou_matrix
from inferd.engine.zones import ZoneConfig, ZoneState

State = Literal["tentative", "confirmed", "lost"]
_FIELDS = ("kf", "cls", "score", "id", "hits", "first", "last")


class TrackConfig(BaseModel):
    """Object tracking for a detection model: a stable track_id per object, per source."""

    # config/model.py imports this class: like the backends' configs, it does not import
    # inferd.config (a cycle), so it says what Strict says itself
    model_config = ConfigDict(extra="forbid", frozen=True)

    iou: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="A detection matches a track only when their boxes' IoU is at least this.",
    )
    max_age_s: float = Field(
        1.0,
        gt=0,
        description="Seconds (of frame timestamps) a track is kept without a matching detection before it "
        "ends; it keeps its id when the object reappears sooner.",
    )
    min_hits: int = Field(
        3,
        ge=1,
        description="Frames in a row a new track must be matched before it is confirmed and gets an id.",
    )
    high_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Detections scoring at least this are matched first and may start new tracks.",
    )
    low_score: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Detections between this and high_score only continue confirmed tracks (ByteTrack's "
        "second stage: partly hidden objects); lower ones are ignored.",
    )
    max_tracks: int = Field(
        1000,
        ge=1,
        description="At most this many live tracks per model and source; new objects past it go untracked.",
    )

    @model_validator(mode="after")
    def _low_below_high(self) -> TrackConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must not exceed high_score ({self.high_score})")
        return self


@dataclass(frozen=True, slots=True)
class Track:
    """One live (or just ended) track, as zones and events see it."""

    id: int | None  # None while tentative
    cls: int
    label: str | None
    box: tuple[float, float, float, float]  # the filtered box at the tracker's time, frame pixels
    score: float  # of the last matched detection
    age_s: float  # since the first detection
    missed_s: float  # since the last matched detection (0 when matched on this frame)
    velocity: tuple[float, float]  # of the box centre, pixels per second
    hits: int  # frames matched
    state: State


@dataclass(frozen=True, slots=True)
class Update:
    """What one frame's update tells: an id per detection, and the tracks that ended."""

    ids: np.ndarray  # the track id of each detection, in order; -1: none (tentative, or not tracked)
    ended: list[Track]  # confirmed tracks dropped by this update (lost for longer than max_age_s)
    age: np.ndarray  # each detection's track's age, seconds (NaN: not tracked)
    velocity: np.ndarray  # [n, 2] each detection's track's centre velocity, pixels per second
    events: list[dict]  # what the zones decided: type, zone, track_id, label, box (+ direction, duration_s)


class Tracker:
    """The tracks of one (model, source): ids count from 1 per tracker. Not thread-safe: one
    caller at a time. Its memory is bounded by max_tracks, and an idle one holds only what ends at
    its next update (a caller that drops idle sources can drop their trackers)."""

    def __init__(
        self, cfg: TrackConfig, labels: list[str] | None = None, zones: list[ZoneConfig] | None = None
    ) -> None:
        self.cfg, self.labels = cfg, labels
        self.zones = ZoneState(zones, labels, cfg.min_hits) if zones else None
        self.next_id = 1
        self.refused = 0  # new objects not tracked because max_tracks were live
        self.t: float | None = None  # the last update's timestamp
        self._a: dict[str, np.ndarray] = {
            "kf": np.zeros((0, kalman.WIDTH)), "cls": np.zeros(0, np.int64),
            "score": np.zeros(0), "id": np.zeros(0, np.int64), "hits": np.zeros(0, np.int64),
            "first": np.zeros(0), "last": np.zeros(0),
        }  # fmt: skip

    def __len__(self) -> int:
        return len(self._a["id"])

    @property
    def ids(self) -> np.ndarray:
        """Each live track's id (-1: tentative)."""
        return self._a["id"]

    def summary(self) -> dict[str, dict] | None:
        """What is in each zone now (ZoneState.summary); None without zones."""
        return self.zones.summary(self._a["id"], self._a["cls"]) if self.zones is not None else None

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, t: float,
        frame: tuple[int, int] | None = None,
    ) -> Update:  # fmt: skip
        """One frame's detections ([n, 4] x1, y1, x2, y2 boxes, scores, classes) at timestamp `t`
        (seconds) of a `frame` (width, height: normalized zones need it): the track id of each
        detection, the tracks that ended, the zones' events."""
        cfg, a = self.cfg, self._a
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        classes = np.asarray(classes, np.int64).reshape(-1)
        prev, t = self.t, float(t)
        slot = np.full(len(boxes), -1)  # the track each detection matched
        high = scores >= cfg.high_score
        if len(a["id"]):
            a["kf"][:, 6:8] *= (a["last"] == prev)[:, None]  # a lost box keeps its size and shape
            kalman.predict(a["kf"], 0.0 if prev is None else t - prev)  # back in time: no motion
        if len(a["id"]) and len(boxes):
            w = iou_matrix(boxes, kalman.xyxy(a["kf"])) - (cfg.iou - 1e-9)  # > 0: may match
            np.multiply(w, classes[:, None] == a["cls"], out=w)  # another class: 0, no match
            rows = high.nonzero()[0]
            r, c = assign(w[rows])  # 1: the high-score detections, all tracks
            slot[rows[r]] = c
            rows = ((scores >= cfg.low_score) & ~high).nonzero()[0]
            left = a["id"] >= 0
            left[c] = False
            cols = left.nonzero()[0]
            if len(rows) and len(cols):  # 2: the low-score ones, the confirmed tracks left
                r, c = assign(w[rows[:, None], cols])
                slot[rows[r]] = cols[c]
        d = (slot >= 0).nonzero()[0]
        s = slot[d]
        if len(s):
            a["kf"][s] = kalman.update(a["kf"][s], kalman.xyah(boxes[d]))
            a["hits"][s] += 1
            a["score"][s], a["last"][s] = scores[d], t
            self._confirm(s)
        expired = (a["id"] >= 0) & (np.abs(t - a["last"]) > cfg.max_age_s)  # also a clock far back
        drop = expired | ((a["id"] < 0) & (a["last"] != t))  # tentative and missed: forgotten
        ended: list[Track] = []
        events: list[dict] = []
        if drop.any():
            gone = np.flatnonzero(expired)
            ended = self._snapshot(gone, t)
            if self.zones is not None:
                events = self._events(self.zones.ended(gone, a["last"][gone]), gone, t)
                self.zones.keep(~drop)
            keep = ~drop
            for k in _FIELDS:
                a[k] = a[k][keep]
            slot[d] = (np.cumsum(keep) - 1)[s]
        new = (high & (slot < 0)).nonzero()[0]
        if len(new):
            self._start(boxes, scores, classes, new, slot, t)
        self.t = t
        if self.zones is not None:
            rows = np.flatnonzero(a["last"] == t)
            found = self.zones.update(
                rows, a["id"][rows], kalman.xyxy(a["kf"][rows]), a["cls"][rows], t, frame
            )
            if found:
                events += self._events(found, rows, t)
        hit = slot >= 0
        ids, age, vel = np.full(len(slot), -1), np.full(len(slot), np.nan), np.full((len(slot), 2), np.nan)
        if hit.any():
            r = slot[hit]
            ids[hit], age[hit], vel[hit] = a["id"][r], t - a["first"][r], a["kf"][r, 4:6]
        return Update(ids, ended, age, vel, events)

    def annotate(self, detections: list[dict], t: float, frame: tuple[int, int] | None = None) -> Update:
        """Sets "track_id" on each decoded detection (None while its track is tentative or when
        it is not tracked), and with an id its "track_age_s" and "velocity" ([vx, vy] of the box
        centre, pixels per second); the update."""
        boxes = np.array([d["box"] for d in detections], np.float64).reshape(-1, 4)
        scores = np.array([d["score"] for d in detections], np.float64)
        classes = np.array([d["class"] for d in detections], np.int64)
        up = self.update(boxes, scores, classes, t, frame)
        ages, vels = np.round(up.age, 3).tolist(), np.round(up.velocity, 1).tolist()
        for det, i, age, vel in zip(detections, up.ids.tolist(), ages, vels, strict=True):
            if i >= 0:
                det["track_id"], det["track_age_s"], det["velocity"] = i, age, vel
            else:
                det["track_id"] = None
        return up

    def tracks(self, confirmed_only: bool = False) -> list[Track]:
        """Every live track at the last update's time (only those with an id if confirmed_only)."""
        idx = np.flatnonzero(self._a["id"] >= 0) if confirmed_only else np.arange(len(self))
        return self._snapshot(idx, self.t or 0.0)

    # ---- internals -------------------------------------------------------------------------

    def _events(self, found: list, idx: np.ndarray, t: float) -> list[dict]:
        """Zones' findings as event dicts; k in each indexes `idx`, the rows they are about."""
        ks = sorted({f[2] for f in found})
        tracks = dict(zip(ks, self._snapshot(idx[ks], t), strict=True))
        out = []
        for kind, zone, k, extra in found:
            tr = tracks[k]
            out.append({"type": kind, "zone": zone, "track_id": tr.id, "label": tr.label, "class": tr.cls,
                        "box": list(tr.box), **extra})  # fmt: skip
        return out

    def _confirm(self, idx: np.ndarray) -> None:
        """Ids for the tracks among `idx` just matched for the min_hits-th time."""
        new = idx[self._a["hits"][idx] == self.cfg.min_hits]
        if len(new):
            self._a["id"][new] = np.arange(self.next_id, self.next_id + len(new))
            self.next_id += len(new)

    def _start(self, boxes, scores, classes, new: np.ndarray, slot: np.ndarray, t: float) -> None:
        a, room = self._a, self.cfg.max_tracks - len(self)
        if len(new) > room:  # the best-scoring ones get the room left
            self.refused += len(new) - max(room, 0)
            new = np.sort(new[np.argsort(-scores[new], kind="stable")[: max(room, 0)]])
            if not len(new):
                return
        n = len(new)
        add = {"kf": kalman.initiate(kalman.xyah(boxes[new])), "cls": classes[new], "score": scores[new],
               "id": np.full(n, -1), "hits": np.ones(n, np.int64), "first": np.full(n, t),
               "last": np.full(n, t)}  # fmt: skip
        slot[new] = np.arange(len(self), len(self) + n)
        for k in _FIELDS:
            a[k] = np.concatenate([a[k], add[k]])
        if self.zones is not None:
            self.zones.grow(n)
        self._confirm(slot[new])  # min_hits 1

    def _snapshot(self, idx: np.ndarray, t: float) -> list[Track]:
        a = self._a
        if not len(idx):
            return []
        boxes = np.round(kalman.xyxy(a["kf"][idx]), 2).tolist()
        vel = np.round(a["kf"][idx, 4:6], 2).tolist()
        out = []
        for k, i in enumerate(idx.tolist()):
            tid, last, c = int(a["id"][i]), float(a["last"][i]), int(a["cls"][i])
            state: State = "tentative" if tid < 0 else "confirmed" if last == t else "lost"
            label = self.labels[c] if self.labels and 0 <= c < len(self.labels) else None
            age, hits = t - float(a["first"][i]), int(a["hits"][i])
            box, v, score = tuple(boxes[k]), tuple(vel[k]), float(a["score"][i])
            out.append(Track(tid if tid >= 0 else None, c, label, box, score, age, t - last, v, hits, state))
        return out
