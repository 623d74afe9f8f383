"""`inferd check --accuracy DIR`: top-1 of each classifier on labelled frames (a folder per class)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inferd.engine.models import Model
from inferd.errors import InferdError
from inferd.tools.frames import FramesError, read_parts


@dataclass
class AccuracyReport:
    model: str
    frames: int = 0
    top1: float | None = None
    top5: float | None = None  # only when the model has more than 5 classes
    per_class: dict[str, dict] = field(default_factory=dict)  # folder -> {frames, top1}
    confusions: list[dict] = field(default_factory=list)  # most frequent mistakes first
    failed: dict[str, str] = field(default_factory=dict)  # frame -> why it could not be run
    skipped: str | None = None  # why the model was not measured

    def to_dict(self) -> dict:
        return asdict(self)


def score_output(model: Model, wanted: int | str | None = None) -> int | None:
    """The output holding class scores: the classify output, else a lone [N, C] output."""
    outputs = model.backend.outputs
    if wanted is None and model.cfg.postprocess.type == "classify":
        wanted = model.cfg.postprocess.output
    if isinstance(wanted, str):
        return next((i for i, s in enumerate(outputs) if s.name == wanted), None)
    if isinstance(wanted, int):
        return wanted if wanted < len(outputs) else None
    if len(outputs) == 1 and len(outputs[0].shape) == 2 and (outputs[0].shape[1] or 0) > 1:
        return 0
    return None


def class_index(model: Model, folder: str) -> int:
    """A class folder's index: its position in the model's labels, or the folder name as a number."""
    if model.labels and folder in model.labels:
        return model.labels.index(folder)
    if folder.isdigit():
        return int(folder)
    known = f"its labels: {', '.join(model.labels[:20])}" if model.labels else "it has no labels file"
    raise FramesError(
        f"class folder {folder!r} is not a label of model {model.name!r} ({known}); name class folders "
        "after the labels, or after the class index"
    )


def measure_accuracy(model: Model, classes: dict[str, list[Path]]) -> AccuracyReport:
    """Run every labelled frame through the model's preprocessing and count correct top-1/top-5."""
    report = AccuracyReport(model.name)
    output = score_output(model)
    if output is None:
        kind = model.cfg.postprocess.type
        report.skipped = f"not a classifier (postprocess {kind}, no [N, classes] output)"
        return report
    names = model.labels or []
    hits1 = hits5 = 0
    mistakes: Counter[tuple[str, str]] = Counter()
    for folder, files in classes.items():
        truth = class_index(model, folder)
        correct = ran = 0
        for path in files:
            try:
                scores = model.infer(model.prepare(read_parts(path)))[output][0].ravel()
            except InferdError as e:
                report.failed[str(path)] = str(e)
                continue
            if truth >= scores.size:
                raise FramesError(
                    f"class folder {folder!r} is class {truth}; model {model.name!r} has {scores.size}"
                )
            best = int(np.argmax(scores))
            correct += best == truth
            hits5 += truth in np.argsort(scores)[-5:]
            if best != truth:
                mistakes[folder, names[best] if best < len(names) else str(best)] += 1
            ran += 1
        hits1 += correct
        report.frames += ran
        report.per_class[folder] = {"frames": ran, "top1": correct / ran if ran else None}
    if report.frames:
        report.top1 = hits1 / report.frames
        n_classes = model.backend.outputs[output].shape[-1] or 0
        report.top5 = hits5 / report.frames if n_classes > 5 else None
    report.confusions = [{"true": t, "predicted": p, "frames": n} for (t, p), n in mistakes.most_common(5)]
    return report
