"""Zones and lines over tracked objects: occupancy, and enter, leave, dwell and cross events.

A zone is a polygon or a line in a source's frame (docs/zones.md). Each tracked object is placed
by one point of its box, the zone's `anchor` (bottom centre: where a person or a car stands).
`ZoneState` keeps, per track and zone, what was last decided, in arrays aligned with the tracker's
own columns (tracking.py calls `grow` and `keep` as its tracks start and end): one row per zone
and kind of state, one column per track, so a frame costs a few numpy operations for all the
zones together whatever the number of objects, and Python only for an event.

A polygon: an object is *in* once its anchor has been inside on `min_frames` frames in a row on
which its track was matched (never on a frame where it was only predicted), *out* the same way;
`enter` and `leave` fire on those changes, so an object standing on the border does not flicker.
`dwell` fires once per stay, on the first matched frame `dwell_s` after the stay began (its
first frame inside). A track that ends while in a zone leaves it then. A line: the side of the
line the anchor is on, decided the same way; `cross` fires when the side changes and the anchor's
path from its last point on the old side to its first on the new one cuts the segment (passing
round an end of the line is not a crossing). Walking along the line from its first point to its
second, an object crossing from the left-hand side to the right-hand side crosses `in`, the other
way `out` (on screen, y down: for a line drawn top to bottom, `in` is right to left). A tentative
track's frames count towards a change, and its events come when it is confirmed.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inferd.engine import kalman
from inferd.engine.shapes import ANCHORS, crossings, cuts, line_forms, polygon_forms

log = logging.getLogger("inferd.zones")
Point = tuple[float, float]
Found = tuple[str, str, int, dict]  # an event as ZoneState finds it: type, zone, row index, extra fields
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ZoneConfig(BaseModel):
    """A polygon or a line in one source's frames, watched for tracked objects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The zone's name: in events, metrics, MQTT topics and entity names.")
    source: str = Field(description="The source whose frames it is drawn on.")
    polygon: tuple[Point, ...] | None = Field(
        None, description="Corners [[x, y], ...] (at least 3), in `units`: occupancy, enter, leave, dwell."
    )
    line: tuple[Point, Point] | None = Field(
        None, description="Two points [[x, y], [x, y]], in `units`: cross events, in and out counts."
    )
    units: Literal["normalized", "pixels"] = Field(
        "normalized", description="normalized: 0-1 of the frame's width and height; pixels: frame pixels."
    )
    anchor: Literal["bottom_center", "center", "top_center"] = Field(
        "bottom_center", description="The point of an object's box that decides where it is."
    )
    models: tuple[str, ...] | None = Field(
        None, description="The tracked detect models it applies to (default: every one)."
    )
    labels: tuple[str, ...] | None = Field(
        None, description="Only objects with these labels count (default: every label)."
    )
    dwell_s: float | None = Field(
        None, gt=0, description="polygon: a dwell event when an object has stayed this long (once per stay)."
    )
    min_frames: int | None = Field(
        None, ge=1, description="Frames in a row that decide a change (default: the model's track.min_hits)."
    )

    @field_validator("name")
    @classmethod
    def _plain(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"zone name {name!r}: use letters, digits, '_', '-' and '.' only")
        return name

    @model_validator(mode="after")
    def _shape(self) -> ZoneConfig:
        if (self.polygon is None) == (self.line is None):
            raise ValueError(f"zone {self.name!r}: give either polygon or line")
        if self.polygon is not None and len(self.polygon) < 3:
            raise ValueError(f"zone {self.name!r}: a polygon needs at least 3 points")
        if self.line is not None and self.dwell_s is not None:
            raise ValueError(f"zone {self.name!r}: dwell_s is for polygons, not lines")
        points = self.polygon or self.line
        if self.units == "normalized" and any(not (0 <= v <= 1) for p in points for v in p):
            raise ValueError(
                f"zone {self.name!r}: normalized coordinates are 0-1 of the frame (units: pixels for pixels)"
            )
        if self.line is not None and self.line[0] == self.line[1]:
            raise ValueError(f"zone {self.name!r}: the line's two points are the same")
        return self


class ZoneState:
    """The zones of one source for one tracker: per-track state in columns aligned with its tracks,
    a row per zone and kind of state (`f` holds numbers, `b` flags). Polygons and lines share the
    rules of a change (matched frames in a row on the other side), so one pass over all of them
    decides every zone: a polygon's side is inside (IN) or outside (OUT), a line's its left (-1)
    or right (+1); 0 is no side (a label that does not count; a line's object not placed yet).

    Objects come as their tracks' filters, the tracker's own rows (kalman.py: centre x, centre y,
    aspect, height, ..., a row of ones; no copy). Every anchor is on the box's vertical centre
    line, (centre x, centre y + a fraction of the height), so every vertex, edge and line test of
    every zone is the sign of one row of a single matrix product with those rows (shapes.py)."""

    OUT, IN = 1.0, 2.0

    def __init__(self, zones: list[ZoneConfig], labels: list[str] | None, min_frames: int) -> None:
        self.polys = [z for z in zones if z.polygon is not None]
        self.lines = [z for z in zones if z.line is not None]
        self.labels = labels
        p, n = len(self.polys), len(self.lines)
        self.P, z = p, p + n
        every = self.polys + self.lines
        self.min_frames = np.array([z.min_frames or min_frames for z in every], float)[:, None]
        self.dwell = np.array([z.dwell_s or np.inf for z in self.polys])[:, None]
        self.crossed = np.zeros((n, 2), np.int64)  # per line: in, out
        # the rows of f: per zone its side now, its streak (matched frames in a row on the other
        # side) and when that streak began; per polygon when the stay began; the object's box at
        # its last matched frame (where a step towards a line starts)
        self.SIDE, self.STREAK, self.START = slice(0, z), slice(z, 2 * z), slice(2 * z, 3 * z)
        q = 3 * z
        self.SINCE, self.PREV = slice(q, q + p), slice(q + p, q + p + (4 if n else 0))
        # the rows of b: per zone whether the object's label counts; per polygon whether it has
        # dwelt this stay; per line whether the change under way cuts the segment
        self.ALLOW, self.DWELT, self.CUT = slice(0, z), slice(z, z + p), slice(z + p, z + p + n)
        self.f = np.zeros((self.PREV.stop, 0))
        self.b = np.zeros((z + p + n, 0), bool)
        self._new = np.zeros((len(self.f), 1))  # a new track's column: outside every polygon
        self._new[self.SIDE][:p] = self.OUT
        self._frame: tuple | None = None  # the frame size the geometry below is for
        self._geo: list[np.ndarray] = []
        self._forms = np.zeros((0, kalman.ROWS))  # every zone's tests: weights of the filter rows
        self._nxt = self._starts = np.zeros(0, np.int64)  # shapes.crossings' tables
        self._lift = [ANCHORS[z.anchor][1] - 0.5 for z in every]  # anchor y - centre y, in heights
        assert all(fx == 0.5 for fx, _ in ANCHORS.values()), "anchors are on the box's vertical centre line"
        self._warned = False  # frames without a size said once
        self._dwells = bool(np.isfinite(self.dwell).any())
        self._due = np.inf  # no dwell can be due before this time (a gate; the test is exact)
        self._streaks = False  # whether a streak may be under way (else no reset to do)
        self._ok = self._label_table(self.polys + self.lines)

    # ---- columns, as the tracker's tracks change -------------------------------------------------

    def grow(self, cls: np.ndarray) -> None:
        """Columns for new tracks of classes `cls`: outside every polygon, on no side of a line."""
        k = len(cls)
        b = np.zeros((len(self.b), k), bool)
        b[self.ALLOW] = True if self._ok is None else self._allowed(self._ok, cls).T
        self.f = np.concatenate([self.f, np.repeat(self._new, k, 1)], 1)
        self.b = np.concatenate([self.b, b], 1)

    def keep(self, idx: np.ndarray) -> None:
        """Only the columns `idx`, in that order."""
        self.f, self.b = self.f[:, idx], self.b[:, idx]

    # ---- a frame -------------------------------------------------------------------------------

    def _geometry(self, frame: tuple[int, int] | None) -> list[np.ndarray] | None:
        """Each zone's points in frame pixels (polygons, then lines); None: normalized, no frame."""
        if frame != self._frame or not self._geo:
            zones = self.polys + self.lines
            if frame is None and any(z.units == "normalized" for z in zones):
                return None
            w, h = frame or (1, 1)
            scale = np.array([w, h], np.float64)
            self._geo = [
                np.array(z.polygon or z.line, np.float64) * (scale if z.units == "normalized" else 1)
                for z in zones
            ]
            self._frame = frame
            p = self.P
            polys, nxt, starts = polygon_forms(self._geo[:p], self._lift[:p])
            forms = np.concatenate([polys, line_forms(self._geo[p:], self._lift[p:])])
            self._forms = np.zeros((len(forms), kalman.ROWS))
            self._forms[:, [0, 1, 3, kalman.WIDTH]] = forms  # x, y, h, 1
            self._nxt, self._starts = nxt, starts
        return self._geo

    def _label_table(self, zones: list[ZoneConfig]) -> np.ndarray | None:
        """[classes + 1, zones] whether each class counts for each zone (the last row: a class
        without a label); None: every class counts everywhere."""
        if all(z.labels is None for z in zones):
            return None
        names = [*(self.labels or []), None]
        return np.array([[z.labels is None or n in z.labels for z in zones] for n in names], bool)

    @staticmethod
    def _allowed(table: np.ndarray, cls: np.ndarray) -> np.ndarray:
        unknown = len(table) - 1
        cls = np.asarray(cls, np.int64)
        return table[np.where((cls >= 0) & (cls < unknown), cls, unknown)]

    def update(self, matched: np.ndarray, confirmed: np.ndarray, boxes: np.ndarray, t: float,
               frame: tuple[int, int] | None) -> list[Found]:  # fmt: skip
        """The tracks (columns) with their filters (`boxes`: the tracker's rows, frame pixels) at
        tracker time `t`, whether each was matched on this frame and whether it is confirmed (has
        an id): the events this frame decides, as (type, zone, k, extra) with k a column. Only
        matched tracks change state (a predicted box decides nothing)."""
        geo = self._geometry(frame)
        if geo is None:
            if not self._warned:  # a tensor frame: no picture, so no size to place the zones on
                self._warned = True
                names = ", ".join(z.name for z in self.polys + self.lines)
                log.warning(
                    "zones %s: normalized, but the frames carry no picture size (tensor frames): "
                    "they stay empty (give them in pixels: units: pixels)", names,
                )  # fmt: skip
            return []
        if not boxes.shape[1]:
            return []
        f, b, p = self.f, self.b, self.P
        raw = np.empty((len(self.min_frames), boxes.shape[1]))  # the side each object is seen on
        forms = self._forms @ boxes
        v = len(forms) - len(self.lines)
        if p:
            np.add(crossings(forms[:v] > 0, self._nxt, self._starts), self.OUT, out=raw[:p])
        if self.lines:
            np.sign(forms[v:], out=raw[p:])
        if self._ok is not None:
            raw *= b[self.ALLOW]  # an object that does not count is on no side
        seen = raw != 0
        seen &= matched
        diff = raw != f[self.SIDE]
        diff &= seen
        if np.count_nonzero(diff) and self.lines:
            side = f[self.SIDE][p:]
            new = diff[p:] & (side == 0)  # first seen: its side, no event
            if np.count_nonzero(new):
                side[new] = raw[p:][new]
                diff[p:] &= ~new
        found = None
        if np.count_nonzero(diff):
            found = self._changes(raw, diff, matched, confirmed, boxes, t, geo)
        if self.lines:  # where the next step starts
            np.copyto(f[self.PREV], boxes[:4], where=matched)
        if found is not None:
            return found
        # the usual frame: nobody changes sides
        if self._streaks:  # matched frames in a row: this one breaks a streak under way
            f[self.STREAK] *= ~matched
            self._streaks = bool(np.count_nonzero(f[self.STREAK]))  # others' (unmatched now) go on
        return self._dwell(matched, confirmed, t) if t >= self._due else []

    def ended(self, idx: np.ndarray, last: np.ndarray) -> list[Found]:
        """Tracks at columns `idx` about to end (confirmed, last matched at `last`): a leave for
        each zone they are in, as (type, zone, k, extra) with k an index into `idx`."""
        if not self.polys or not len(idx):
            return []
        inn, since = self.f[self.SIDE][: self.P, idx] == self.IN, self.f[self.SINCE][:, idx]
        return [("leave", self.polys[j].name, k, {"duration_s": round(float(last[k] - since[j, k]), 3)})
                for k, j in zip(*np.nonzero(inn.T), strict=True)]  # fmt: skip

    def summary(self, ids: np.ndarray, classes: np.ndarray) -> dict[str, dict]:
        """Per polygon the confirmed tracks in it (count, ids, count per label); per line the
        crossings so far."""
        out: dict[str, dict] = {}
        if self.polys:
            inn = self.f[self.SIDE][: self.P] == self.IN
            inn &= ids >= 0
            busy = inn.any(axis=1).tolist() if np.count_nonzero(inn) else [False] * self.P
            names = self.labels or []
            for j, z in enumerate(self.polys):
                if not busy[j]:
                    out[z.name] = {"count": 0, "track_ids": [], "labels": {}}
                    continue
                members = ids[inn[j]].tolist()
                labels: dict[str, int] = {}
                for c in classes[inn[j]].tolist():
                    name = names[c] if 0 <= c < len(names) else str(c)
                    labels[name] = labels.get(name, 0) + 1
                out[z.name] = {"count": len(members), "track_ids": members, "labels": labels}
        for j, z in enumerate(self.lines):
            out[z.name] = {"in": int(self.crossed[j, 0]), "out": int(self.crossed[j, 1])}
        return out

    # ---- internals -------------------------------------------------------------------------------

    def _changes(self, raw, diff, matched, confirmed, boxes, t: float, geo) -> list[Found]:
        """A frame on which some objects are seen on the other side of some zones."""
        f, b, p = self.f, self.b, self.P
        self._streaks = True
        side, streak, start = f[self.SIDE], f[self.STREAK], f[self.START]
        if self.lines:  # a change starts: does the step from the old side cut the line?
            starting = diff[p:] & (streak[p:] == 0)
            if np.count_nonzero(starting):
                self._cuts(starting, boxes, geo[p:])
        streak += diff
        streak *= diff | ~matched  # matched on its side: the streak is over
        np.copyto(start, t, where=diff & (streak == 1))  # the streak's first frame
        flip = diff & (streak >= self.min_frames) & confirmed
        side[flip], streak[flip] = raw[flip], 0
        found: list[Found] = []
        if np.count_nonzero(flip[:p]):
            since, dwelt = f[self.SINCE], b[self.DWELT]
            for k, j in zip(*np.nonzero(flip[:p].T), strict=True):
                name = self.polys[j].name
                if raw[j, k] == self.IN:
                    found.append(("enter", name, k, {}))
                    since[j, k], dwelt[j, k] = start[j, k], False
                else:
                    stay = round(float(start[j, k] - since[j, k]), 3)
                    found.append(("leave", name, k, {"duration_s": stay}))
            if self._dwells:
                self._due = self._next_due()
        if t >= self._due:
            found += self._dwell(matched, confirmed, t)
        if self.lines and np.count_nonzero(flip[p:]):
            cut = b[self.CUT]
            for k, j in zip(*np.nonzero(flip[p:].T), strict=True):
                if cut[j, k]:
                    way = 0 if raw[p + j, k] > 0 else 1
                    self.crossed[j, way] += 1
                    found.append(("cross", self.lines[j].name, k, {"direction": ("in", "out")[way]}))
        return found

    def _cuts(self, starting: np.ndarray, boxes: np.ndarray, ends: list[np.ndarray]) -> None:
        """For the objects `starting` ([lines, n]) a change of side: whether the step from their
        anchor at their last matched frame to this one cuts the line's segment."""
        prev = self.f[self.PREV]
        for j in np.flatnonzero(starting.any(axis=1)):
            m, lift = starting[j], self._lift[self.P + j]
            was = np.stack([prev[0, m], prev[1, m] + lift * prev[3, m]], 1)
            now = np.stack([boxes[0, m], boxes[1, m] + lift * boxes[3, m]], 1)
            self.b[self.CUT][j, m] = cuts(was, now, ends[j][0], ends[j][1])

    def _next_due(self) -> float:
        """The earliest time a dwell may fall due (an object in a zone, not dwelt yet this stay)."""
        waiting = self.f[self.SIDE][: self.P] == self.IN
        waiting &= ~self.b[self.DWELT]
        if not np.count_nonzero(waiting):
            return np.inf
        return float(np.min(self.f[self.SINCE] + self.dwell, where=waiting, initial=np.inf)) - 1e-6

    def _dwell(self, matched, confirmed, t: float) -> list[Found]:
        """Dwell events due: in a zone for dwell_s since the stay began, once per stay, on a frame
        where the object was matched."""
        since, dwelt = self.f[self.SINCE], self.b[self.DWELT]
        due = (self.f[self.SIDE][: self.P] == self.IN) & ~dwelt
        due &= t - since >= self.dwell
        due &= matched & confirmed
        found: list[Found] = []
        if np.count_nonzero(due):
            for k, j in zip(*np.nonzero(due.T), strict=True):
                stay = round(float(t - since[j, k]), 3)
                found.append(("dwell", self.polys[j].name, k, {"duration_s": stay}))
            dwelt |= due
        self._due = self._next_due()
        return found
