"""A labelled image of a dataset on disk, and what every reader (YOLO, COCO, VOC) asks of its boxes and its file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .evaluation import GroundTruth
from .media import upright_size


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    truth: GroundTruth


def no_area(xyxy: np.ndarray) -> np.ndarray:
    """(n,) boxes without area: no training keeps them, so evaluation counts them neither hit nor miss (as crowd boxes)."""
    return (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as shown (EXIF orientation applied): what labels drawn in LS or a browser refer to."""
    try:
        with Image.open(path) as image:
            return upright_size(image)
    except OSError as exc:  # PIL.UnidentifiedImageError is one: a file named .jpg that is no image, or cut short
        raise ValueError(f"{path}: not a readable image ({exc}); replace it or remove it from the dataset") from None
