"""Several annotators on one image: their boxes merged by majority vote (the Conservation Metrics pipeline's future work). Pure numpy.

Boxes of the same label are matched across annotators (at most one box of
each annotator per group): a box joins the group of its label whose mean box
it overlaps most, by IoU >= MATCH_IOU, and starts a group of its own
otherwise. A group is kept when more than half the annotators drew it, as
the mean of its boxes; every group not drawn by all of them is a
disagreement. Two annotators must therefore agree on a box for it to be
trained on; a label one calls "bird" and the other "nest" is two
disagreements and no box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import box_iou

#: Boxes of one label overlapping this much are the same object.
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Consensus:
    """xyxy: (k, 4) kept boxes (means), labels: (k,), votes: (k,) annotators behind each; disagreements: groups not unanimous."""

    xyxy: np.ndarray
    labels: np.ndarray
    votes: np.ndarray
    disagreements: int


def consensus(annotations: list[tuple[np.ndarray, np.ndarray]], match_iou: float = MATCH_IOU) -> Consensus:
    """One (boxes (k_i, 4), labels (k_i,)) per annotator -> the boxes a majority agrees on."""
    if not annotations:
        raise ValueError("consensus needs at least one annotation")
    groups: list[dict] = []  # label, boxes, annotators
    for annotator, (xyxy, labels) in enumerate(annotations):
        xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != xyxy.shape[0]:
            raise ValueError(f"annotation {annotator}: {xyxy.shape[0]} boxes but {labels.shape[0]} labels")
        for box, label in zip(xyxy, labels.tolist()):
            open_groups = [g for g in groups if g["label"] == label and annotator not in g["annotators"]]
            best, best_iou = None, match_iou
            for group in open_groups:
                overlap = float(box_iou(box[None], np.mean(group["boxes"], axis=0)[None])[0, 0])
                if overlap >= best_iou:
                    best, best_iou = group, overlap
            if best is None:
                best = {"label": label, "boxes": [], "annotators": set()}
                groups.append(best)
            best["boxes"].append(box)
            best["annotators"].add(annotator)
    n = len(annotations)
    kept = [g for g in groups if 2 * len(g["annotators"]) > n]
    return Consensus(
        np.array([np.mean(g["boxes"], axis=0) for g in kept]).reshape(-1, 4),
        np.array([g["label"] for g in kept]),
        np.array([len(g["annotators"]) for g in kept], dtype=np.int64),
        sum(1 for g in groups if len(g["annotators"]) < n),
    )
