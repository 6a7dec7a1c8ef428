"""Reading labelled detection datasets from disk: the ultralytics/YOLO layout.

root/images/<split>/*.png|jpg and root/labels/<split>/<same stem>.txt with
normalised `class cx cy w h` lines; class names from root/data.yaml (`names`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .evaluation import GroundTruth

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    truth: GroundTruth


def read_class_names(data_yaml: str | Path) -> list[str]:
    import yaml

    data = yaml.safe_load(Path(data_yaml).read_text()) or {}
    names = data.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise ValueError(f"{data_yaml} has no 'names' (a list, or a dict of index: name)")


def read_yolo_split(data_yaml: str | Path, split: str = "val") -> tuple[list[str], list[LabelledImage]]:
    """-> (class names, labelled images of `split`). An image without a label file has no objects."""
    data_yaml = Path(data_yaml)
    names = read_class_names(data_yaml)
    root = data_yaml.parent
    image_dir = root / "images" / split
    if not image_dir.is_dir():
        raise ValueError(f"no images for split '{split}': {image_dir} does not exist")
    items = []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as image:
            width, height = image.size
        label_file = root / "labels" / split / f"{path.stem}.txt"
        rows = np.zeros((0, 5))
        if label_file.exists() and label_file.read_text().strip():
            rows = np.loadtxt(label_file, ndmin=2)
            if rows.shape[1] != 5:
                raise ValueError(f"{label_file}: expected 5 columns (class cx cy w h), got {rows.shape[1]}")
        labels = rows[:, 0].astype(np.int64)
        if (labels < 0).any() or (labels >= len(names)).any():
            raise ValueError(f"{label_file}: class index outside 0..{len(names) - 1}")
        cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        items.append(LabelledImage(path, GroundTruth(xyxy, labels, (width, height))))
    if not items:
        raise ValueError(f"{image_dir} holds no images")
    return names, items


def predict_items(adapter, items: list[LabelledImage], batch_size: int) -> list:
    """Run `adapter` over the images of `items`, `batch_size` at a time. -> one Detections per item."""
    predictions = []
    for start in range(0, len(items), batch_size):
        images = []
        for item in items[start : start + batch_size]:
            with Image.open(item.path) as image:
                images.append(image.convert("RGB"))
        predictions.extend(adapter.predict(images))
    return predictions
