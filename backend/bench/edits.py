"""What an annotator changes in the pre-annotations of the images a cycle labels: the benchmark's edits.

A team labelling with pre-annotations pays for the boxes it has to draw or
fix, not for the ones it accepts as shown. Each labelled image's shown boxes
(the model's detections through the serving filters, as a sync writes them)
are compared with its ground truth as if that were the submitted annotation
(`annotation_edits.compare_boxes`): accepted, moved, relabelled, deleted,
added. The model is the one that served the image: the previous cycle's for
a policy's batch, the base model for the initial set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..annotation_edits import EditCounts, compare_boxes
from ..datasets import LabelledImage
from ..detections import Detections
from ..serving import ServingFilters, shown_detections


def shown_edits(
    detections: Sequence[Detections], items: Sequence[LabelledImage], model_classes: Sequence[str], names: Sequence[str], filters: ServingFilters
) -> EditCounts:
    """The edits of labelling `items` from the pre-annotations `detections` (one per item), summed.

    model_classes: (C,) the names of the detections' classes; those not among
    the dataset's `names` are not shown (no label config has them).
    """
    return sum(image_edits(detections, items, model_classes, names, filters), EditCounts())


def image_edits(
    detections: Sequence[Detections], items: Sequence[LabelledImage], model_classes: Sequence[str], names: Sequence[str], filters: ServingFilters
) -> list[EditCounts]:
    """`shown_edits`, one EditCounts per item."""
    if len(detections) != len(items):
        raise ValueError(f"one Detections per labelled image: got {len(detections)} for {len(items)} images")
    to_name = np.array([names.index(c) if c in names else -1 for c in model_classes], dtype=np.int64)
    shown = to_name >= 0
    edits = []
    for found, item in zip(detections, items):
        boxes = shown_detections(found, shown, filters)
        edits.append(compare_boxes(boxes.xyxy, to_name[boxes.labels], item.truth.xyxy, item.truth.labels))
    return edits
