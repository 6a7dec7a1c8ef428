"""ultralytics checkpoints: where one is (a file, a yaml, a name to download), the model and class names it holds, and a copy
whose head is grown to new classes."""

from __future__ import annotations

import logging
from pathlib import Path

from label_studio_ale.errors import AdapterError

from .offline import import_ultralytics

log = logging.getLogger(__name__)

#: Seed of the fresh rows a grown head gives its new classes (`grow_head`).
GROW_SEED = 0


#: What names a model definition (an architecture with no trained weights) rather than a checkpoint.
MODEL_DEFINITION_SUFFIXES = (".yaml", ".yml")


def is_model_definition(weights: str | Path) -> bool:
    """Whether `weights` names a model .yaml, built untrained, rather than a checkpoint."""
    return Path(weights).suffix in MODEL_DEFINITION_SUFFIXES


def weights_source(weights: str, *, allow_downloads: bool = False, setting: str = "MODEL_WEIGHTS") -> str:
    """Check what `weights` names, without loading anything. -> "yaml", "file" or "hub".

    A `.pt` name without a folder that is not a file here is a name ultralytics
    downloads (yolo11n.pt, yolov8s.pt, yolov5nu.pt): refused unless
    ALLOW_DOWNLOADS is on, with the two ways to fix it.
    """
    if is_model_definition(weights):
        return "yaml"
    path = Path(weights)
    if path.suffix != ".pt":
        raise AdapterError(f"{setting}={weights} must be a .pt checkpoint or a model .yaml")
    if path.is_file():
        return "file"
    if path.name == str(weights):
        if allow_downloads:
            return "hub"
        raise AdapterError(
            f"{setting}={weights} is not a file here ({path.resolve()}), and downloads are off. Either put the "
            f"checkpoint at that path or set {setting} to its full path, or set ALLOW_DOWNLOADS=true to let "
            "ultralytics download it by name (the machine needs internet access)"
        )
    raise AdapterError(f"{setting}={weights}: no such file (copy the .pt there, or fix the path)")


def local_weights(weights: str | Path, *, allow_downloads: bool = False, setting: str = "MODEL_WEIGHTS") -> str:
    """The local path of `weights`: a yaml or a file as they are; a hub name handed to ultralytics, which downloads it."""
    weights = str(weights)
    if weights_source(weights, allow_downloads=allow_downloads, setting=setting) != "hub":
        return weights
    import_ultralytics(allow_downloads=True)
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        local = str(attempt_download_asset(weights))
    except Exception as exc:  # no network, unknown name: ultralytics' own errors vary
        raise AdapterError(f"{setting}={weights}: ultralytics could not download it ({type(exc).__name__}: {exc})") from None
    if not Path(local).is_file():
        raise AdapterError(f"{setting}={weights}: ultralytics did not download it (is the name right, and the network up?)")
    return local


def checkpoint_model(weights: str | Path, setting: str | None = None):
    """The detection model in a local ultralytics checkpoint, unfused, on the CPU (`read_checkpoint`)."""
    return _local_checkpoint(weights, setting)[0]


def checkpoint_classes(weights: str | Path, setting: str | None = None) -> list[str]:
    """Class names stored in an ultralytics checkpoint, in index order."""
    return list(_local_checkpoint(weights, setting)[1])


def _local_checkpoint(weights: str | Path, setting: str | None):
    """`read_checkpoint` of a local file, unfused; AdapterError naming `setting` for a path with no file."""
    if not Path(weights).is_file():
        raise AdapterError(f"{_named(weights, setting)}: no such file (a hub name is fetched first, with ALLOW_DOWNLOADS)")
    return read_checkpoint(weights, fuse=False, setting=setting)


def read_checkpoint(weights: str | Path, *, fuse: bool, setting: str | None = None):
    """-> (model, class names) of an ultralytics detection checkpoint, on the CPU; AdapterError, naming `setting`
    (e.g. BASE_MODEL) and the file, for one this ultralytics cannot read, a non-detection model, or names that do not
    number its head's classes."""
    import_ultralytics()
    from ultralytics.nn.tasks import load_checkpoint

    named = _named(weights, setting)
    try:
        model, _ = load_checkpoint(str(weights), device="cpu", inplace=True, fuse=fuse)
    except Exception as exc:  # a damaged file, another format, a newer ultralytics' classes: ultralytics' own errors vary
        raise unreadable_checkpoint(named, exc) from None
    check_detection_head(model, named)
    return model, class_names(model, named)


def unreadable_checkpoint(named: str, exc: Exception) -> AdapterError:
    """The error for a checkpoint `load_checkpoint` raised `exc` on; `named` is e.g. "BASE_MODEL=/models/x.pt"."""
    import ultralytics

    reason = f"{type(exc).__name__}: {exc}"
    # unpickling looks up every module and class by name: one this ultralytics lacks was saved by a newer release
    # (numpy's own module moves are reported by ultralytics with the numpy version to install)
    if isinstance(exc, (AttributeError, ModuleNotFoundError)) and "numpy" not in str(exc):
        return AdapterError(
            f"{named} cannot be read by the installed ultralytics {ultralytics.__version__} ({reason}): it was probably "
            f"saved by a newer ultralytics. Upgrade ultralytics here (pip install -U ultralytics, or rebuild the image) "
            f"to the version that saved it, or use a checkpoint saved by ultralytics {ultralytics.__version__} or older"
        )
    return AdapterError(
        f"{named} is not an ultralytics YOLO checkpoint ({reason}); use a .pt saved by ultralytics (YOLOv5u, YOLOv8, "
        "YOLO11, YOLO26 ...): an original YOLOv5-repo (anchor-based) checkpoint cannot be loaded, retrain or export it as YOLOv5u"
    )


#: Heads that subclass ultralytics' Detect but add outputs (masks, keypoints, box angles) that its box rows do not
#: carry: read as plain detections, their outputs would be misread. -> the kind of model, for the error.
OTHER_TASK_HEADS = (("Segment", "a segmentation"), ("YOLOESegment", "a segmentation"), ("Pose", "a pose"), ("OBB", "an oriented-box (OBB)"))
#: Heads that are no Detect at all.
NON_DETECT_TASKS = {"Classify": "a classification", "RTDETRDecoder": "an RT-DETR"}


def check_detection_head(model, named: str) -> None:
    """Refuse a model whose last layer is not a plain detection head (Detect, or a subclass such as v10Detect, with
    box rows of xywh + class scores). ultralytics' own `task` is no guide: a model built in code says "detect"."""
    from ultralytics.nn.modules import head as heads

    try:
        head = model.model[-1]
    except (AttributeError, TypeError, IndexError, KeyError):  # not a layered ultralytics model at all
        head = None
    kind = type(head).__name__
    task = next((task for name, task in OTHER_TASK_HEADS if isinstance(head, getattr(heads, name, ()))), None)
    if isinstance(head, heads.Detect) and task is None:
        return
    task = task or NON_DETECT_TASKS.get(kind, "a non-detection")
    raise AdapterError(
        f"{named} is {task} model (its head is {kind}); the yolov5 adapter serves and trains detection checkpoints "
        "only (a Detect head: an ultralytics detect model such as YOLOv5u, YOLOv8, YOLO11, YOLOv10 or YOLO26): "
        "use one trained with task=detect"
    )


def class_names(model, named: str) -> tuple[str, ...]:
    """The model's class names in head order: its `names` (a dict or a list) must number 0..nc-1, one per head class."""
    count = int(model.model[-1].nc)
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names or ()))
    try:
        names = {int(key): str(value) for key, value in names.items()}
    except (TypeError, ValueError):
        names = {}
    if len(names) != count or set(names) != set(range(count)):
        shown = sorted(names)
        ids = ", ".join(map(str, shown[:12])) + (", ..." if len(shown) > 12 else "")
        raise AdapterError(
            f"{named}: its class names do not match its head: the head scores {count} classes, the names have "
            f"{len(model.names or ())} entries (ids {ids or 'none'}), and they must be numbered 0..{count - 1}, one per class. "
            f"Set the checkpoint's names to its {count} classes in head order (load it with torch.load, set "
            f"ckpt['model'].names = {{0: ..., {count - 1}: ...}}, torch.save it), or retrain with a data.yaml naming every class"
        )
    return tuple(names[i] for i in range(count))


def _named(weights: str | Path, setting: str | None) -> str:
    return f"{setting}={weights}" if setting else str(weights)


def grow_head(
    weights: str | Path, classes: list[str] | tuple[str, ...], out: str | Path, origin: dict[str, str] | None = None,
    report: dict | None = None,
) -> Path:
    """Checkpoint for new class names, keeping what the model knows about the ones it had.

    Every parameter is copied from `weights`; in the classification layers
    (first dimension = number of classes) each class's row moves to its
    position in `classes`: the row of the old class `origin[new]` names, or of
    the old class of the same name, and new classes start from the fresh
    initialisation. Returns `out`, a checkpoint ultralytics trains from.

    Ultralytics sizes the classification branch by the class count (its width
    is max(channels, min(classes, 100))): where the new width differs, as from
    an 80-class COCO nano checkpoint to a few labels, that branch starts fresh,
    as in ultralytics' own fine-tune, and the rest is kept. `report`, when
    given, receives "kept_rows" (new class -> old class whose row it starts
    from) and "fresh_class_branch".
    """
    import_ultralytics()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    old, names = _local_checkpoint(weights, None)
    old = old.float()
    old_classes = list(names)
    # The new classes' rows start from a fresh initialisation drawn from a fixed seed, on a forked RNG:
    # the same checkpoint and classes grow the same head (a benchmark rerun, a retried job trains the same
    # model), and the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GROW_SEED)
        new = DetectionModel(old.yaml, nc=len(classes), verbose=False)
    old_state, new_state = old.state_dict(), new.state_dict()
    origin = {name: name for name in classes if name in old_classes} | dict(origin or {})
    moved = [(classes.index(new), old_classes.index(old)) for new, old in origin.items() if new in classes and old in old_classes]
    if not moved:
        raise AdapterError(f"none of the model's classes ({', '.join(old_classes)}) are in the new classes ({', '.join(classes)})")
    new_rows = torch.tensor([n for n, _ in moved])
    old_rows = torch.tensor([o for _, o in moved])
    # a level whose branch feeds its class layer at another width starts fresh, its bias too (its shape alone would pass)
    fresh_levels = {
        key.rsplit(".", 1)[0]
        for key, value in new_state.items()
        if key.endswith(".weight") and _is_class_layer(key, new) and key in old_state and old_state[key].shape[1:] != value.shape[1:]
    }
    fresh_branch = bool(fresh_levels)
    for key, value in new_state.items():
        before = old_state.get(key)
        if before is None:
            continue
        if _is_class_layer(key, new):
            if key.rsplit(".", 1)[0] in fresh_levels:
                continue
            value = value.clone()
            value[new_rows] = before[old_rows]
            new_state[key] = value
        elif before.shape == value.shape:
            new_state[key] = before
    new.load_state_dict(new_state)
    if fresh_branch:
        log.warning(
            "%s: its classification branch is sized for %d classes, the new head's for %d: that branch starts fresh "
            "(no class row is kept); the backbone, neck and box branch are kept", weights, len(old_classes), len(classes),
        )
    if report is not None:
        report["kept_rows"] = {} if fresh_branch else {classes[n]: old_classes[o] for n, o in moved}
        report["fresh_class_branch"] = fresh_branch
    new.names = dict(enumerate(classes))
    new.args = getattr(old, "args", {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": new, "train_args": {}, "epoch": -1}, out)
    return out


def _is_class_layer(key: str, model) -> bool:
    """The last conv of each classification branch of the Detect head (cv3.<level>.2)."""
    import re

    return re.fullmatch(rf"model\.{len(model.model) - 1}\.cv3\.\d+\.2\.(weight|bias)", key) is not None
