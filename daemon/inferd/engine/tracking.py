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
velocity. Given zones (zones.py), each update also decides their events, from state kept in columns
beside the tracks' own.

The tracks are the columns of one float array, a row per number (the filter's 21, then class,
score, id, hits, first and last matched time, and how long it may go unmatched): a frame is a
fixed few dozen numpy operations on whole rows whatever the number of objects, and starting,
matching or dropping tracks moves every number of theirs in one operation. Past the live columns
one more holds what a detection without a track reads (id -1, NaN age and velocity), so the
per-detection answers are one gather each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferd.engine import kalman
from inferd.engine.tracking_solver import assign, iou_rows, one_to_one
from inferd.engine.zones import ZoneConfig, ZoneState

State = Literal["tentative", "confirmed", "lost"]
KF = kalman.ROWS  # the filter's rows (its last a row of ones); then:
CLS, SCORE, ID, HITS, FIRST, LAST, LIFE = range(KF, KF + 7)
ROWS = KF + 7
_OUT = np.array([ID, FIRST, 4, 5])[:, None]  # what a detection's answer reads of its track
_NONE = np.full(ROWS, np.nan)  # the column a detection without a track reads
_NONE[ID] = -1


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
        self.n = 0  # live tracks: the first n columns of _x
        self._summary: dict | None = None  # the zones' summary, until events change it
        self._x = np.empty((ROWS, 0))
        self._reserve(16)

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> np.ndarray:
        """Each live track's id (-1: tentative)."""
        return self._x[ID, : self.n].astype(np.int64)

    def summary(self) -> dict[str, dict] | None:
        """What is in each zone now (ZoneState.summary; shared, read-only: it is made again only
        after an update with events, the only updates that change it); None without zones."""
        if self.zones is None:
            return None
        if self._summary is None:
            self._summary = self.zones.summary(self.ids, self._x[CLS, : self.n].astype(np.int64))
        return self._summary

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, t: float,
        frame: tuple[int, int] | None = None,
    ) -> Update:  # fmt: skip
        """One frame's detections ([n, 4] x1, y1, x2, y2 boxes, scores, classes) at timestamp `t`
        (seconds) of a `frame` (width, height: normalized zones need it): the track id of each
        detection, the tracks that ended, the zones' events."""
        cfg = self.cfg
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        classes = np.asarray(classes, np.int64).reshape(-1)
        prev, t = self.t, float(t)
        z = kalman.xyah(boxes)  # [4, m] the detections as the filter measures them
        slot = np.full(len(boxes), -1)  # the track (column) each detection matched
        high = scores >= cfg.high_score
        x = self._x[:, : self.n]
        if self.n:
            kalman.predict(x[:KF], 0.0 if prev is None else t - prev)  # back in time: no motion
        if self.n and len(boxes):
            self._associate(boxes, scores, classes, high, slot)
        d = (slot >= 0).nonzero()[0]
        s = slot[d]
        if len(s):
            g = x[:, s]
            kalman.update(g[:KF], z[:, d])
            g[HITS] += 1
            g[SCORE], g[LAST] = scores[d], t
            self._confirm(g)
            x[:, s] = g
        drop = np.abs(t - x[LAST]) > x[LIFE]  # a confirmed track lost for max_age_s (or a clock far
        ended: list[Track] = []  # back), a tentative one missed once
        events: list[dict] = []
        if np.count_nonzero(drop):
            gone = np.flatnonzero(drop & (x[ID] >= 0))
            ended = self._snapshot(gone, t)
            keep = np.flatnonzero(~drop)
            if self.zones is not None:
                events = self._events(self.zones.ended(gone, x[LAST, gone]), gone, t)
                self.zones.keep(keep)
            self._x[:, : len(keep)] = x[:, keep]
            self.n = len(keep)
            slot[d] = (np.cumsum(~drop) - 1)[s]
        new = (high & (slot < 0)).nonzero()[0]
        if len(new):
            self._start(z, scores, classes, new, slot, t)
        self.t = t
        x = self._x[:, : self.n]
        matched = x[LAST] == t
        x[6:8] *= matched  # a lost box keeps its size and shape (its aspect and height stop)
        if self.zones is not None and self.n:
            found = self.zones.update(matched, x[ID] >= 0, x[:KF], t, frame)
            if found:
                events += self._events(found, np.arange(self.n), t)
        if events:
            self._summary = None
        out = self._x[_OUT, slot]  # slot -1: the last column, no track
        return Update(out[0].astype(np.int64), ended, t - out[1], out[2:].T, events)

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
        idx = np.flatnonzero(self._x[ID, : self.n] >= 0) if confirmed_only else np.arange(self.n)
        return self._snapshot(idx, self.t or 0.0)

    # ---- internals -------------------------------------------------------------------------

    def _events(self, found: list, idx: np.ndarray, t: float) -> list[dict]:
        """Zones' findings as event dicts; k in each indexes `idx`, the columns they are about."""
        ks = sorted({f[2] for f in found})
        tracks = dict(zip(ks, self._snapshot(idx[ks], t), strict=True))
        out = []
        for kind, zone, k, extra in found:
            tr = tracks[k]
            out.append({"type": kind, "zone": zone, "track_id": tr.id, "label": tr.label, "class": tr.cls,
                        "box": list(tr.box), **extra})  # fmt: skip
        return out

    def _associate(self, boxes, scores, classes, high: np.ndarray, slot: np.ndarray) -> None:
        """Sets `slot`, the track each detection matches: ByteTrack's two stages, the high-score
        detections against every track, then the low-score ones against the confirmed tracks
        left. Usually no two detections compete for a track nor two tracks for a detection: then
        both stages are the candidate pairs themselves, found at once."""
        cfg, x = self.cfg, self._x[:, : self.n]
        w = iou_rows(boxes, kalman.xyxy(x[:4]))
        w -= cfg.iou - 1e-9  # > 0: may match
        usable = scores >= cfg.low_score
        w *= np.where(usable, classes, np.nan)[:, None] == x[CLS]  # another class, too low a score: 0
        low = (usable & ~high).nonzero()[0]
        if len(low):  # the second stage only continues confirmed tracks
            tentative = (x[ID] < 0).nonzero()[0]
            if len(tentative):
                w[low[:, None], tentative] = 0
        one = one_to_one(w)
        if one is not None:
            slot[one[0]] = one[1]
            return
        rows = high.nonzero()[0]
        r, c = assign(w if len(rows) == len(boxes) else w[rows])  # 1: the high-score detections, all tracks
        slot[rows[r]] = c
        if len(low):
            left = x[ID] >= 0
            left[c] = False
            cols = left.nonzero()[0]
            if len(cols):  # 2: the low-score ones, the confirmed tracks left
                r, c = assign(w[low[:, None], cols])
                slot[low[r]] = cols[c]

    def _confirm(self, g: np.ndarray) -> None:
        """Ids for the tracks (columns of `g`) just matched for the min_hits-th time."""
        new = g[HITS] == self.cfg.min_hits
        count = int(np.count_nonzero(new))
        if count:
            g[ID, new] = np.arange(self.next_id, self.next_id + count)
            g[LIFE, new] = self.cfg.max_age_s
            self.next_id += count

    def _reserve(self, n: int) -> None:
        """Room for n live columns (and the no-track column after them)."""
        if n < self._x.shape[1]:
            return
        grown = np.empty((ROWS, max(n, 2 * self._x.shape[1]) + 1))
        grown[:, : self.n] = self._x[:, : self.n]
        grown[:, -1] = _NONE
        self._x = grown

    def _start(self, z: np.ndarray, scores, classes, new: np.ndarray, slot: np.ndarray, t: float) -> None:
        """Tentative tracks for the detections `new` ([4, m] measurements z)."""
        room = self.cfg.max_tracks - self.n
        if len(new) > room:  # the best-scoring ones get the room left
            self.refused += len(new) - max(room, 0)
            new = np.sort(new[np.argsort(-scores[new], kind="stable")[: max(room, 0)]])
            if not len(new):
                return
        n, k = self.n, len(new)
        self._reserve(n + k)
        g = self._x[:, n : n + k]
        kalman.initiate(z[:, new], g[:KF])
        g[CLS], g[SCORE] = classes[new], scores[new]
        g[ID:] = np.array([[-1], [1], [t], [t], [0]])  # id, hits, first, last, life
        slot[new] = np.arange(n, n + k)
        self.n += k
        if self.zones is not None:
            self.zones.grow(classes[new])
        self._confirm(g)  # min_hits 1

    def _snapshot(self, idx: np.ndarray, t: float) -> list[Track]:
        if not len(idx):
            return []
        g = self._x[:, idx]
        boxes = np.round(kalman.xyxy(g[:4]).T, 2).tolist()
        vel = np.round(g[4:6].T, 2).tolist()
        ids, last, cls = g[ID].astype(np.int64).tolist(), g[LAST].tolist(), g[CLS].astype(np.int64).tolist()
        out = []
        for k, (tid, seen, c) in enumerate(zip(ids, last, cls, strict=True)):
            state: State = "tentative" if tid < 0 else "confirmed" if seen == t else "lost"
            label = self.labels[c] if self.labels and 0 <= c < len(self.labels) else None
            age, score, hits = t - float(g[FIRST, k]), float(g[SCORE, k]), int(g[HITS, k])
            box, v = tuple(boxes[k]), tuple(vel[k])
            out.append(Track(tid if tid >= 0 else None, c, label, box, score, age, t - seen, v, hits, state))
        return out
