"""`Detections`: one image's predicted boxes with the full class-score vector of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes of one image, arrays per field, validated once on creation.

    xyxy:        (n, 4) float64 pixel corners x1, y1, x2, y2 with x1 <= x2, y1 <= y2
    class_probs: (n, C) float64 per-class scores in [0, 1] as the model emitted
                 them (independent sigmoids for YOLO, a distribution for TF OD)
    image_size:  (width, height) in pixels of the image the boxes refer to
    labels:      (n,) int class index of each box; default argmax of `class_probs`
    scores:      (n,) float box confidence; default max of `class_probs`
    background:  (n,) float probability that the box is no object; default
                 1 - max of `class_probs` (sigmoid heads have no background
                 output). A model with a real background class (a softmax TF
                 OD export) passes its own.
    embedding:   (D,) float32 image-level features from the same forward pass
                 (pooled backbone/neck maps, unit length), or None when the
                 model gives none. Diversity and novelty compare images by it.
    instability: (n,) float in [0, 1] per box: 1 - IoU with its match when the
                 image is predicted mirrored (`scoring.flip_instability`), or
                 None when not measured (only the "loc" policies need it).

    A model emits `labels`/`scores` of its own when one anchor yields a
    detection per class (the TF OD API's per-class NMS): each detection keeps
    its anchor's whole class vector but names its own class and score.
    Index with a boolean keep-mask or integer array to get a new `Detections`.
    """

    xyxy: np.ndarray
    class_probs: np.ndarray
    image_size: tuple[int, int]
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None
    background: np.ndarray | None = None
    embedding: np.ndarray | None = None
    instability: np.ndarray | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64)
        probs = np.asarray(self.class_probs, dtype=np.float64)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (n, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        if probs.ndim != 2 or probs.shape[0] != n:
            raise ValueError(f"class_probs must have shape (n={n}, C), got {probs.shape}")
        if probs.shape[1] < 1:
            raise ValueError("class_probs needs at least one class column")
        if not (np.isfinite(xyxy).all() and np.isfinite(probs).all()):
            raise ValueError("xyxy and class_probs must be finite (no NaN or inf)")
        if ((probs < 0) | (probs > 1)).any():
            raise ValueError("class_probs must lie in [0, 1]")
        if ((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])).any():
            raise ValueError("xyxy boxes need x1 <= x2 and y1 <= y2")
        width, height = (int(v) for v in self.image_size)
        if width <= 0 or height <= 0:
            raise ValueError(f"image_size must be positive (width, height), got {self.image_size}")
        top = probs.max(axis=1) if n else np.zeros(0)
        labels = probs.argmax(axis=1) if self.labels is None and n else self.labels
        labels = np.asarray(labels if labels is not None else np.zeros(0), dtype=np.int64).reshape(-1)
        if labels.shape != (n,) or ((labels < 0) | (labels >= probs.shape[1])).any():
            raise ValueError(f"labels must have shape ({n},) with class indices in [0, {probs.shape[1]})")
        scores = _unit_array("scores", top if self.scores is None else self.scores, n)
        background = _unit_array("background", 1.0 - top if self.background is None else self.background, n)
        for name, value in (("xyxy", xyxy), ("class_probs", probs), ("labels", labels), ("scores", scores), ("background", background)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "image_size", (width, height))
        if self.embedding is not None:
            embedding = np.asarray(self.embedding, dtype=np.float32)
            if embedding.ndim != 1 or embedding.size == 0 or not np.isfinite(embedding).all():
                raise ValueError(f"embedding must be a finite (D,) vector, got shape {embedding.shape}")
            embedding.setflags(write=False)
            object.__setattr__(self, "embedding", embedding)
        if self.instability is not None:
            instability = _unit_array("instability", self.instability, n)
            instability.setflags(write=False)
            object.__setattr__(self, "instability", instability)

    @classmethod
    def empty(cls, num_classes: int, image_size: tuple[int, int]) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros((0, num_classes)), image_size)

    @property
    def num_classes(self) -> int:
        return int(self.class_probs.shape[1])

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index) -> "Detections":
        index = np.asarray(index)
        if index.dtype == bool and index.shape != (len(self),):
            raise ValueError(f"keep-mask must have shape ({len(self)},), got {index.shape}")
        return Detections(
            self.xyxy[index].reshape(-1, 4),
            self.class_probs[index].reshape(-1, self.num_classes),
            self.image_size,
            self.labels[index].reshape(-1),
            self.scores[index].reshape(-1),
            self.background[index].reshape(-1),
            self.embedding,
            None if self.instability is None else self.instability[index].reshape(-1),
        )

    def with_embedding(self, embedding: np.ndarray | None) -> "Detections":
        """The same boxes with another image embedding (None: without one)."""
        return Detections(self.xyxy, self.class_probs, self.image_size, self.labels, self.scores, self.background, embedding, self.instability)

    def with_instability(self, instability: np.ndarray | None) -> "Detections":
        """The same boxes with their (n,) localization instability (None: not measured)."""
        return Detections(self.xyxy, self.class_probs, self.image_size, self.labels, self.scores, self.background, self.embedding, instability)

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, classes={self.num_classes}, image_size={self.image_size})"


def _unit_array(name: str, values, n: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    if not np.isfinite(array).all() or ((array < 0) | (array > 1)).any():
        raise ValueError(f"{name} must be finite and lie in [0, 1]")
    return array
