"""Fine-tune the tfod RetinaNet on an ultralytics-layout dataset (the one Start Training writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from label_studio_ale.errors import AdapterError

from .detector import DetectorSpec, build_detector, import_keras, is_detector_folder, load_detector, save_detector

#: The name of a fresh detector built from config (BASE_MODEL / MODEL_WEIGHTS).
FRESH_MODEL = "retinanet"
LEARNING_RATE = 1e-3
#: Gradient clipping keeps the first steps from a random start stable.
CLIP_NORM = 10.0


def base_classes(base: str) -> list[str] | None:
    """The classes a base detector was trained for; None for a fresh one."""
    if is_detector_folder(base):
        from .detector import SPEC_FILE

        return list(DetectorSpec.from_json((Path(base) / SPEC_FILE).read_text()).classes)
    return None


def train_detector(
    data_yaml: str | Path,
    base: str,
    out: str | Path,
    *,
    epochs: int,
    image_size: int = 128,
    batch: int = 16,
    seed: int = 0,
    on_epoch=None,
) -> Path:
    """Fine-tune `base` (a detector folder, or FRESH_MODEL) on `data_yaml`; write the best epoch's detector to `out`.

    A base detector keeps its own image size (its anchors depend on it); a
    fresh one uses `image_size`, rounded up to a multiple of 32. The last
    epoch's weights are kept, with batch-norm statistics recomputed over the
    training set. `on_epoch(epoch, epochs, metrics)` is called after each
    epoch (1-based). -> `out`.
    """
    from label_studio_ale.datasets import read_yolo_split

    if not (is_detector_folder(base) or base == FRESH_MODEL):
        raise AdapterError(
            f"BASE_MODEL={base}: the tfod adapter fine-tunes a detector folder it trained (holding detector.json) "
            f"or starts from BASE_MODEL={FRESH_MODEL}; an OD API export can be served but not fine-tuned"
        )
    names, train_items = read_yolo_split(data_yaml, "train")
    _, val_items = read_yolo_split(data_yaml, "val")
    if base != FRESH_MODEL and list(base_classes(base) or []) != list(names):
        raise AdapterError(class_mismatch(base, list(base_classes(base) or []), list(names)))  # before TensorFlow loads
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    if base == FRESH_MODEL:
        spec = DetectorSpec(tuple(names), image_size=-(-image_size // 32) * 32)
        model = build_detector(spec)
    else:
        model, spec = load_detector(base)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE, global_clipnorm=CLIP_NORM))
    train = _batches(train_items, spec.image_size, batch, flip=True, seed=seed)
    val = _batches(val_items, spec.image_size, batch, flip=False, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs, {k: float(v) for k, v in (logs or {}).items()})

    # the pipeline shuffles itself (shuffle=False only silences Keras' warning about tf.data)
    model.fit(train, validation_data=val, epochs=epochs, callbacks=[Progress()], verbose=0, shuffle=False)
    precise_batch_norm(model, _batches(train_items, spec.image_size, batch, flip=False, seed=seed))
    return save_detector(model, spec, out)


def class_mismatch(base: str, known: list[str], names: list[str]) -> str:
    """Why a base detector for classes `known` cannot be fine-tuned on a dataset of `names`, and what to do."""
    if set(known) & set(names):
        return (
            f"base detector {base} knows {known}, the dataset {names}: Start Training grows its head to the dataset's "
            "classes first, keeping the rows of the classes both have: press Start Training rather than fine-tuning it directly"
        )
    return (
        f"BASE_MODEL={base} is a detector of {', '.join(known)}, and none of them is a label of this project "
        f"({', '.join(names)}): map a label to one of its classes with predicted_values, e.g. "
        f'<Label value="{names[0]}" predicted_values="{known[0] if known else "class"}"/>, so that the label starts from that '
        f"class's row, or set BASE_MODEL={FRESH_MODEL} (or leave it unset) to train a fresh detector"
    )


def precise_batch_norm(model, batches) -> None:
    """Set every batch-norm layer's moving statistics to their average over `batches` (training mode).

    A short fine-tune on a few dozen images is a few dozen steps: the moving
    averages (momentum 0.9) still lag far behind the weights, and the model
    that fits its training images finds nothing at inference. Averaging the
    batch statistics of the final weights (as Detectron's PreciseBN does)
    makes inference see what training saw.
    """
    keras = import_keras()
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    try:
        for seen, (images, _) in enumerate(batches):
            for layer in layers:
                layer.momentum = seen / (seen + 1)  # running mean over the batches seen so far
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def _batches(items, size: int, batch: int, *, flip: bool, seed: int):
    """A tf.data pipeline of (images (B, S, S, 3) float 0..1, {"boxes": (B, K, 4) xyxy model pixels, "labels": (B, K)}).

    Images are stretched to S x S, as the export does; K is the most boxes of
    any image, the rest padded with -1. Images are read per batch, so any
    dataset size fits in memory; a training pass reshuffles every epoch.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    most = max([len(item.truth.labels) for item in items] + [1])

    def load(chosen):
        images = np.zeros((len(chosen), size, size, 3), dtype="float32")
        boxes = np.full((len(chosen), most, 4), -1.0, dtype="float32")
        labels = np.full((len(chosen), most), -1.0, dtype="float32")
        for row, item in enumerate(chosen):
            with Image.open(item.path) as image:
                width, height = image.size
                images[row] = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype="float32") / 255.0
            scale = np.array([size / width, size / height, size / width, size / height], dtype="float32")
            xyxy = np.asarray(item.truth.xyxy, dtype="float32").reshape(-1, 4) * scale
            if flip and rng.random() < 0.5:
                images[row] = images[row, :, ::-1]
                xyxy = np.stack([size - xyxy[:, 2], xyxy[:, 1], size - xyxy[:, 0], xyxy[:, 3]], axis=1)
            boxes[row, : len(xyxy)] = xyxy
            labels[row, : len(xyxy)] = item.truth.labels
        return images, {"boxes": boxes, "labels": labels}

    def generate():
        order = rng.permutation(len(items)) if flip else np.arange(len(items))
        for start in range(0, len(items), batch):
            yield load([items[i] for i in order[start : start + batch]])

    signature = (
        tf.TensorSpec((None, size, size, 3), tf.float32),
        {"boxes": tf.TensorSpec((None, most, 4), tf.float32), "labels": tf.TensorSpec((None, most), tf.float32)},
    )
    batches = max(1, -(-len(items) // batch))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).apply(tf.data.experimental.assert_cardinality(batches))
