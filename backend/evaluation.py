"""Detection metrics: COCO (through pycocotools) and PASCAL VOC 2007 / 2012 AP50, per class.

Ground truth per image: `xyxy` (n, 4) pixels and `labels` (n,) class indices,
optionally `difficult` (n,) bool (VOC: neither a hit nor a miss).
Predictions per image: `Detections`.

VOC matching follows the devkit: per class, detections by descending score;
each is matched to the ground-truth box of its class with the highest IoU in
its image; it is a hit if that IoU >= 0.5 and the box was not matched before,
else a false positive (a second hit on one box is a duplicate). Boxes are continuous
coordinates (no devkit "+1 pixel").
- VOC2007: 11-point interpolated AP (mean of max precision at recall >= 0, 0.1, ..., 1)
- VOC2012: all-point AP (area under the monotone precision envelope)
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .boxes import box_iou
from .detections import Detections

VOC_IOU = 0.5
#: COCO's standard cap on detections an image; raised to the most ground-truth objects an image has.
COCO_MAX_DETS = 100


@dataclass(frozen=True)
class GroundTruth:
    xyxy: np.ndarray
    labels: np.ndarray
    image_size: tuple[int, int]
    difficult: np.ndarray = field(default=None)

    def __post_init__(self):
        xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != xyxy.shape[0]:
            raise ValueError(f"labels must have shape ({xyxy.shape[0]},), got {labels.shape}")
        difficult = np.zeros(len(labels), dtype=bool) if self.difficult is None else np.asarray(self.difficult, dtype=bool)
        if difficult.shape != labels.shape:
            raise ValueError(f"difficult must have shape ({len(labels)},), got {difficult.shape}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "difficult", difficult)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point interpolated average precision (PASCAL VOC 2007)."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    points = []
    for t in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= t - 1e-12]
        points.append(above.max() if above.size else 0.0)
    return float(np.mean(points))


def voc12_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point average precision (PASCAL VOC 2010+): area under the precision envelope."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def precision_recall(
    ground_truth: Sequence[GroundTruth], predictions: Sequence[Detections], class_id: int, iou: float = VOC_IOU
) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (recall, precision) over detections of `class_id` by descending score, and the number of positives."""
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(predictions)} prediction images")
    positives = sum(int(((g.labels == class_id) & ~g.difficult).sum()) for g in ground_truth)
    scores, image_index, box_index = [], [], []
    for i, det in enumerate(predictions):
        mine = np.flatnonzero(det.labels == class_id)
        scores.extend(det.scores[mine])
        image_index.extend([i] * len(mine))
        box_index.extend(mine)
    order = np.argsort(-np.asarray(scores), kind="stable")
    matched = [np.zeros(len(g.labels), dtype=bool) for g in ground_truth]
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, k in enumerate(order):
        g, det = ground_truth[image_index[k]], predictions[image_index[k]]
        candidates = np.flatnonzero(g.labels == class_id)
        if candidates.size == 0:
            fp[rank] = 1
            continue
        overlaps = box_iou(det.xyxy[box_index[k]][None], g.xyxy[candidates])[0]
        best = int(overlaps.argmax())
        target = candidates[best]
        if overlaps[best] < iou:
            fp[rank] = 1
        elif g.difficult[target]:
            continue  # neither hit nor miss
        elif not matched[image_index[k]][target]:
            matched[image_index[k]][target] = True
            tp[rank] = 1
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives if positives else np.zeros_like(tp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, positives


def voc_metrics(ground_truth, predictions, class_names: Sequence[str]) -> dict:
    """Per-class and mean AP50 by VOC2007 (11-point) and VOC2012 (all-point). Classes with no positives are skipped."""
    per_class = {}
    for class_id, name in enumerate(class_names):
        recall, precision, positives = precision_recall(ground_truth, predictions, class_id)
        if positives == 0:
            continue
        per_class[name] = {"voc07_ap50": voc07_ap(recall, precision), "voc12_ap50": voc12_ap(recall, precision), "positives": positives}
    mean = lambda key: float(np.mean([v[key] for v in per_class.values()])) if per_class else 0.0  # noqa: E731
    return {"voc07_map50": mean("voc07_ap50"), "voc12_map50": mean("voc12_ap50"), "per_class": per_class}


def coco_metrics(ground_truth, predictions, class_names: Sequence[str]) -> dict:
    """COCO mAP@[.5:.95], mAP50, mAP75 and per-class mAP through pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json, results = to_coco(ground_truth, predictions, class_names)
    if not any(a["iscrowd"] == 0 for a in gt_json["annotations"]):
        what = "only difficult (crowd) ground-truth boxes" if gt_json["annotations"] else "no ground-truth boxes"
        raise ValueError(f"the evaluation set has {what}: COCO metrics are undefined")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        # COCO's cap of 100 detections an image would cap the recall of a frame of a seabird colony with more
        # objects than that: raised to the most objects an image has (ordinary sets keep COCO's own figure)
        evaluator.params.maxDets = [1, 10, max([COCO_MAX_DETS] + [len(g.labels) for g in ground_truth])]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # (iou, recall, class, area, max_dets)
    # summarize()'s first figure is fixed to 100 detections: the same means, at the last (uncapped) max_dets
    stats = [_mean_precision(precision[t, :, :, 0, -1]) for t in (slice(None), 0, 5)]  # IoU .50:.95, .50 (0), .75 (5)
    per_class = {}
    for k, category in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        if valid.size:
            p50 = precision[0, :, k, 0, -1]
            per_class[class_names[category]] = {
                "map": float(valid.mean()),
                "map50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0,
            }
    return {"map": float(stats[0]), "map50": float(stats[1]), "map75": float(stats[2]), "per_class": per_class}


def _mean_precision(precision: np.ndarray) -> float:
    """COCOeval.summarize's mean over the defined entries (> -1); -1 where none is."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def to_coco(ground_truth, predictions, class_names) -> tuple[dict, list[dict]]:
    """In-memory COCO ground truth (image ids from 1) and result list, boxes as [x, y, w, h]."""
    images, annotations, results = [], [], []
    for index, g in enumerate(ground_truth):
        image_id = index + 1
        images.append({"id": image_id, "width": int(g.image_size[0]), "height": int(g.image_size[1])})
        for box, label, difficult in zip(g.xyxy, g.labels, g.difficult):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(difficult),  # COCO's "ignore" is the closest to VOC's difficult
                }
            )
    for index, det in enumerate(predictions):
        for box, label, score in zip(det.xyxy, det.labels, det.scores):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": index + 1, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def evaluate(ground_truth, predictions, class_names: Sequence[str]) -> dict:
    """Everything: COCO mAP, mAP50, mAP75, VOC07 / VOC12 mAP50, and each per class.

    Beside the metrics: `images` and `boxes` evaluated (and `boxes` per class),
    so a figure is never read without the size of the set behind it.
    """
    counts = np.zeros(len(class_names), dtype=np.int64)
    for truth in ground_truth:
        counts += np.bincount(truth.labels[~truth.difficult], minlength=len(class_names))[: len(class_names)]
    if counts.sum() == 0:
        # nothing to find (no box, or every box difficult / crowd): COCOeval's "undefined" -1 is no mAP to report
        zero = {key: 0.0 for key in ("map", "map50", "map75", "voc07_map50", "voc12_map50")}
        return {"images": len(ground_truth), "boxes": 0, **zero, "per_class": {}}
    coco = coco_metrics(ground_truth, predictions, class_names)
    voc = voc_metrics(ground_truth, predictions, class_names)
    per_class = {}
    for index, name in enumerate(class_names):
        row = {}
        row.update(coco["per_class"].get(name, {}))
        row.update(voc["per_class"].get(name, {}))
        if row:
            per_class[name] = row | {"boxes": int(counts[index])}
    return {
        "images": len(ground_truth),
        "boxes": int(counts.sum()),
        "map": coco["map"],
        "map50": coco["map50"],
        "map75": coco["map75"],
        "voc07_map50": voc["voc07_map50"],
        "voc12_map50": voc["voc12_map50"],
        "per_class": per_class,
    }
