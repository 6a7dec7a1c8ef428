"""Several annotators on one image: their boxes merged by majority vote (the Conservation Metrics pipeline's future work). Pure numpy.

Boxes of the same label are matched across annotators (at most one box of
each annotator per group). An annotator's boxes are matched to the groups
together, not one after the other: the (box, group) pairs of one label
overlapping by IoU >= MATCH_IOU (with the group's mean box) are taken best
first, each box and group once, so the order in which an annotator drew the
boxes does not change the result. A box left unmatched starts a group of
its own. A group is kept when more than half the annotators drew it, as the
mean of its boxes; every group not drawn by all of them is a disagreement.
Two annotators must therefore agree on a box for it to be trained on; a
label one calls "bird" and the other "nest" is two disagreements and no box.
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
        matched = _match(xyxy, labels.tolist(), groups, match_iou)
        for index, (box, label) in enumerate(zip(xyxy, labels.tolist())):
            group = matched.get(index)
            if group is None:
                group = {"label": label, "boxes": [], "annotators": set()}
                groups.append(group)
            group["boxes"].append(box)
            group["annotators"].add(annotator)
    n = len(annotations)
    kept = [g for g in groups if 2 * len(g["annotators"]) > n]
    return Consensus(
        np.array([np.mean(g["boxes"], axis=0) for g in kept]).reshape(-1, 4),
        np.array([g["label"] for g in kept]),
        np.array([len(g["annotators"]) for g in kept], dtype=np.int64),
        sum(1 for g in groups if len(g["annotators"]) < n),
    )


def _match(xyxy: np.ndarray, labels: list, groups: list[dict], match_iou: float) -> dict[int, dict]:
    """One annotator's boxes -> {box index: group it joins}: pairs of one label by IoU with the group's mean box,
    best first (ties by box, then group order), each box and each group at most once."""
    if not groups or not len(xyxy):
        return {}
    means = np.array([np.mean(g["boxes"], axis=0) for g in groups]).reshape(-1, 4)
    overlap = box_iou(xyxy, means)
    pairs = [
        (-float(overlap[b, g]), b, g)
        for b in range(len(xyxy))
        for g, group in enumerate(groups)
        if group["label"] == labels[b] and overlap[b, g] >= match_iou
    ]
    matched: dict[int, dict] = {}
    taken: set[int] = set()
    for _, b, g in sorted(pairs):
        if b not in matched and g not in taken:
            matched[b] = groups[g]
            taken.add(g)
    return matched
