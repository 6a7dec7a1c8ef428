"""What an annotator sees: a model's output narrowed to the labelled classes and passed through the serving filters.

One definition serves `/predict`, the pool ranking and the sync's
pre-annotations, `ale rank`, the benchmark and the evaluation of a trained
version, so that the queue is ranked by exactly the boxes an annotator is shown.

The model itself keeps every box down to a small floor (`model_score_floor`);
that raw output is what the detection store holds. The serving filters
(SCORE_THRESHOLD, NMS, MAX_TAGS_PER_PIXEL, MAX_DETECTIONS) apply afterwards,
so changing one of them shows in the next sync without re-running the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import filter_detections
from .detections import Detections
from .settings import DEFAULT_IMAGE_SIZE, Settings
from .tiling import TileSettings

#: Boxes below this score never leave the model: the detection store holds
#: everything above it, so any SCORE_THRESHOLD at or above it needs no new prediction.
MODEL_SCORE_FLOOR = 0.05
#: Boxes per image the model keeps at most (ultralytics' own default).
MODEL_MAX_DETECTIONS = 300


def model_score_floor(settings: Settings) -> float:
    """The score floor an adapter built from `settings` applies: the store's floor, lower if SCORE_THRESHOLD is."""
    return min(settings.score_threshold, MODEL_SCORE_FLOOR)


def model_max_detections(settings: Settings) -> int:
    """Boxes per image an adapter built from `settings` keeps: MODEL_MAX_DETECTIONS, more if MAX_DETECTIONS asks."""
    return max(settings.max_detections, MODEL_MAX_DETECTIONS)


def raw_output_key(model_version: str, settings: Settings) -> str:
    """The detection store's key for what `model_version` produces under `settings`.

    The default floor, cap, input size and tiling give the bare version;
    anything else is part of the key, so stored detections are never reused
    for a lower floor, another IMAGE_SIZE or other tiles.
    """
    floor, cap = model_score_floor(settings), model_max_detections(settings)
    tiles = settings.tiles()
    parts = []
    if floor != MODEL_SCORE_FLOOR or cap != MODEL_MAX_DETECTIONS:
        parts.append(f"floor={floor:g},max={cap}")
    if settings.image_size != DEFAULT_IMAGE_SIZE:  # the model sees every image (and each tile) at another size
        parts.append(f"size={settings.image_size}")
    if tiles != TileSettings(settings.image_size):
        parts.append(tiles.key() if tiles is not None else "tile=off")
    if measures_localization(settings):
        parts.append("flip")
    return model_version if not parts else f"{model_version}@{';'.join(parts)}"


def measures_localization(settings: Settings) -> bool:
    """Whether the policy needs each box's flip instability: a second, mirrored forward pass per image."""
    from .policies import get_policy
    from .policy_suffixes import needs_localization

    try:
        return needs_localization(get_policy(settings.policy))
    except ValueError:  # an unknown policy is reported where it is used
        return False


@dataclass(frozen=True)
class ServingFilters:
    """The filters between the model and the annotator, in the order they apply."""

    score_threshold: float
    nms_metric: str
    nms_threshold: float
    max_tags_per_pixel: int
    max_detections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServingFilters":
        return cls(
            settings.score_threshold,
            settings.nms_metric,
            settings.nms_threshold,
            settings.max_tags_per_pixel,
            settings.max_detections,
        )


def shown_classes(label_map) -> np.ndarray:
    """(C,) label map (config label or None per model class) -> (C,) int: each class's label group, -1 where not shown.

    Classes mapped to one label (`predicted_values="bird,kittiwake"`, or car and
    truck to Vehicle) share a group: serving's NMS compares boxes by the label
    an annotator sees, so one animal scored as both classes is shown once.
    """
    groups: dict[str, int] = {}
    return np.array([-1 if label is None else groups.setdefault(label, len(groups)) for label in label_map], dtype=np.int64)


def shown_detections(detections: Detections, shown: np.ndarray, filters: ServingFilters) -> Detections:
    """One image's raw detections -> the boxes an annotator sees.

    shown: (C,) int label group per model class, -1 for classes the label
    config has no label for (`shown_classes`); or (C,) bool, each shown class
    a group of its own. Boxes of hidden classes are dropped first, so they
    take no slot of the tag limit or MAX_DETECTIONS, and those classes'
    columns are zeroed in the class vectors of the rest: uncertainty is then
    measured over the classes an annotator can choose between (plus
    background), as a model trained on the project's labels will be. NMS
    suppresses within a group: two classes shown as one label are one label.
    A box keeps its class vector and its model class (columns of one group
    are not merged: summing suits a softmax row, not independent sigmoids).
    """
    shown = np.asarray(shown)
    if shown.shape != (detections.num_classes,):
        raise ValueError(f"shown must have shape ({detections.num_classes},), got {shown.shape}")
    if shown.dtype == bool:
        groups = np.where(shown, np.arange(detections.num_classes), -1)
    elif np.issubdtype(shown.dtype, np.integer):
        groups = shown.astype(np.int64)
    else:
        raise ValueError(f"shown must be a bool mask or int label groups (shown_classes), got dtype {shown.dtype}")
    visible = groups >= 0
    kept = detections[visible[detections.labels]]
    if not visible.all() and len(kept):
        kept = Detections(kept.xyxy, kept.class_probs * visible, kept.image_size, kept.labels, kept.scores, kept.background, kept.embedding, kept.instability)
    return filter_detections(
        kept,
        score_threshold=filters.score_threshold,
        nms_metric=filters.nms_metric,
        nms_threshold=filters.nms_threshold,
        max_tags_per_pixel=filters.max_tags_per_pixel,
        max_detections=filters.max_detections,
        class_groups=groups,
    )
