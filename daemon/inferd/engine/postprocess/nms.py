"""Non-maximum suppression: greedy (hard) and MediaPipe's weighted variant."""

from __future__ import annotations

import numpy as np


def _iou(box: np.ndarray, others: np.ndarray, areas: np.ndarray, area: float) -> np.ndarray:
    w = np.maximum(0.0, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
    h = np.maximum(0.0, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
    inter = w * h
    return inter / np.maximum(area + areas - inter, 1e-12)


def _grouped(boxes: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Shift each group to its own region of the plane, so one pass never mixes groups."""
    if groups is None or len(boxes) == 0:
        return boxes
    span = float(np.abs(boxes).max()) * 2 + 1
    return boxes + (groups.astype(np.float32) * span)[:, None]


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    groups: np.ndarray | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression on [x1, y1, x2, y2] boxes; indices kept, best first.

    With `groups`, boxes only suppress boxes of the same group (class-wise NMS)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = _grouped(boxes, groups)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    if len(boxes) <= 1024:  # all pairs at once (at most 4 MB), then the greedy pass only indexes
        x1, y1, x2, y2 = boxes.T
        w = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
        h = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
        np.maximum(w, 0, out=w)
        np.maximum(h, 0, out=h)
        inter = w * h
        # IoU > t  <=>  inter > t * union (union > 0); a degenerate pair (union 0) never suppresses
        suppress = inter > iou_threshold * (areas[:, None] + areas[None, :] - inter)
        while order.size and (limit is None or len(keep) < limit):
            i = order[0]
            keep.append(int(i))
            order = order[1:][~suppress[i, order[1:]]]
        return np.asarray(keep, np.int64)
    while order.size and (limit is None or len(keep) < limit):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        order = rest[_iou(boxes[i], boxes[rest], areas[rest], areas[i]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def weighted_nms(boxes, scores, classes, keypoints, iou_threshold: float, groups=None):
    """MediaPipe's WEIGHTED suppression: each kept detection is the score-weighted mean of the
    boxes (and keypoints) overlapping the best remaining one by more than the threshold; it keeps
    the best one's score and class."""
    if len(boxes) == 0:
        return boxes, scores, classes, keypoints
    shifted = _grouped(boxes, groups)
    areas = np.maximum(shifted[:, 2] - shifted[:, 0], 0) * np.maximum(shifted[:, 3] - shifted[:, 1], 0)
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_scores, out_classes, out_kps = [], [], [], []
    while order.size:
        i = order[0]
        overlap = _iou(shifted[i], shifted[order], areas[order], areas[i]) > iou_threshold
        overlap[0] = True  # itself, even when degenerate (zero area: IoU 0), or the loop never ends
        members = order[overlap]
        w = scores[members][:, None]
        out_boxes.append((boxes[members] * w).sum(0) / w.sum())
        if keypoints is not None:
            flat = keypoints[members].reshape(len(members), -1)
            out_kps.append(((flat * w).sum(0) / w.sum()).reshape(keypoints.shape[1:]))
        out_scores.append(scores[i])
        out_classes.append(classes[i])
        order = order[~overlap]
    kps = np.asarray(out_kps, np.float32) if keypoints is not None else None
    return (
        np.asarray(out_boxes, np.float32), np.asarray(out_scores, np.float32),
        np.asarray(out_classes, np.int64), kps,
    )  # fmt: skip
