"""Box operations on (n, 4) xyxy arrays: overlap metrics, NMS and the per-pixel tag limit.

Filters return boolean keep-masks of shape (n,), so callers can apply them to
any parallel array (or to a `Detections` with `detections[mask]`).
"""

from __future__ import annotations

import numpy as np

from .detections import Detections

NMS_IOU = "iou"
NMS_IOMIN = "iomin"


def box_area(xyxy: np.ndarray) -> np.ndarray:
    """(n, 4) -> (n,) areas; degenerate boxes have area 0."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return (xyxy[:, 2] - xyxy[:, 0]).clip(min=0) * (xyxy[:, 3] - xyxy[:, 1]).clip(min=0)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) -> (n, m) intersection areas."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    sides = (bottom_right - top_left).clip(min=0)
    return sides[..., 0] * sides[..., 1]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) -> (n, m) intersection over union; 0 where the union is empty."""
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iomin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) -> (n, m) intersection over the smaller of the two areas.

    A small box wholly inside a big one scores 1 even though their IoU is small:
    the metric seed pipelines use to merge a detection with its own fragment.
    """
    inter = box_intersection(a, b)
    smaller = np.minimum(box_area(a)[:, None], box_area(b)[None, :])
    return np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)


_OVERLAP = {NMS_IOU: box_iou, NMS_IOMIN: box_iomin}
#: Up to this many boxes NMS compares all pairs at once (n x n arrays, about 16 MB at 512); beyond, one kept box at a
#: time, so a merged tiled orthomosaic of 20,000 boxes needs megabytes, not the 24 GB of its pair matrix.
NMS_MATRIX_BOXES = 512
#: The overlap metrics by name.
OVERLAP_METRICS = tuple(_OVERLAP)


def paired_overlap(a: np.ndarray, b: np.ndarray, metric: str = NMS_IOU) -> np.ndarray:
    """(k, 4), (k, 4) -> (k,) overlap of a[i] with b[i] by `metric`: the pairs only, not the (k, k) matrix."""
    if metric not in _OVERLAP:
        raise ValueError(f"metric must be one of {sorted(_OVERLAP)}, got {metric!r}")
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    sides = (np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2])).clip(min=0)
    inter = sides[:, 0] * sides[:, 1]
    area_a, area_b = box_area(a), box_area(b)
    base = np.minimum(area_a, area_b) if metric == NMS_IOMIN else area_a + area_b - inter
    return np.divide(inter, base, out=np.zeros_like(inter), where=base > 0)


def clip_boxes(xyxy: np.ndarray, window) -> np.ndarray:
    """(n, 4) boxes clipped to `window` (x1, y1, x2, y2) -> (n, 4); a box outside it keeps no area."""
    x1, y1, x2, y2 = (float(v) for v in window)
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([xyxy[:, 0].clip(x1, x2), xyxy[:, 1].clip(y1, y2), xyxy[:, 2].clip(x1, x2), xyxy[:, 3].clip(y1, y2)], axis=1)


def _boxes_and_scores(xyxy, scores) -> tuple[np.ndarray, np.ndarray]:
    """-> ((n, 4), (n,)) float arrays, or ValueError when the lengths differ."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != xyxy.shape[0]:
        raise ValueError(f"scores must have shape ({xyxy.shape[0]},), got {scores.shape}")
    return xyxy, scores


def nms_mask(
    xyxy: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    metric: str = NMS_IOU,
    class_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression. Returns the (n,) keep-mask.

    Boxes are visited by descending score; a box is dropped when its overlap
    (`metric`: "iou" or "iomin") with an already kept box is above `threshold`.
    With `class_ids`, only boxes of the same class suppress each other.
    Ties in score keep the lower index first (stable order).
    """
    if metric not in _OVERLAP:
        raise ValueError(f"metric must be one of {sorted(_OVERLAP)}, got {metric!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    xyxy, scores = _boxes_and_scores(xyxy, scores)
    n = xyxy.shape[0]
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.argsort(-scores, kind="stable")
    boxes = xyxy[order]
    ids = None if class_ids is None else np.asarray(class_ids).reshape(-1)[order]
    overlap_of = _OVERLAP[metric]
    if n <= NMS_MATRIX_BOXES:
        overlap = overlap_of(boxes, boxes) > threshold
        if ids is not None:
            overlap &= ids[:, None] == ids[None, :]
    suppressed = np.zeros(n, dtype=bool)
    for rank in range(n):
        if suppressed[rank]:
            continue
        keep[order[rank]] = True
        if n <= NMS_MATRIX_BOXES:
            suppressed |= overlap[rank]
            continue
        # a kept box against the boxes after it only: O(n) memory for a dense tiled frame
        hits = overlap_of(boxes[rank : rank + 1], boxes[rank + 1 :])[0] > threshold
        if ids is not None:
            hits &= ids[rank + 1 :] == ids[rank]
        suppressed[rank + 1 :] |= hits
    return keep


def max_tags_per_pixel_mask(
    xyxy: np.ndarray,
    scores: np.ndarray,
    image_size: tuple[int, int],
    limit: int,
) -> np.ndarray:
    """The Conservation Metrics pipeline's crowding filter. Returns the (n,) keep-mask.

    Boxes are visited by descending score; a box is kept only if every pixel it
    covers is covered by fewer than `limit` already kept boxes. `limit=2` lets
    two birds share a nest but drops a third, weaker box on top of them.
    `limit=0` disables the filter (everything kept).
    """
    if limit < 0:
        raise ValueError(f"limit must be 0 (off) or positive, got {limit}")
    xyxy, scores = _boxes_and_scores(xyxy, scores)
    n = xyxy.shape[0]
    if limit == 0 or n == 0:
        return np.ones(n, dtype=bool)
    width, height = image_size
    # Pixel index ranges [x1, x2) x [y1, y2), both ends truncated as the
    # Conservation Metrics pipeline does (int()), so two birds whose boxes
    # touch at x=10.4 do not share column 10; every box keeps at least one
    # pixel so a sliver still counts somewhere.
    x1 = np.clip(np.floor(xyxy[:, 0]), 0, width - 1).astype(np.int64)
    y1 = np.clip(np.floor(xyxy[:, 1]), 0, height - 1).astype(np.int64)
    x2 = np.maximum(np.clip(np.floor(xyxy[:, 2]), 0, width).astype(np.int64), x1 + 1)
    y2 = np.maximum(np.clip(np.floor(xyxy[:, 3]), 0, height).astype(np.int64), y1 + 1)
    counter_dtype = np.uint8 if limit < 255 else np.uint32
    counts = np.zeros((height, width), dtype=counter_dtype)
    keep = np.zeros(n, dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        region = counts[y1[i] : y2[i], x1[i] : x2[i]]
        if region.max() < limit:
            region += 1
            keep[i] = True
    return keep


def filter_detections(
    detections: Detections,
    *,
    score_threshold: float = 0.0,
    nms_metric: str = NMS_IOU,
    nms_threshold: float | None = None,
    max_tags_per_pixel: int = 0,
    max_detections: int | None = None,
    class_groups: np.ndarray | None = None,
) -> Detections:
    """Apply the serving filters in order: score threshold, class-wise NMS, tag limit, top-k.

    class_groups: (C,) int, the group each class is suppressed within by NMS
    (classes shown as one label share one); default each class its own.
    """
    kept = detections[detections.scores >= score_threshold]
    if nms_threshold is not None and len(kept):
        if class_groups is None:
            ids = kept.labels
        else:
            groups = np.asarray(class_groups).reshape(-1)
            if groups.shape != (detections.num_classes,):
                raise ValueError(f"class_groups must have shape ({detections.num_classes},), got {groups.shape}")
            ids = groups[kept.labels]
        kept = kept[nms_mask(kept.xyxy, kept.scores, nms_threshold, nms_metric, ids)]
    if max_tags_per_pixel and len(kept):
        kept = kept[max_tags_per_pixel_mask(kept.xyxy, kept.scores, kept.image_size, max_tags_per_pixel)]
    if max_detections is not None and len(kept) > max_detections:
        kept = kept[np.sort(np.argsort(-kept.scores, kind="stable")[:max_detections])]
    return kept
