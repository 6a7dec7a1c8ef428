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

    `labels` (n,) and `scores` (n,) derive from `class_probs`: argmax and max.
    Index with a boolean keep-mask or integer array to get a new `Detections`.
    """

    xyxy: np.ndarray
    class_probs: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64)
        probs = np.asarray(self.class_probs, dtype=np.float64)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (n, 4), got {xyxy.shape}")
        if probs.ndim != 2 or probs.shape[0] != xyxy.shape[0]:
            raise ValueError(f"class_probs must have shape (n={xyxy.shape[0]}, C), got {probs.shape}")
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
        xyxy.setflags(write=False)
        probs.setflags(write=False)
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "class_probs", probs)
        object.__setattr__(self, "image_size", (width, height))

    @classmethod
    def empty(cls, num_classes: int, image_size: tuple[int, int]) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros((0, num_classes)), image_size)

    @property
    def num_classes(self) -> int:
        return int(self.class_probs.shape[1])

    @property
    def labels(self) -> np.ndarray:
        """(n,) int class index of each box: argmax of its class scores."""
        return self.class_probs.argmax(axis=1) if len(self) else np.zeros(0, dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        """(n,) float box confidence: max of its class scores."""
        return self.class_probs.max(axis=1) if len(self) else np.zeros(0)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index) -> "Detections":
        index = np.asarray(index)
        if index.dtype == bool and index.shape != (len(self),):
            raise ValueError(f"keep-mask must have shape ({len(self)},), got {index.shape}")
        return Detections(self.xyxy[index].reshape(-1, 4), self.class_probs[index].reshape(-1, self.num_classes), self.image_size)

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, classes={self.num_classes}, image_size={self.image_size})"
