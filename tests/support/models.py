"""A tiny YOLOv5u detector trained on generated scenes, shared by the tests of one run."""

from __future__ import annotations

from pathlib import Path

from label_studio_ale.synthetic import DEFAULT_CLASSES, make_scene, write_yolo_dataset

CLASSES = list(DEFAULT_CLASSES[:2])  # bird (ellipse), nest (rectangle)
IMAGE_SIZE = 128
TRAIN_IMAGES = 96
VAL_IMAGES = 8
EPOCHS = 40
#: Seeds for scenes the model never saw in training.
HELD_OUT_SEEDS = range(10_000, 10_012)


def train_tiny_detector(workdir: Path) -> Path:
    """Generate a dataset and train yolov5n from yaml on it. Returns the weights path."""
    from label_studio_ale_plugins.yolov5 import train_yolo

    data = workdir / "data"
    write_yolo_dataset(data, [make_scene(i) for i in range(TRAIN_IMAGES)], CLASSES, "train")
    write_yolo_dataset(data, [make_scene(5_000 + i) for i in range(VAL_IMAGES)], CLASSES, "val")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return train_yolo(data / "data.yaml", "yolov5n.yaml", workdir / "run", epochs=EPOCHS, image_size=IMAGE_SIZE, batch=8)
