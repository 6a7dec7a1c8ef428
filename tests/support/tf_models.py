"""SavedModels in the TF Object Detection API's export format, written by the tests (TensorFlow processes only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Two kept detections out of four slots, as the OD API pads its outputs.
BOXES = np.array([[0.10, 0.20, 0.50, 0.60], [0.40, 0.05, 0.90, 0.45], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
# background, bird, nest
MULTICLASS = np.array([[0.05, 0.80, 0.15], [0.30, 0.25, 0.45], [1, 0, 0], [1, 0, 0]], dtype=np.float32)


def export_od_model(path: Path, *, multiclass: bool = True, label_map: str | None = "item { id: 1 name: 'bird' }\nitem { id: 2 name: 'nest' }\n") -> Path:
    """Write an OD API-style SavedModel whose detections are BOXES / MULTICLASS for any image."""
    scores = MULTICLASS[:, 1:].max(axis=1) * np.array([1, 1, 0, 0], dtype=np.float32)
    classes = (MULTICLASS[:, 1:].argmax(axis=1) + 1).astype(np.float32)
    return export_fixed_detections(path, BOXES, scores, classes, 2, MULTICLASS if multiclass else None, label_map)


#: A foreign (softmax, per-class NMS) export, as Faster R-CNN or SSD write them: anchor A is emitted once
#: per class that passed NMS, each time with A's whole row; rows are distributions, column 0 the background.
FOREIGN_BOXES = np.array([[0.40, 0.05, 0.90, 0.45], [0.10, 0.20, 0.50, 0.60], [0.10, 0.20, 0.50, 0.60], [0, 0, 0, 0]], dtype=np.float32)
FOREIGN_MULTICLASS = np.array([[0.20, 0.10, 0.70], [0.10, 0.60, 0.30], [0.10, 0.60, 0.30], [1, 0, 0]], dtype=np.float32)
FOREIGN_SCORES = np.array([0.70, 0.60, 0.30, 0.0], dtype=np.float32)
FOREIGN_CLASSES = np.array([2, 1, 2, 0], dtype=np.float32)  # nest, bird, nest (A's second class)


def export_foreign_od_model(path: Path) -> Path:
    return export_fixed_detections(path, FOREIGN_BOXES, FOREIGN_SCORES, FOREIGN_CLASSES, 3, FOREIGN_MULTICLASS)


def export_fixed_detections(
    path: Path, boxes, scores, classes, count: int, multiclass=None, label_map: str | None = "item { id: 1 name: 'bird' }\nitem { id: 2 name: 'nest' }\n"
) -> Path:
    """Write an OD API-style SavedModel that answers these padded outputs for any image."""
    import tensorflow as tf

    class Exported(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def serve(self, input_tensor):
            # the outputs depend on the input only through its batch, like a real export's shapes
            batch = tf.shape(input_tensor)[0]
            out = {
                "detection_boxes": tf.tile(tf.constant(boxes)[None], [batch, 1, 1]),
                "detection_scores": tf.tile(tf.constant(scores)[None], [batch, 1]),
                "detection_classes": tf.tile(tf.constant(classes)[None], [batch, 1]),
                "num_detections": tf.fill([batch], tf.constant(float(count))),
            }
            if multiclass is not None:
                out["detection_multiclass_scores"] = tf.tile(tf.constant(multiclass)[None], [batch, 1, 1])
            return out

    module = Exported()
    tf.saved_model.save(module, str(path / "saved_model"), signatures={"serving_default": module.serve})
    if label_map is not None:
        (path / "label_map.pbtxt").write_text(label_map)
    return path


#: The tiny trained RetinaNet: generated bird/nest scenes, a few CPU minutes at most.
TF_TRAIN_IMAGES = 40
TF_VAL_IMAGES = 8
TF_EPOCHS = 10


def train_tiny_tf_detector(workdir: Path) -> Path:
    """Train the tfod RetinaNet from config on generated scenes. -> its folder (OD export + Keras weights)."""
    from label_studio_ale.synthetic import make_scene, write_yolo_dataset
    from label_studio_ale_plugins.tfod.training import FRESH_MODEL, train_detector
    from tests.support.models import CLASSES, IMAGE_SIZE

    data = workdir / "data"
    write_yolo_dataset(data, [make_scene(1_000 + i) for i in range(TF_TRAIN_IMAGES)], CLASSES, "train")
    write_yolo_dataset(data, [make_scene(6_000 + i) for i in range(TF_VAL_IMAGES)], CLASSES, "val")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return train_detector(data / "data.yaml", FRESH_MODEL, workdir / "detector", epochs=TF_EPOCHS, image_size=IMAGE_SIZE, batch=8)
