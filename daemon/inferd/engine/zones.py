"""Zones and lines over tracked objects: occupancy, and enter, leave, dwell and cross events.

A zone is a polygon or a line in a source's frame (docs/zones.md). Each tracked object is placed
by one point of its box, the zone's `anchor` (bottom centre: where a person or a car stands).
`ZoneState` keeps, per track and zone, what was last decided, in arrays aligned with the tracker's
own rows (tracking.py calls `grow` and `keep` as its tracks start and end), so a frame costs a few
numpy operations per zone whatever the number of objects, and Python only for an event.

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

from inferd.engine.shapes import ANCHORS, crossings, cuts, edges

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
    """The zones of one source for one tracker: per-track state in rows aligned with its tracks."""

    def __init__(self, zones: list[ZoneConfig], labels: list[str] | None, min_frames: int) -> None:
        self.polys = [z for z in zones if z.polygon is not None]
        self.lines = [z for z in zones if z.line is not None]
        self.labels = labels
        self.min_frames = np.array([z.min_frames or min_frames for z in self.polys + self.lines])
        self.dwell = np.array([z.dwell_s or np.inf for z in self.polys])
        self.crossed = np.zeros((len(self.lines), 2), np.int64)  # per line: in, out
        self._frame: tuple | None = None  # the frame size the geometry below is for
        self._geo: list[np.ndarray] = []
        self._poly_groups: list[tuple] = []  # per anchor: its polygons' columns, edge table, starts
        self._line_ends = np.zeros((0, 2, 2))  # [lines, 2, 2] in frame pixels
        self._line_streaks = False
        self._line_anchor = np.array([ANCHORS[z.anchor] for z in self.lines]).reshape(-1, 2)
        self._warned = False  # frames without a size said once
        self._dwells = bool(np.isfinite(self.dwell).any())
        self._streaks = False  # whether a polygon's streak may be under way (else no reset to do)
        self._poly_ok = self._label_table(self.polys)
        self._line_ok = self._label_table(self.lines)
        p, n = len(self.polys), len(self.lines)
        self.a: dict[str, np.ndarray] = {
            "in": np.zeros((0, p), bool), "pstreak": np.zeros((0, p), np.int64),
            "pstart": np.zeros((0, p)), "since": np.zeros((0, p)), "dwelt": np.zeros((0, p), bool),
            "side": np.zeros((0, n), np.int8), "lstreak": np.zeros((0, n), np.int64),
            "cut": np.zeros((0, n), bool), "last": np.zeros((0, n, 2)),
        }  # fmt: skip

    # ---- rows, as the tracker's change ---------------------------------------------------------

    def grow(self, n: int) -> None:
        for k, v in self.a.items():
            self.a[k] = np.concatenate([v, np.zeros((n, *v.shape[1:]), v.dtype)])

    def keep(self, mask: np.ndarray) -> None:
        for k, v in self.a.items():
            self.a[k] = v[mask]

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
            p = len(self.polys)
            self._poly_groups = []
            for name, frac in ANCHORS.items():
                cols = [j for j, z in enumerate(self.polys) if z.anchor == name]
                if cols:
                    self._poly_groups.append((np.array(frac), cols, *edges([self._geo[j] for j in cols])))
            self._line_ends = np.array(self._geo[p:]).reshape(-1, 2, 2)
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
        return table[np.where((cls >= 0) & (cls < unknown), cls, unknown)]

    def update(self, rows: np.ndarray, ids: np.ndarray, boxes: np.ndarray, cls: np.ndarray, t: float,
               frame: tuple[int, int] | None) -> list[Found]:  # fmt: skip
        """The tracks at `rows`, matched on this frame, with their ids (-1: tentative), filtered
        boxes [k, 4] in frame pixels and classes, at tracker time `t`: the events this frame decides,
        as (type, zone, k, extra) with k an index into `rows`."""
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
        if not len(rows):
            return []
        p = len(self.polys)
        found = self._polygons(rows, ids >= 0, boxes, cls, geo[:p], t) if p else []
        return found + self._lines(rows, ids >= 0, boxes, cls, geo[p:]) if self.lines else found

    def ended(self, idx: np.ndarray, last: np.ndarray) -> list[Found]:
        """Tracks at `idx` about to end (confirmed, last matched at `last`): a leave for each
        zone they are in, as (type, zone, k, extra) with k an index into `idx`."""
        if not self.polys or not len(idx):
            return []
        since = self.a["since"][idx]
        return [("leave", self.polys[j].name, k, {"duration_s": round(float(last[k] - since[k, j]), 3)})
                for k, j in zip(*np.nonzero(self.a["in"][idx]), strict=True)]  # fmt: skip

    def summary(self, ids: np.ndarray, classes: np.ndarray) -> dict[str, dict]:
        """Per polygon the confirmed tracks in it (count, ids, count per label); per line the
        crossings so far."""
        out: dict[str, dict] = {}
        if self.polys:
            inn = self.a["in"] & (ids >= 0)[:, None]
            names = self.labels or []
            for j, z in enumerate(self.polys):
                members = ids[inn[:, j]].tolist()
                labels: dict[str, int] = {}
                for c in classes[inn[:, j]].tolist():
                    name = names[c] if 0 <= c < len(names) else str(c)
                    labels[name] = labels.get(name, 0) + 1
                out[z.name] = {"count": len(members), "track_ids": members, "labels": labels}
        for j, z in enumerate(self.lines):
            out[z.name] = {"in": int(self.crossed[j, 0]), "out": int(self.crossed[j, 1])}
        return out

    # ---- internals -------------------------------------------------------------------------------

    def _polygons(self, rows, confirmed, boxes, cls, geo, t: float) -> list[Found]:
        a, p = self.a, len(self.polys)
        raw = np.zeros((len(rows), p), bool)
        for frac, cols, table, starts in self._poly_groups:
            raw[:, cols] = crossings(boxes[:, :2] + frac * (boxes[:, 2:] - boxes[:, :2]), table, starts)
        if self._poly_ok is not None:
            raw &= self._allowed(self._poly_ok, cls)
        state = a["in"][rows]
        diff = raw != state
        if not diff.any():  # the usual frame: nobody crosses a border
            if self._streaks:  # matched frames in a row: this one breaks a streak under way
                a["pstreak"][rows] = 0
                self._streaks = bool(a["pstreak"].any())  # others' (unmatched now) go on
            return self._dwell(rows, confirmed, state, t) if self._dwells and state.any() else []
        since, dwelt = a["since"][rows], a["dwelt"][rows]
        streak = np.where(diff, a["pstreak"][rows] + 1, 0)
        start = np.where(diff & (streak == 1), t, a["pstart"][rows])  # the streak's first frame
        flip = diff & (streak >= self.min_frames[:p]) & confirmed[:, None]
        found: list[Found] = []
        for k, j in zip(*np.nonzero(flip), strict=True):
            name = self.polys[j].name
            if raw[k, j]:
                found.append(("enter", name, k, {}))
                since[k, j], dwelt[k, j] = start[k, j], False
            else:
                found.append(("leave", name, k, {"duration_s": round(float(start[k, j] - since[k, j]), 3)}))
        state[flip], streak[flip] = raw[flip], 0
        self._streaks = True
        a["in"][rows], a["pstreak"][rows], a["pstart"][rows] = state, streak, start
        a["since"][rows], a["dwelt"][rows] = since, dwelt
        return found + self._dwell(rows, confirmed, state, t) if self._dwells else found

    def _dwell(self, rows, confirmed, state, t: float) -> list[Found]:
        """Dwell events due: in a zone for dwell_s since the stay began, once per stay."""
        a = self.a
        since, dwelt = a["since"][rows], a["dwelt"][rows]
        due = state & ~dwelt & (t - since >= self.dwell) & confirmed[:, None]
        if not due.any():
            return []
        found: list[Found] = []
        for k, j in zip(*np.nonzero(due), strict=True):
            found.append(("dwell", self.polys[j].name, k, {"duration_s": round(float(t - since[k, j]), 3)}))
        a["dwelt"][rows] = dwelt | due
        return found

    def _lines(self, rows, confirmed, boxes, cls, geo) -> list[Found]:
        a, p = self.a, len(self.polys)
        wh = boxes[:, None, 2:] - boxes[:, None, :2]
        pts = boxes[:, None, :2] + self._line_anchor * wh  # [k, lines, 2]
        a0, d = self._line_ends[:, 0], self._line_ends[:, 1] - self._line_ends[:, 0]
        cross = d[:, 0] * (pts[..., 1] - a0[:, 1]) - d[:, 1] * (pts[..., 0] - a0[:, 0])
        raw = np.sign(cross).astype(np.int8)  # [k, lines]: -1 left, +1 right (as side())
        if self._line_ok is not None:
            raw[~self._allowed(self._line_ok, cls)] = 0  # an object that does not count is on no side
        cur, last = a["side"][rows], a["last"][rows]
        new = (cur == 0) & (raw != 0)  # first seen: its side, no event
        if new.any():
            cur[new] = raw[new]
            a["side"][rows] = cur
        diff = (raw != 0) & (raw != cur)
        if not diff.any():  # the usual frame: nobody changes sides
            last[raw != 0] = pts[raw != 0]  # the last point on the side it is on
            a["last"][rows] = last
            if self._line_streaks:
                a["lstreak"][rows] = 0
                self._line_streaks = bool(a["lstreak"].any())
            return []
        self._line_streaks = True
        streak, cut = a["lstreak"][rows], a["cut"][rows]
        starting = diff & (streak == 0)  # a change starts: does the path from the old side cut the line?
        for j in np.flatnonzero(starting.any(axis=0)):
            m = starting[:, j]
            cut[m, j] = cuts(last[m, j], pts[m, j], geo[j][0], geo[j][1])
        streak = np.where(diff, streak + 1, 0)
        stay = (raw != 0) & ~diff
        last[stay] = pts[stay]  # the last point on the side it is on
        flip = diff & (streak >= self.min_frames[p:]) & confirmed[:, None]
        found: list[Found] = []
        for k, j in zip(*np.nonzero(flip), strict=True):
            if cut[k, j]:
                way = 0 if raw[k, j] > 0 else 1
                self.crossed[j, way] += 1
                found.append(("cross", self.lines[j].name, k, {"direction": ("in", "out")[way]}))
        cur[flip], last[flip], streak[flip] = raw[flip], pts[flip], 0
        a["side"][rows], a["lstreak"][rows], a["cut"][rows], a["last"][rows] = cur, streak, cut, last
        return found
