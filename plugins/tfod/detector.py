"""A RetinaNet detector built from config (keras-hub, TensorFlow backend), exported in the OD API signature.

Nothing is downloaded: the backbone is a small ResNet started from random
weights, sized to fine-tune on a CPU. A trained detector is a folder:

    saved_model.pb, variables/   the OD API `serving_default` export (what TfodAdapter serves)
    label_map.pbtxt              class ids 1..C, as the OD API writes them
    detector.json                the spec the Keras model is rebuilt from
    detector.weights.h5          the Keras weights, to fine-tune the next version from

The export keeps every kept box's sigmoid class vector as
`detection_multiclass_scores`, so the uncertainty policies rank with it, and
an `image_embedding` from the same forward pass: the feature-pyramid maps
the heads consume (P3-P5), each pooled over space and normalised to unit
length so that no level dominates, concatenated and normalised again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from label_studio_ale.errors import AdapterError

from .adapter import EMBEDDING_OUTPUT

SPEC_FILE = "detector.json"
WEIGHTS_FILE = "detector.weights.h5"
LABEL_MAP_FILE = "label_map.pbtxt"
#: The logit every new class row starts from: sigmoid = 0.01, RetinaNet's prior for rare foreground.
PRIOR_PROBABILITY = 0.01
#: Anchor side at P3 = 8 * ANCHOR_SIZE * (image_size / 128): boxes of ~12%..80% of the image side match.
ANCHOR_SIZE_AT_128 = 2.0
#: Box deltas are divided by these before the loss (as in Detectron and the OD API): the centre
#: and size errors of a matched anchor are ~0.1, and unscaled they sit where Huber's gradient vanishes.
BOX_VARIANCE = (0.1, 0.1, 0.2, 0.2)
DEFAULT_MAX_DETECTIONS = 100
DEFAULT_NMS_IOU = 0.5
DEFAULT_SCORE_FLOOR = 0.001
#: Seed of the fresh logit weights a grown head gives its new classes (`grow_head`).
GROW_SEED = 0


@dataclass(frozen=True)
class DetectorSpec:
    """Everything a detector's architecture depends on. `classes[i]` is class id i + 1 in the export."""

    classes: tuple[str, ...]
    image_size: int = 128
    filters: tuple[int, ...] = (64, 64, 128, 128)
    head_convs: int = 1

    def __post_init__(self):
        if not self.classes:
            raise ValueError("classes: a detector needs at least one class")
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {self.image_size}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "DetectorSpec":
        data = json.loads(text)
        return cls(tuple(data["classes"]), int(data["image_size"]), tuple(data["filters"]), int(data["head_convs"]))


def import_keras():
    """Keras on the TensorFlow backend (the export is a TF SavedModel)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise AdapterError(f"the tfod detector needs KERAS_BACKEND=tensorflow, this process runs {keras.backend.backend()}")
    return keras


def build_detector(spec: DetectorSpec):
    """A RetinaNet (ResNet basic blocks, FPN P3-P5) for `spec`, from random weights."""
    import_keras()
    import keras_hub
    # Not exported by keras-hub: the default encoder has no box variance (pinned release, see setup.cfg).
    from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

    size = spec.image_size
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=list(spec.filters),
        stackwise_num_blocks=[1] * len(spec.filters),
        stackwise_num_strides=[1] + [2] * (len(spec.filters) - 1),
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(size, size, 3),
    )
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=5, use_p5=False, image_shape=(size, size, 3))
    anchors = keras_hub.layers.AnchorGenerator(
        "xyxy", min_level=3, max_level=5, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=ANCHOR_SIZE_AT_128 * size / 128
    )
    encoder = RetinaNetLabelEncoder(anchors, bounding_box_format="xyxy", encoding_format="center_xywh", box_variance=list(BOX_VARIANCE))
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=len(spec.classes),
        bounding_box_format="xyxy",
        anchor_generator=anchors,
        label_encoder=encoder,
        pre_logits_num_conv_layers=spec.head_convs,
    )
    # keras-hub puts the focal-loss prior on the box head's bias, not the class
    # head's: box deltas start at -4.6 (boxes 1% of their anchor) and class
    # logits at 0 (p = 0.5 on every anchor, swamping the first epochs with
    # background loss). Swap them back to RetinaNet's initialisation.
    model.box_head.prediction_layer.bias.assign(np.zeros(model.box_head.prediction_layer.bias.shape, dtype="float32"))
    logits = model.classification_head.prediction_layer
    logits.bias.assign(np.full(logits.bias.shape, _prior_logit(), dtype="float32"))
    return model


def grow_head(model, old: DetectorSpec, new: DetectorSpec, origin: dict[str, str] | None = None):
    """A detector for `new.classes` that keeps everything `model` (for `old.classes`) learnt.

    Every layer is copied but the class logits, whose output channels are laid
    out anchor-major (channel = anchor * C + class): the rows of classes both
    specs share (or of the old class `origin[new]` names) are copied, new
    classes start at the prior, dropped ones go.
    """
    if (old.image_size, old.filters, old.head_convs) != (new.image_size, new.filters, new.head_convs):
        raise AdapterError("grow_head keeps the architecture: only the classes may change")
    grown = build_detector(new)
    for source, target in zip(model.backbone.weights, grown.backbone.weights):
        target.assign(source)
    for head in ("box_head", "classification_head"):
        for source, target in zip(getattr(model, head).conv_layers, getattr(grown, head).conv_layers):
            for s, t in zip(source.weights, target.weights):
                t.assign(s)
    for s, t in zip(model.box_head.prediction_layer.weights, grown.box_head.prediction_layer.weights):
        t.assign(s)
    old_kernel, old_bias = (np.asarray(w) for w in model.classification_head.prediction_layer.weights)
    layer = grown.classification_head.prediction_layer
    bias = np.asarray(layer.bias).copy()
    # New classes' logit weights: the layer's own initializer, seeded (build_detector's draw is not), so the
    # same detector and classes grow the same head without touching the global random state.
    initializer = type(layer.kernel_initializer).from_config(layer.kernel_initializer.get_config() | {"seed": GROW_SEED})
    kernel = np.asarray(initializer(tuple(layer.kernel.shape), dtype="float32")).copy()
    anchors = old_kernel.shape[-1] // len(old.classes)
    old_c, new_c = len(old.classes), len(new.classes)
    for j, name in enumerate(new.classes):
        source = (origin or {}).get(name, name)
        if source in old.classes:
            i = old.classes.index(source)
            columns_new = np.arange(anchors) * new_c + j
            columns_old = np.arange(anchors) * old_c + i
            kernel[..., columns_new] = old_kernel[..., columns_old]
            bias[columns_new] = old_bias[columns_old]
    grown.classification_head.prediction_layer.kernel.assign(kernel)
    grown.classification_head.prediction_layer.bias.assign(bias)
    return grown


def save_detector(model, spec: DetectorSpec, folder: Path, *, max_detections: int = DEFAULT_MAX_DETECTIONS) -> Path:
    """Write the trained-detector folder (module docstring): the OD API export plus what to fine-tune from."""
    folder = Path(folder)
    export_od_savedmodel(model, spec, folder, max_detections=max_detections)
    model.save_weights(folder / WEIGHTS_FILE)
    (folder / SPEC_FILE).write_text(spec.to_json())
    (folder / LABEL_MAP_FILE).write_text("".join(f"item {{\n  id: {i}\n  name: '{name}'\n}}\n" for i, name in enumerate(spec.classes, 1)))
    return folder


def is_detector_folder(path: str | Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def load_detector(folder: str | Path):
    """-> (Keras model, spec) from a folder `save_detector` wrote."""
    folder = Path(folder)
    if not is_detector_folder(folder):
        raise AdapterError(
            f"{folder} is not a trainable tfod detector (no {SPEC_FILE} + {WEIGHTS_FILE}): fine-tuning starts from a folder "
            "this backend trained, or from BASE_MODEL=retinanet (random weights); an OD API export can be served, not fine-tuned"
        )
    spec = DetectorSpec.from_json((folder / SPEC_FILE).read_text())
    model = build_detector(spec)
    model.load_weights(folder / WEIGHTS_FILE)
    return model, spec


def with_pyramid_outputs(model):
    """-> (Keras model sharing `model`'s layers that returns its outputs plus the FPN maps its heads consume,
    the keys of those maps, finest level first).

    One call runs the backbone once: the maps are the very tensors the heads
    read in `model`'s graph, so the embedding costs no second forward pass.
    """
    keras = import_keras()
    image_input = model.inputs[0]
    # The backbone's node in this detector's graph: a symbolic call elsewhere would add nodes of its own.
    nodes = [node for node in model.backbone._inbound_nodes if any(t is image_input for t in node.input_tensors)]
    if len(nodes) != 1:
        raise AdapterError(f"the detector's backbone is called {len(nodes)} times on its input, expected once")
    if not isinstance(model.backbone.output, dict):
        raise AdapterError(f"the detector's backbone returns {type(model.backbone.output).__name__}, expected a dict of pyramid levels")
    # A node keeps its outputs flat: rebuilt into the backbone's {"P3": ..., "P5": ...}.
    levels = keras.tree.pack_sequence_as(model.backbone.output, nodes[0].outputs)
    outputs = dict(model.output)
    keys = []
    for name in sorted(levels, key=lambda name: int(name[1:])):
        keys.append(f"pyramid_{name}")
        outputs[keys[-1]] = levels[name]
    return keras.Model(image_input, outputs, name=f"{model.name}_with_pyramid"), keys


def pooled_embedding(maps):
    """[(B, H_i, W_i, C_i)] feature maps -> (B, sum C_i) float32: spatial means, unit length per level, then overall."""
    import tensorflow as tf

    parts = [tf.math.l2_normalize(tf.reduce_mean(tf.cast(m, tf.float32), axis=(1, 2)), axis=-1) for m in maps]
    return tf.math.l2_normalize(tf.concat(parts, axis=-1), axis=-1)


def export_od_savedmodel(model, spec: DetectorSpec, folder: Path, *, max_detections: int = DEFAULT_MAX_DETECTIONS,
                         iou: float = DEFAULT_NMS_IOU, score_floor: float = DEFAULT_SCORE_FLOOR) -> None:
    """Save `model` as a SavedModel with the OD API's `serving_default` signature.

    input_tensor (B, H, W, 3) uint8 of any size -> detection_boxes (B, M, 4)
    normalised yxyx, detection_scores (B, M), detection_classes (B, M) 1-based,
    num_detections (B,), detection_multiclass_scores (B, M, C + 1) and
    image_embedding (B, D) (`pooled_embedding` of the FPN maps, same call).
    The model has no background class: column 0 holds 1 - the box's top class score.
    """
    import tensorflow as tf

    keras = import_keras()
    size = spec.image_size
    num_classes = len(spec.classes)
    network, pyramid = with_pyramid_outputs(model)
    anchor_boxes = model.anchor_generator(np.zeros((1, size, size, 3), dtype="float32"))
    anchors = tf.constant(np.concatenate([np.asarray(a) for a in anchor_boxes.values()], axis=0), dtype=tf.float32)

    def detect_one(args):
        boxes, probs = args  # (A, 4) xyxy model pixels, (A, C)
        scores = tf.reduce_max(probs, axis=-1)
        labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
        # Class-aware NMS as in ultralytics: boxes of different classes never suppress each other.
        offset = tf.cast(labels, tf.float32)[:, None] * (2.0 * size)
        yxyx = tf.gather(boxes, [1, 0, 3, 2], axis=-1) + offset
        keep, _ = tf.image.non_max_suppression_with_scores(yxyx, scores, max_detections, iou_threshold=iou, score_threshold=score_floor)
        count = tf.shape(keep)[0]
        pad = max_detections - count
        kept_boxes = tf.clip_by_value(tf.gather(tf.gather(boxes, keep), [1, 0, 3, 2], axis=-1) / size, 0.0, 1.0)
        kept_probs = tf.gather(probs, keep)
        multiclass = tf.concat([1.0 - tf.reduce_max(kept_probs, axis=-1, keepdims=True), kept_probs], axis=-1)
        return (
            tf.pad(kept_boxes, [[0, pad], [0, 0]]),
            tf.pad(tf.gather(scores, keep), [[0, pad]]),
            tf.pad(tf.cast(tf.gather(labels, keep) + 1, tf.float32), [[0, pad]]),
            tf.cast(count, tf.float32),
            tf.pad(multiclass, [[0, pad], [0, 0]]),
        )

    class Export(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = network

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            # Stretched to the training size, as in training: normalised boxes map back to any image size.
            images = tf.image.resize(tf.cast(input_tensor, tf.float32), (size, size)) / 255.0
            raw = self.model(images, training=False)
            embedding = pooled_embedding([raw[key] for key in pyramid])
            batch = tf.shape(images)[0]
            boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
                anchors=anchors, boxes_delta=raw["bbox_regression"], encoded_format="center_xywh",
                anchor_format="xyxy", box_format="xyxy", variance=list(BOX_VARIANCE), image_shape=(size, size, 3),
            )
            boxes = tf.reshape(tf.cast(boxes, tf.float32), (batch, -1, 4))
            probs = tf.sigmoid(tf.cast(raw["cls_logits"], tf.float32))
            signature = (
                tf.TensorSpec((max_detections, 4), tf.float32),
                tf.TensorSpec((max_detections,), tf.float32),
                tf.TensorSpec((max_detections,), tf.float32),
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec((max_detections, num_classes + 1), tf.float32),
            )
            out = tf.map_fn(detect_one, (boxes, probs), fn_output_signature=signature)
            return {
                "detection_boxes": out[0],
                "detection_scores": out[1],
                "detection_classes": out[2],
                "num_detections": out[3],
                "detection_multiclass_scores": out[4],
                EMBEDDING_OUTPUT: embedding,
            }

    module = Export()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def _prior_logit() -> float:
    return float(-np.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
