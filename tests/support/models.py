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


def train_family_checkpoint(workdir: Path, model_yaml: str, images: int = 32) -> Path:
    """A small bird/nest checkpoint of an ultralytics family (yolov5n.yaml, yolov8n.yaml, yolo11n.yaml), built from its yaml."""
    from label_studio_ale_plugins.yolov5 import train_yolo
    from label_studio_ale_plugins.yolov5.recipe import SMALL_DATA, plan, repeated_dataset

    data = workdir / "data"
    if not (data / "data.yaml").is_file():
        write_yolo_dataset(data, [make_scene(7_000 + i) for i in range(images)], CLASSES, "train")
        write_yolo_dataset(data, [make_scene(8_000 + i) for i in range(4)], CLASSES, "val")
        names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
        (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    # The small-data recipe: a few hundred optimizer steps, where ultralytics' defaults would take ~5 on 32 images;
    # 200 steps already give a checkpoint that detects, at a third of the default's time.
    recipe = plan(SMALL_DATA, images, batch=8, min_steps=200)
    data_yaml = repeated_dataset(data / "data.yaml", recipe.repeat)
    out = workdir / Path(model_yaml).stem
    return train_yolo(data_yaml, model_yaml, out, epochs=recipe.epochs, image_size=IMAGE_SIZE, batch=8, overrides=recipe.overrides)


def assert_same_as_ultralytics(adapter, images) -> int:
    """The adapter keeps ultralytics' own boxes; its conf is our max, its class our argmax. -> boxes compared."""
    import numpy as np
    from ultralytics import YOLO

    ours = adapter.predict(images)
    theirs = YOLO(str(adapter.weights)).predict(images, imgsz=adapter.image_size, conf=adapter.conf_floor, iou=adapter.model_iou, verbose=False)
    total = 0
    for det, ref in zip(ours, theirs):
        assert det.class_probs.shape == (len(det), len(adapter.classes))
        assert len(det) == len(ref.boxes)
        order = np.argsort(-det.scores, kind="stable")
        ref_order = np.argsort(-ref.boxes.conf.numpy(), kind="stable")
        assert np.allclose(det.xyxy[order], ref.boxes.xyxy.numpy()[ref_order], atol=1e-2)
        assert np.allclose(det.class_probs.max(axis=1)[order], ref.boxes.conf.numpy()[ref_order], atol=1e-5)
        assert np.array_equal(det.class_probs.argmax(axis=1)[order], ref.boxes.cls.numpy().astype(int)[ref_order])
        total += len(det)
    return total


def class_outputs(weights, images, image_size: int = IMAGE_SIZE):
    """(B, nc, anchors) sigmoid class scores of the raw head, before NMS, for letterboxed `images`."""
    import numpy as np
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(weights), device="cpu", inplace=True, fuse=False)
    model = model.float().eval()
    batch = np.stack([np.asarray(image.convert("RGB").resize((image_size, image_size))) for image in images])
    with torch.inference_mode():
        raw = model(torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255))
    raw = raw[0] if isinstance(raw, (list, tuple)) else raw
    return raw[:, 4:, :].numpy()
