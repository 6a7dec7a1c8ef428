"""YOLOv5u detector that keeps every kept box's full class-score vector.

ultralytics' predictor reduces each box to (xyxy, conf, class) at NMS. This
adapter runs the same letterbox -> forward -> NMS steps itself and asks NMS
for the indices of the kept anchors (`return_idxs=True`), so it can gather the
per-class sigmoid scores of those anchors from the raw head output
(B, 4 + nc, anchors). For every kept box, `class_probs.max()` is exactly the
box confidence and `argmax` its class.

The image embedding comes from the same forward pass: a pre-hook on the
Detect head pools the neck maps it receives (P3/P4/P5) over space, each scale
normalised to unit length so that none dominates, then concatenated and
normalised again (`pooled_embedding`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from label_studio_ale.detections import Detections
from label_studio_ale.errors import AdapterError
from label_studio_ale.serving import MODEL_MAX_DETECTIONS, model_max_detections, model_score_floor
from label_studio_ale.settings import Settings

from .checkpoints import checkpoint_classes, grow_head, is_model_definition, local_weights, read_checkpoint, weights_source
from .offline import import_ultralytics
from .training import train_yolo

log = logging.getLogger(__name__)

#: Scores below this never leave the model; serving thresholds apply later.
DEFAULT_CONF_FLOOR = 0.001
#: ultralytics' own predict default for class-aware NMS inside the model.
DEFAULT_MODEL_IOU = 0.7
DEFAULT_MAX_DET = MODEL_MAX_DETECTIONS


class YoloV5Adapter:
    """Serve a YOLOv5u model: a user's `.pt` checkpoint, or a fresh model built from a yaml."""

    name = "yolov5"
    #: What serving and training import; checked at start (label_studio_ale.adapters.check_frameworks).
    frameworks = ("ultralytics", "torch")
    framework_fix = (
        "set ADAPTER=tfod for a TensorFlow image (ALE_EXTRAS=tfod), or install this adapter's dependencies: "
        "pip install 'label-studio-ale[yolov5]' (ALE_EXTRAS=yolov5, the default, in Docker)"
    )

    def __init__(
        self,
        weights: str | Path,
        *,
        classes: tuple[str, ...] | list[str] = (),
        image_size: int = 640,
        device: str = "cpu",
        max_det: int = DEFAULT_MAX_DET,
        conf_floor: float = DEFAULT_CONF_FLOOR,
        model_iou: float = DEFAULT_MODEL_IOU,
        allow_downloads: bool = False,
    ):
        import_ultralytics(allow_downloads)
        import torch

        self._torch = torch
        self.weights = local_weights(weights, allow_downloads=allow_downloads)
        self.device = torch.device(device)
        self.max_det = int(max_det)
        self.conf_floor = float(conf_floor)
        self.model_iou = float(model_iou)
        self.model, names = _load_model(self.weights, tuple(classes))
        self.model.to(self.device).eval()
        self.classes = tuple(names)
        self.stride = int(max(self.model.stride.max().item(), 32))
        self.image_size = stride_multiple(int(image_size), self.stride)
        self.version = _version_name(self.weights, self.classes)
        # A model built from a yaml has learnt nothing: its uncertainty is noise (the queue starts spread out)
        self.trained = not is_model_definition(self.weights)
        # One forward pass at a time: gunicorn threads share this model.
        self._lock = threading.Lock()
        self._pooled: list = []
        self.model.model[-1].register_forward_pre_hook(self._pool_head_inputs)
        #: forward passes run; one per image shape of a `predict` call (the embedding costs none of its own)
        self.forward_calls = 0

    def _pool_head_inputs(self, module, args) -> None:
        self._pooled.append(pooled_embedding(args[0]))

    # Start Training (label_studio_ale.adapters.Trainer)
    fresh_model = "yolov5n.yaml"

    @staticmethod
    def base_classes(weights: str) -> list[str] | None:
        """None for a model yaml; AdapterError naming the file for a checkpoint this adapter cannot train from."""
        return checkpoint_classes(weights) if str(weights).endswith(".pt") else None

    @staticmethod
    def local_weights(settings: Settings, weights: str, setting: str = "BASE_MODEL") -> str:
        return local_weights(weights, allow_downloads=settings.allow_downloads, setting=setting)

    @staticmethod
    def check_settings(settings: Settings) -> None:
        """At start, before the served model is built: weights that can be found (or, with ALLOW_DOWNLOADS, fetched)
        and, for a local .pt, read as a detection checkpoint; a DEVICE torch sees, a TRAIN_PRECISION it can train in, and a
        first training's base (BASE_MODEL, else the fresh model) that TRAIN_FREEZE can keep layers of.

        A model yaml without MODEL_CLASSES (the defaults) is warned about, not refused: training takes its classes
        from the project's label config, and a project with a trained version of its own is served from it, so a
        training worker and such projects work; only a project without a version cannot be served (/setup: 503).
        """
        from .cpu_training import check_precision

        kind = weights_source(settings.model_weights, allow_downloads=settings.allow_downloads, setting="MODEL_WEIGHTS")
        if kind == "yaml" and not settings.model_classes:
            log.warning(untrained_without_classes(settings.model_weights))
        try:
            check_precision(settings.train_precision, settings.device)
        except ValueError as exc:
            raise AdapterError(str(exc)) from None
        check_device(settings.device)
        base_kind = None
        if settings.base_model:
            base_kind = weights_source(settings.base_model, allow_downloads=settings.allow_downloads, setting="BASE_MODEL")
        if settings.train_freeze and base_kind == "yaml":
            raise AdapterError(
                f"TRAIN_FREEZE={settings.train_freeze} keeps trained layers, but BASE_MODEL={settings.base_model} is a model "
                "definition with no weights: set BASE_MODEL to a .pt checkpoint, or TRAIN_FREEZE=0 to train from scratch"
            )
        if settings.train_freeze and base_kind is None and kind == "yaml":
            # Only a project's first training starts from the fresh model (a yaml MODEL_WEIGHTS has no classes to keep),
            # and it is refused then; projects with a version of their own train from it, frozen layers and all.
            log.warning(
                "TRAIN_FREEZE=%s keeps trained layers, but BASE_MODEL is unset and MODEL_WEIGHTS=%s is a model definition "
                "with no weights: a project's first training would start from the untrained %s and is refused; set "
                "BASE_MODEL to a .pt checkpoint, or TRAIN_FREEZE=0 to train from scratch",
                settings.train_freeze, settings.model_weights, YoloV5Adapter.fresh_model,
            )
        # a checkpoint is read now (a second or two), not at the first /setup or training
        for setting, weights, weights_kind in (("MODEL_WEIGHTS", settings.model_weights, kind), ("BASE_MODEL", settings.base_model, base_kind)):
            if weights_kind == "file":
                checkpoint_classes(weights, setting)

    @staticmethod
    def weights_digest(weights: str) -> str:
        from .checkpoint_digest import weights_digest

        return weights_digest(weights)

    @staticmethod
    def grow(weights: str, classes: list[str], out: Path, origin: dict[str, str] | None = None, report: dict | None = None) -> Path:
        return grow_head(weights, classes, Path(out).with_suffix(".pt"), origin, report)

    @staticmethod
    def training_plan(settings: Settings, data_yaml: Path) -> dict:
        """How `fine_tune` trains on `data_yaml`: epochs, repeats of the listing, optimizer steps (kept in the version's manifest)."""
        from label_studio_ale.datasets import split_size

        from .cpu_training import training_precision

        images = split_size(data_yaml, "train")
        precision = training_precision(settings.train_precision, settings.device)
        frozen = {"freeze": settings.train_freeze} if settings.train_freeze else {}
        return _recipe_plan(settings, images).summary(images, settings.train_batch) | {"precision": precision} | frozen

    @staticmethod
    def fine_tune(settings: Settings, weights: str, data_yaml: Path, work: Path, *, seed: int = 0, on_epoch=None) -> Path:
        from label_studio_ale.datasets import split_size

        from .cpu_training import training_precision
        from .recipe import no_warmup_warning, repeated_dataset

        train_images = split_size(data_yaml, "train")
        recipe = _recipe_plan(settings, train_images)
        caveat = no_warmup_warning(recipe, train_images, settings.train_batch)
        if caveat:
            log.warning(caveat)
        return train_yolo(
            repeated_dataset(data_yaml, recipe.repeat),
            weights,
            Path(work) / "run",
            epochs=recipe.epochs,
            overrides=recipe.overrides,
            image_size=settings.image_size,
            batch=settings.train_batch,
            device=settings.device,
            seed=seed,
            on_epoch=on_epoch,
            allow_downloads=settings.allow_downloads,
            precision=training_precision(settings.train_precision, settings.device),
            freeze=settings.train_freeze,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> "YoloV5Adapter":
        return cls(
            settings.model_weights,
            classes=settings.model_classes,
            image_size=settings.image_size,
            device=settings.device,
            # The raw output is stored and filtered later (label_studio_ale.serving):
            # keep every box down to the store's floor, not just those served now.
            max_det=model_max_detections(settings),
            conf_floor=model_score_floor(settings),
            allow_downloads=settings.allow_downloads,
        )

    def predict(self, images: list[Image.Image]) -> list[Detections]:
        """RGB images -> one `Detections` per image (pixels of the original image).

        Images of one shape share a forward pass; each shape has its own, so an image is letterboxed (and scored,
        and embedded) exactly as when it is predicted alone, whatever else is in the batch.
        """
        arrays = [np.asarray(image.convert("RGB") if image.mode != "RGB" else image) for image in images]
        groups: dict[tuple, list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(index)
        results: list = [None] * len(arrays)
        for indices in groups.values():
            for index, found in zip(indices, self._predict_same_shape([arrays[i] for i in indices])):
                results[index] = found
        return results

    def _predict_same_shape(self, arrays: list[np.ndarray]) -> list[Detections]:
        """(H, W, 3) uint8 images of one shape -> their `Detections`, from one forward pass."""
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        torch = self._torch
        batch = self._letterbox(arrays)
        with self._lock, torch.inference_mode():
            tensor = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            self._pooled.clear()
            raw = self.model(tensor)
            self.forward_calls += 1
            embeddings = self._pooled.pop().cpu().numpy() if self._pooled else [None] * len(arrays)
            raw = raw[0] if isinstance(raw, (list, tuple)) else raw  # (B, 4 + nc, anchors)
            kept, indices = non_max_suppression(
                raw,
                conf_thres=self.conf_floor,
                iou_thres=self.model_iou,
                max_det=self.max_det,
                nc=len(self.classes),
                return_idxs=True,
            )
            results = []
            for b, (rows, idx) in enumerate(zip(kept, indices)):
                class_scores = raw[b, 4 : 4 + len(self.classes), :][:, idx.long().view(-1)].T  # (n, nc); empty idx comes as float (0, 1)
                boxes = scale_boxes(tensor.shape[2:], rows[:, :4].clone(), arrays[b].shape[:2])
                height, width = arrays[b].shape[:2]
                results.append(
                    Detections(
                        boxes.cpu().double().numpy(),
                        class_scores.cpu().double().numpy().clip(0.0, 1.0),
                        (width, height),
                        embedding=embeddings[b],
                    )
                )
        return results

    def _letterbox(self, arrays: list[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 images of one shape -> (B, h, w, 3) uint8 batch, letterboxed like ultralytics' predictor
        letterboxes one image: the long side to `image_size`, the short side padded to a multiple of the stride."""
        from ultralytics.data.augment import LetterBox

        if len({a.shape for a in arrays}) > 1:
            raise ValueError("_letterbox takes images of one shape (predict groups a batch by shape)")
        letterbox = LetterBox(self.image_size, auto=True, stride=self.stride)
        return np.stack([letterbox(image=a) for a in arrays])


def stride_multiple(image_size: int, stride: int) -> int:
    """IMAGE_SIZE rounded up to a multiple of the model's stride, as ultralytics' predictor and trainer round it
    (the feature maps of a side that is not a multiple do not line up); a warning says so when it changes."""
    rounded = -(-image_size // stride) * stride
    if rounded != image_size:
        log.warning(
            "IMAGE_SIZE=%d is not a multiple of the model's stride %d: images are predicted at %d (training rounds it up "
            "the same way); set IMAGE_SIZE=%d to silence this", image_size, stride, rounded, rounded,
        )
    return rounded


def pooled_embedding(maps) -> "torch.Tensor":
    """[(B, C_i, H_i, W_i)] feature maps -> (B, sum C_i) float32: spatial means, unit length per scale, then overall."""
    import torch

    parts = [torch.nn.functional.normalize(m.float().mean(dim=(2, 3)), dim=1) for m in maps]
    return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1)


def check_device(device: str) -> None:
    """A cuda (or mps) DEVICE must be one torch sees here; torch is imported only for such a DEVICE."""
    kind = str(device).lower()
    if kind.startswith("cuda"):
        import torch

        index = int(kind.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            seen = f"torch sees no GPU here ({count} devices)" if not count else f"torch sees {count} GPU(s) here, cuda:0..cuda:{count - 1}"
            raise AdapterError(
                f"DEVICE={device}: {seen}; set DEVICE=cpu, or a GPU torch sees (check the NVIDIA driver, that the container "
                "is given the GPU, and that torch is a CUDA build)"
            )
    elif kind.startswith("mps"):
        import torch

        if not torch.backends.mps.is_available():
            raise AdapterError(f"DEVICE={device}: torch sees no Apple GPU (MPS) here; set DEVICE=cpu")


def untrained_without_classes(weights: str) -> str:
    """The start-up warning for a model yaml served without MODEL_CLASSES."""
    return (
        f"MODEL_WEIGHTS={weights} builds an untrained model from a yaml, which needs MODEL_CLASSES, and MODEL_CLASSES is "
        "unset: a project without a trained version of its own cannot be served (/setup and /predict answer 503, "
        "Label Studio cannot connect the model). Either put a trained .pt in the models volume and set "
        "MODEL_WEIGHTS to it (e.g. MODEL_WEIGHTS=/models/birds.pt), or set MODEL_CLASSES to the project's labels "
        "(e.g. MODEL_CLASSES=bird,nest) to serve a model built from the yaml that Start Training will train"
    )


def _load_model(weights: str, classes: tuple[str, ...]):
    """-> (DetectionModel, class names). `weights` is a yaml or a local file (see `local_weights`)."""
    from ultralytics.nn.tasks import DetectionModel

    if is_model_definition(weights):
        if not classes:
            raise AdapterError(
                f"MODEL_WEIGHTS={weights} builds an untrained model from yaml; set MODEL_CLASSES "
                "(comma-separated class names) so it knows its classes, or point MODEL_WEIGHTS at a trained .pt"
            )
        import torch

        try:
            # Seeded by the yaml and classes: the server and every worker build the same untrained weights, so the boxes a
            # sync stores are those /predict shows (torch's global generator is left as it was)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(_definition_digest(weights, classes)[:15], 16))
                model = DetectionModel(weights, nc=len(classes), verbose=False)
        except FileNotFoundError:
            raise AdapterError(f"model yaml {weights} not found (a path, or an ultralytics name like yolov5n.yaml)") from None
        model.names = dict(enumerate(classes))
        return model.fuse(verbose=False), classes
    weights_source(weights)
    model, names = read_checkpoint(weights, fuse=True)
    if classes and tuple(classes) != names:
        raise AdapterError(f"MODEL_CLASSES={','.join(classes)} does not match the checkpoint's classes {','.join(names)}")
    return model.float(), names


def _version_name(weights: str, classes: tuple[str, ...]) -> str:
    """The model's name in Label Studio and the detection store: a checkpoint's file name and content digest; a model
    built from a yaml is the yaml and its classes, so another MODEL_CLASSES is another model (another store key)."""
    path = Path(weights)
    if is_model_definition(weights):
        return f"{path.stem}-untrained-{_definition_digest(weights, classes)[:8]}"
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        return f"{path.stem}-{digest}"
    return f"{path.stem}-untrained"


def _definition_digest(weights: str, classes: tuple[str, ...]) -> str:
    """sha256 of a model yaml (its content where it is a file, else its name) and its class names."""
    path = Path(weights)
    source = path.read_bytes() if path.is_file() else str(weights).encode()
    return hashlib.sha256(source + b"\0" + "\n".join(classes).encode()).hexdigest()


def _recipe_plan(settings: Settings, train_images: int):
    """The recipe's `Plan` for fine-tuning on `train_images` images under `settings`."""
    from .recipe import plan

    return plan(settings.train_recipe, train_images, settings.train_batch, settings.train_epochs, settings.train_min_steps)
