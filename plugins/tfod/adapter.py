"""Serve a SavedModel exported by the TensorFlow Object Detection API; fine-tune a RetinaNet in that format.

The OD API's `serving_default` signature takes `input_tensor` (1, H, W, 3)
uint8 (`--input_type image_tensor`; a `float_image_tensor` export takes the
same 0..255 pixels as float32) and returns `detection_boxes` (1, N, 4) as
normalised [ymin, xmin, ymax, xmax], `detection_scores`, `detection_classes`
(1-based ids), `num_detections` and, when the exporter kept it,
`detection_multiclass_scores` (1, N, C + 1) with the background in column 0. That last output is the class distribution
the uncertainty policies need; without it every box carries only its own
score, and only the confidence policies can rank (checked at /setup).

A box's label and score are `detection_classes` and `detection_scores`: the
OD API's per-class NMS emits one detection per (anchor, class), each with its
anchor's whole multiclass row, so a row's argmax names only one of them. Where
the rows are distributions (softmax heads: Faster R-CNN, SSD), column 0 is the
model's real background probability and is kept as each box's background;
otherwise (sigmoid heads) the background is 1 - the top class score.

This backend's own RetinaNet export adds `image_embedding` (1, D): pooled
feature-pyramid maps from the same forward pass (detector.py), kept as each
image's `Detections.embedding`. OD API exports lack it: no embedding then.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from label_studio_ale.detections import Detections
from label_studio_ale.errors import AdapterError
from label_studio_ale.settings import DEFAULT_MODEL_WEIGHTS, Settings

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
REQUIRED_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
MULTICLASS_OUTPUT = "detection_multiclass_scores"
#: (B, D) unit-length image features, computed in the same call as the boxes (only this backend's exports have it)
EMBEDDING_OUTPUT = "image_embedding"
LABEL_MAP_NAMES = ("label_map.pbtxt", "labelmap.pbtxt")
#: The name of a class id a label map skips: a placeholder no label is expected to match.
GAP_CLASS_PREFIX = "class_"
#: Scores below this never leave the adapter; serving thresholds apply later.
DEFAULT_SCORE_FLOOR = 0.001
#: Epochs of a fine-tune when TRAIN_EPOCHS is 0 (the RetinaNet's recipe is not the yolov5 small-data one).
TFOD_EPOCHS = 30
#: Multiclass rows summing to 1 within this are a softmax head's distributions (real background column).
DISTRIBUTION_TOLERANCE = 1e-3
#: MODEL_WEIGHTS suffixes of the yolov5 adapter's models (its default, yolov5n.yaml, among them): never a SavedModel.
YOLO_WEIGHT_SUFFIXES = (".yaml", ".yml", ".pt")


class TfodAdapter:
    """An exported OD API SavedModel: MODEL_WEIGHTS is its folder (or the export folder holding `saved_model/`)."""

    name = "tfod"
    #: What serving imports; checked at start (label_studio_ale.adapters.check_frameworks).
    frameworks = ("tensorflow",)
    framework_fix = (
        "set ADAPTER=yolov5 for a PyTorch image (ALE_EXTRAS=yolov5, the default), or install this adapter's "
        "dependencies: pip install 'label-studio-ale[tfod]' (ALE_EXTRAS=tfod in Docker)"
    )

    def __init__(self, saved_model: str | Path, *, classes: tuple[str, ...] | list[str] = (), score_floor: float = DEFAULT_SCORE_FLOOR):
        import tensorflow as tf

        self._tf = tf
        path = _saved_model_dir(Path(saved_model))
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many kinds for a broken export
            raise AdapterError(f"{path} is not a loadable SavedModel ({type(exc).__name__}: {exc})") from None
        if SIGNATURE not in loaded.signatures:
            raise AdapterError(f"{path} has no '{SIGNATURE}' signature (signatures: {', '.join(loaded.signatures) or 'none'})")
        self._loaded = loaded  # keeps the function's variables alive
        self._fn = loaded.signatures[SIGNATURE]
        inputs = self._fn.structured_input_signature[1]
        if "input_tensor" not in inputs:
            raise AdapterError(f"{path}: '{SIGNATURE}' must take 'input_tensor' (uint8 images), it takes {', '.join(inputs)}")
        #: what images are fed as: uint8 (--input_type image_tensor), or a float type (float_image_tensor: 0..255 too)
        self._input_dtype = inputs["input_tensor"].dtype
        if self._input_dtype != tf.uint8 and not self._input_dtype.is_floating:
            raise AdapterError(
                f"{path}: '{SIGNATURE}' takes input_tensor as {self._input_dtype.name} (an export with --input_type "
                "encoded_image_string_tensor or tf_example), not as image pixels; export it again with "
                "exporter_main_v2.py --input_type image_tensor"
            )
        outputs = set(self._fn.structured_outputs)
        missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
        if missing:
            raise AdapterError(f"{path}: '{SIGNATURE}' lacks {', '.join(missing)}: export it with the OD API's exporter_main_v2.py")
        self.has_class_vectors = MULTICLASS_OUTPUT in outputs
        self.has_embeddings = EMBEDDING_OUTPUT in outputs
        #: signature calls run; one per image (the embedding costs none of its own)
        self.forward_calls = 0
        self.classes = tuple(classes) if classes else tuple(_find_label_map(path))
        self.score_floor = float(score_floor)
        self.weights = str(path)
        self.version = f"{path.parent.name if path.name == 'saved_model' else path.name}-{_digest(path)}"
        self._lock = threading.Lock()

    # Start Training (label_studio_ale.adapters.Trainer): a keras-hub RetinaNet, see detector.py
    fresh_model = "retinanet"

    @staticmethod
    def check_settings(settings: Settings) -> None:
        """At start: settings this adapter's training does not honour are refused, not ignored."""
        if settings.device != "cpu":
            raise AdapterError(
                f"DEVICE={settings.device}: the tfod adapter does not choose a device, TensorFlow places its work (on the CPU "
                "unless it was installed as tensorflow[and-cuda]); set DEVICE=cpu, or ADAPTER=yolov5 to train on a chosen GPU"
            )
        if settings.train_freeze:
            raise AdapterError(
                f"TRAIN_FREEZE={settings.train_freeze}: the tfod adapter's fine-tune trains every layer; "
                "set TRAIN_FREEZE=0, or ADAPTER=yolov5 to keep a backbone frozen"
            )
        if Path(settings.model_weights).suffix.lower() in YOLO_WEIGHT_SUFFIXES:
            problem = (
                f"MODEL_WEIGHTS={settings.model_weights} is a yolov5 model (a .yaml definition or a .pt checkpoint; "
                "yolov5n.yaml is the default MODEL_WEIGHTS), but ADAPTER=tfod serves a SavedModel exported by the "
                "TensorFlow Object Detection API: set MODEL_WEIGHTS to the export folder (or its saved_model/), "
                "e.g. MODEL_WEIGHTS=/models/my-export, or set ADAPTER=yolov5 to serve YOLO weights"
            )
            if settings.model_weights != DEFAULT_MODEL_WEIGHTS:
                raise AdapterError(problem)
            # left at the default: a training worker (BASE_MODEL) and projects with versions of their own never read it
            log.warning("%s; until then only projects with a trained version of their own can be served", problem)

    @staticmethod
    def base_classes(weights: str) -> list[str] | None:
        from .training import base_classes

        return base_classes(weights)

    @staticmethod
    def grow(weights: str, classes: list[str], out: Path, origin: dict[str, str] | None = None, report: dict | None = None) -> Path:
        """`report` is the yolov5 adapter's: this detector's head always keeps the rows it is asked for."""
        from .detector import grow_head, load_detector, save_detector

        model, spec = load_detector(weights)
        grown = replace(spec, classes=tuple(classes))
        return save_detector(grow_head(model, spec, grown, origin), grown, Path(out))

    @staticmethod
    def training_plan(settings: Settings, data_yaml: Path) -> dict:
        """How `fine_tune` trains on `data_yaml`: TRAIN_EPOCHS (or TFOD_EPOCHS) epochs, a step per batch (kept in the manifest)."""
        from label_studio_ale.datasets import split_size

        epochs = settings.train_epochs or TFOD_EPOCHS
        return {"epochs": epochs, "repeat": 1, "steps": epochs * -(-split_size(data_yaml, "train") // settings.train_batch)}

    @staticmethod
    def fine_tune(settings: Settings, weights: str, data_yaml: Path, work: Path, *, seed: int = 0, on_epoch=None) -> Path:
        from .training import train_detector

        return train_detector(
            data_yaml,
            weights,
            Path(work) / "trained",
            epochs=settings.train_epochs or TFOD_EPOCHS,
            image_size=settings.image_size,
            batch=settings.train_batch,
            seed=seed,
            on_epoch=on_epoch,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> "TfodAdapter":
        from label_studio_ale.serving import model_score_floor

        # The raw output is stored and filtered later: keep every box down to the store's floor.
        return cls(settings.model_weights, classes=settings.model_classes, score_floor=model_score_floor(settings))

    def predict(self, images: list[Image.Image]) -> list[Detections]:
        """RGB images -> one `Detections` per image, in pixels of that image."""
        return [self._predict_one(image) for image in images]

    def _predict_one(self, image: Image.Image) -> Detections:
        tf = self._tf
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        height, width = array.shape[:2]
        with self._lock:
            out = self._fn(input_tensor=tf.constant(array[None], dtype=self._input_dtype))
            self.forward_calls += 1
        count = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(out["detection_boxes"], dtype=np.float64)[0, :count]
        scores = np.asarray(out["detection_scores"], dtype=np.float64)[0, :count].clip(0.0, 1.0)
        ids = np.asarray(out["detection_classes"]).astype(np.int64)[0, :count]
        num_classes = len(self.classes)
        if count and (ids.min() < 1 or ids.max() > num_classes):
            raise AdapterError(f"detection_classes holds ids outside 1..{num_classes}: check MODEL_CLASSES or the label map")
        background = None
        if self.has_class_vectors:
            multi = np.asarray(out[MULTICLASS_OUTPUT], dtype=np.float64)[0, :count]
            if multi.shape[1] != num_classes + 1:
                raise AdapterError(
                    f"{MULTICLASS_OUTPUT} has {multi.shape[1]} columns, expected {num_classes + 1} "
                    f"(background + {num_classes} classes): check MODEL_CLASSES or the label map"
                )
            probs = multi[:, 1:].clip(0.0, 1.0)
            if count and np.allclose(multi.sum(axis=1), 1.0, atol=DISTRIBUTION_TOLERANCE):
                background = multi[:, 0].clip(0.0, 1.0)
        else:
            probs = np.zeros((count, num_classes))
            probs[np.arange(count), ids - 1] = scores
        embedding = None
        if self.has_embeddings:
            vectors = np.asarray(out[EMBEDDING_OUTPUT], dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != 1:
                raise AdapterError(f"{EMBEDDING_OUTPUT} must have shape (1, D) for one image, got {vectors.shape}")
            embedding = vectors[0]
        keep = scores >= self.score_floor
        ymin, xmin, ymax, xmax = (boxes[:, k] for k in range(4))
        xyxy = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=1)
        return Detections(
            xyxy[keep],
            probs[keep],
            (width, height),
            ids[keep] - 1,
            scores[keep],
            None if background is None else background[keep],
            embedding=embedding,
        )


def _saved_model_dir(path: Path) -> Path:
    if (path / "saved_model" / "saved_model.pb").is_file():
        return path / "saved_model"
    if (path / "saved_model.pb").is_file():
        return path
    raise AdapterError(
        f"MODEL_WEIGHTS={path}: no saved_model.pb there or in its saved_model/ folder "
        "(point it at the folder exporter_main_v2.py wrote; nothing is downloaded)"
    )


def _find_label_map(path: Path) -> list[str]:
    for folder in (path, path.parent):
        for name in LABEL_MAP_NAMES:
            if (folder / name).is_file():
                return read_label_map(folder / name)
    raise AdapterError(
        f"{path}: no label_map.pbtxt beside the SavedModel; set MODEL_CLASSES (comma-separated, in class-id order) "
        "or copy the training label map there"
    )


_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"\b(id|name|display_name)\s*:\s*(?:\"([^\"]*)\"|'([^']*)'|(\d+))")


def read_label_map(path: str | Path) -> list[str]:
    """An OD API label map (`item { id: 1 name: '/m/01g317' display_name: 'person' }`) -> class names in id order.

    A class is named by its `display_name`, as the OD API shows it (`name` is
    often a machine id such as a Freebase MID), else by its `name`. Ids run
    from 1; an id the map skips (COCO's has 80 classes among ids 1..90) is
    named `class_<id>`, which matches no label, so that class i is id i + 1 and
    detection_multiclass_scores' columns (background, then one per id up to
    the largest) line up.
    """
    text = Path(path).read_text()
    found: dict[int, str] = {}
    for block in _ITEM.findall(text):
        fields = {key: next(v for v in values if v) for key, *values in _FIELD.findall(block)}
        if "id" not in fields or not ({"name", "display_name"} & set(fields)):
            raise AdapterError(f"{path}: every item needs an id and a name: {block.strip()!r}")
        class_id = int(fields["id"])
        if class_id < 1:
            raise AdapterError(f"{path}: class ids start at 1 (0 is the background), got {class_id}: {block.strip()!r}")
        if class_id in found:
            raise AdapterError(f"{path}: class id {class_id} is listed twice")
        found[class_id] = fields.get("display_name") or fields["name"]
    if not found:
        raise AdapterError(f"{path} holds no `item {{ id: ... name: ... }}` entries")
    return [found.get(i, f"{GAP_CLASS_PREFIX}{i}") for i in range(1, max(found) + 1)]


def _digest(path: Path) -> str:
    digest = hashlib.sha256((path / "saved_model.pb").read_bytes())
    variables = path / "variables" / "variables.index"
    if variables.is_file():
        digest.update(variables.read_bytes())
    return digest.hexdigest()[:8]
