"""The train job: annotations from Label Studio -> dataset -> fine-tune -> evaluate -> new version.

The dataset is written by `training_set`; this module trains, evaluates,
versions and decides the promotion.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import split_label_boxes
from .errors import TrainingError
from .evaluation import evaluate
from .jobqueue import STORED_VERSION
from .ls_format import parse_label_config
from .model_store import WORK_PREFIX, ModelStore, ModelVersion
from .progress import publish
from .runtime import LockLostError, Runtime, current_runtime
from .settings import Settings
from .tile_dataset import TrainingTiles
from .training_set import VAL_FULL, annotated_samples, write_training_set

log = logging.getLogger(__name__)

#: Evaluation keeps boxes down to this score: AP is computed over the whole ranking of boxes.
EVAL_SCORE_FLOOR = 0.001


@dataclass(frozen=True)
class TrainedVersion:
    version: ModelVersion
    promoted: bool
    metrics: dict
    baseline: dict | None
    reason: str = ""


def train_project(project: int, *, runtime: Runtime | None = None, progress=None, then_sync: bool = True) -> dict:
    """Train a new version for `project` from its annotations; promote it by PROMOTION; re-sync the queue."""
    from .jobs import _job_progress, publish

    rt = runtime or current_runtime()
    progress = progress or _job_progress
    settings = rt.settings
    with rt.lock(f"train:{project}") as acquired:
        if not acquired:
            return {"status": "skipped", "reason": "a training of this project is already running"}
        config = parse_label_config(rt.ls.project(project).label_config)
        classes = list(config.labels)
        store = ModelStore(settings.model_dir, project)
        left = store.remove_leftovers()  # no other training of the project runs: these are a killed one's
        if left:
            log.warning("project %s: removed what a stopped training left in %s: %s", project, store.dir, ", ".join(left))
        work = store.dir / f"{WORK_PREFIX}{int(time.time() * 1000)}"
        try:
            samples, skipped = annotated_samples(rt, project, config, classes)
            if not samples and skipped["skipped_images"]:
                raise TrainingError(
                    f"project {project}: none of its {skipped['skipped_images']} annotated images could be read "
                    f"({skipped['first_image_error']}): give the backend access to them (ALLOWED_MEDIA_HOSTS, the "
                    "storage's credentials), then press Start Training"
                )
            if not samples:
                raise TrainingError(f"project {project} has no annotations yet: label some images in Label Studio, then press Start Training")
            try:
                dataset, counts = write_training_set(work, samples, classes, TrainingTiles.from_settings(settings))
            except TrainingError as exc:
                raise TrainingError(f"project {project} has {exc}") from None
            counts["skipped_images"] = skipped["skipped_images"]
            counts["skipped_boxes"] += skipped["skipped_boxes"]
            counts.update({k: v for k, v in skipped.items() if k in ("consensus_tasks", "disagreements", "most_disagreement")})
            trained = train_version(
                settings, store, dataset, classes, work, progress=progress, counts=counts, aliases=config.aliases, before_promote=acquired.check
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    version, promote, metrics = trained.version, trained.promoted, trained.metrics
    result = {
        "status": "trained",
        "version": version.name,
        "promoted": promote,
        "promotion_reason": trained.reason,
        "metrics": metrics,
        "previous_metrics_on_same_validation": trained.baseline,
        **counts,
    }
    publish({"evaluation": evaluation_record(version.name, metrics, promote, trained.reason)})
    log.info("project %s: trained %s (promoted: %s, %s) map50 %.3f", project, version.name, promote, trained.reason, metrics["map50"])
    if promote and then_sync:
        result["sync"] = resync_after_promotion(project, rt)
    return result


def resync_after_promotion(project: int, rt: Runtime) -> dict:
    """Rank the queue with the version just promoted. -> the sync's status, or why it failed.

    A failed sync (Label Studio away, say) does not fail the training: the
    version is trained, stored and promoted, and serves /predict; the next
    sync (scheduled, or a request) ranks the queue with it.
    """
    from .jobs import sync_priorities

    try:
        synced = sync_priorities(project, runtime=rt)
    except Exception as exc:
        log.exception("project %s: the sync after the promotion failed; the promoted version stands", project)
        return {"status": "failed", "error": f"{exc}; the new version serves /predict, and the next sync ranks the queue with it"}
    return {k: v for k, v in synced.items() if k in ("status", "model_version", "tasks")}


def train_version(
    settings: Settings,
    store: ModelStore,
    dataset: Path,
    classes: list[str],
    work: Path,
    *,
    progress=None,
    counts: dict | None = None,
    seed: int = 0,
    aliases: dict[str, str] | None = None,
    before_promote=None,
) -> TrainedVersion:
    """Fine-tune the store's current version (or BASE_MODEL) on `dataset`, evaluate, store, promote by PROMOTION.

    `dataset` is a data.yaml from `write_training_set`. New labels grow the
    current model's head, keeping what it knows of the others. A BASE_MODEL
    whose classes are named otherwise keeps the rows of those the label
    config maps to a label: `aliases` (lower-cased model class -> label, the
    config's names and `predicted_values`; default: the labels themselves).
    `before_promote(what, remedy)` runs before a promotion and raises
    LockLostError to prevent it (the project's lock lapsed): the version stays
    stored, not served, and its manifest says so.
    """
    from .adapters import Trainer, adapter_class

    factory = adapter_class(settings)
    if not isinstance(factory, Trainer):
        raise TrainingError(
            f"ADAPTER={settings.adapter} cannot fine-tune: train and export the model outside, then point "
            "MODEL_WEIGHTS at the export (the served model is unchanged)"
        )
    progress = progress or (lambda *args: None)
    current, damaged = store.readable_current()
    if damaged:
        # training again is the way out the error names: the new version is promoted as a first one would be
        log.warning("the served version cannot be read (%s): training as a first version, from the base model", damaged)
    # every label renamed since the served version: nothing of its head maps to the new labels, start as a first training
    from_base = current is None or not set(current.classes) & set(classes)
    base = settings.base_model or factory.fresh_model
    if from_base and hasattr(factory, "local_weights"):
        base = factory.local_weights(settings, base)  # a hub name is fetched (ALLOW_DOWNLOADS) or refused here
    origin = "base model"
    same_classes = current is not None and list(current.classes) == classes
    if same_classes:
        base, origin = str(current.weights), current.name
    elif current is not None and set(current.classes) & set(classes):
        # New (or removed) labels: grow the head, keeping the known classes.
        report: dict = {}
        base = str(factory.grow(str(current.weights), classes, work / "grown", report=report))
        origin = f"{current.name}, head grown to {len(classes)} classes" + grow_note(report, {})
    else:
        # A model brought from earlier work: keep what it knows of the labels it shares with this project.
        if current is not None:
            log.info("the labels share none of %s's classes %s: training from %s", current.name, list(current.classes), base)
        known = factory.base_classes(base)
        rows = inherited_rows(known or [], classes, aliases)
        if known and known != classes and rows:
            report = {}
            grown = str(factory.grow(base, classes, work / "grown", rows, report=report))
            origin = f"{base}, head grown to {len(classes)} classes" + grow_note(report, rows)
            base = grown
    trained_labels = sorted(label for label, boxes in split_label_boxes(dataset, classes).items() if boxes)
    if same_classes and settings.train_continue_steps and continues_labels(current, trained_labels):
        settings = settings.replace(train_min_steps=settings.train_continue_steps)
    progress("train", 0, settings.train_epochs)
    ran = {"epochs": settings.train_epochs}

    def on_epoch(epoch: int, epochs: int, metrics: dict) -> None:
        ran["epochs"] = epochs  # the recipe decides when TRAIN_EPOCHS is 0
        progress("train", epoch, epochs, metrics)

    # what the recipe made of the settings (e.g. TRAIN_MIN_STEPS=0): the manifest says what this version actually got
    plan = factory.training_plan(settings, dataset) if hasattr(factory, "training_plan") else None
    trained = factory.fine_tune(settings, base, dataset, work, seed=seed, on_epoch=on_epoch)
    metrics = evaluate_weights(settings, trained, dataset, classes)
    baseline = evaluate_weights(settings, current.weights, dataset, classes) if same_classes else None
    promote, reason = promotion_decision(settings, metrics, current, baseline, classes)
    manifest = {
        "base": (settings.base_model or factory.fresh_model) if origin == "base model" else origin,
        "epochs": ran["epochs"],
        "recipe": settings.train_recipe,
        **({"plan": plan} if plan else {}),
        "image_size": settings.image_size,
        "label_config_labels": classes,
        # the labels it learnt from boxes of: the next fine-tune continues it with fewer steps only if it adds none
        "trained_labels": trained_labels,
        **(counts or {}),
        "promotion": {
            "promoted": promote,
            "reason": reason,
            "compared_with": current.name if baseline is not None else None,
            "baseline": None if baseline is None else {k: baseline[k] for k in ("map", "map50", "images", "boxes")},
        },
    }
    version = store.add(trained, classes, metrics, manifest)
    _publish_stored(store, version.name, served=False)
    if promote:
        if before_promote is not None:
            promote_by_hand = f"ale models --project {store.dir.name} --promote {version.name}"
            try:
                before_promote(
                    f"promoting {version.name} (trained and stored; `ale models` lists it)",
                    f"{version.name} stays stored, not served: serve it with `{promote_by_hand}` once no training of the "
                    "project runs, or train again",
                )
            except LockLostError:
                # /versions and `ale models` show the stored record: it must not say promoted
                refused = {
                    "promoted": False,
                    "reason": f"not promoted: the project's training lock was lost, or could not be confirmed, before the "
                    f"promotion (another training may have run); by its evaluation it would have been ({reason}); "
                    f"`{promote_by_hand}` serves it",
                }
                try:
                    store.record_promotion(version.name, manifest["promotion"] | refused)
                except Exception:  # the lock's error says what happened; this one only says the record could not
                    log.exception("%s: could not record in its manifest that it was not promoted", version.name)
                raise
        store.promote(version.name)
        _publish_stored(store, version.name, served=True)
    return TrainedVersion(version, promote, metrics, baseline, reason)


def _publish_stored(store: ModelStore, name: str, served: bool) -> None:
    """Inside a job: record in its meta that `name` is stored (and served), for the error of a job whose worker dies
    afterwards (`jobqueue.abandoned_message`). Best effort: the version is stored whether or not the record is."""
    try:
        publish({STORED_VERSION: {"project": int(store.dir.name), "version": name, "served": served}})
    except Exception as exc:  # Redis away for a moment: the promotion's lock check decides what happens next
        log.warning("could not record %s as stored in the job's meta: %s", name, type(exc).__name__)


def continues_labels(current: ModelVersion, trained_labels: list[str]) -> bool:
    """True when `current` was trained on boxes of every label in `trained_labels`.

    A head row that has never seen a box of its label (a label added to the
    config, or a new class before its first boxes) must be learnt: that
    fine-tune takes the recipe's full steps, not TRAIN_CONTINUE_STEPS. A
    version stored before the manifest recorded its labels counts as not.
    """
    known = current.manifest.get("trained_labels")
    return known is not None and set(trained_labels) <= set(known)


def inherited_rows(known: list[str], classes: list[str], aliases: dict[str, str] | None = None) -> dict[str, str]:
    """{label: model class whose classifier row it starts from}: by name, or through the label config's aliases.

    The first model class naming a label wins (its order in the checkpoint).
    """
    aliases = aliases or {name.lower(): name for name in classes}
    rows: dict[str, str] = {}
    for name in known:
        label = aliases.get(name.lower())
        if label in classes:
            rows.setdefault(label, name)
    return rows


def evaluation_record(version: str, metrics: dict, promoted: bool, reason: str) -> dict:
    """What a train job publishes once its version is evaluated: the stored figures, not the trainer's own."""
    return {
        "version": version,
        "map50": metrics["map50"],
        "map": metrics["map"],
        "images": metrics["images"],
        "boxes": metrics["boxes"],
        "promoted": promoted,
        "reason": reason,
        "source": "the backend's evaluation of the stored version (pycocotools), as /versions shows it",
    }


def promotion_decision(settings: Settings, metrics: dict, current: ModelVersion | None, baseline: dict | None, classes: list[str]) -> tuple[bool, str]:
    """Whether a new version with `metrics` replaces `current` (evaluated as `baseline` on the same images). -> (promote, why)."""
    size = f"{metrics['images']} validation images ({metrics['boxes']} boxes)"
    if settings.promotion == "always":
        return True, "PROMOTION=always"
    if current is None:
        return True, "the project's first version"
    if baseline is None:
        return True, f"the labels changed ({', '.join(current.classes)} -> {', '.join(classes)}): the versions cannot be compared"
    if metrics["images"] < settings.promotion_min_images:
        return True, (
            f"only {size}, fewer than PROMOTION_MIN_IMAGES={settings.promotion_min_images}: too few to compare on, so promoted "
            "without the if-not-worse check; annotate more images to turn it on"
        )
    if not metrics["boxes"]:
        # AP is undefined without a box to find: 0.000 >= 0.000 would pass whatever each version predicts there
        return True, f"{size}: without a box, mAP cannot compare the versions, so promoted without the if-not-worse check"
    if metrics["map50"] >= baseline["map50"]:
        return True, f"mAP50 {metrics['map50']:.3f} >= {current.name}'s {baseline['map50']:.3f} on the same {size}"
    return False, f"mAP50 {metrics['map50']:.3f} < {current.name}'s {baseline['map50']:.3f} on the same {size}: {current.name} keeps serving"


def grow_note(report: dict, rows: dict[str, str]) -> str:
    """What a grown head kept, for the manifest's "base": ", Kittiwake from bird" per label started from another's row."""
    kept = report.get("kept_rows", rows)
    note = "".join(f", {label} from {old}" for label, old in kept.items() if label != old)
    if report.get("fresh_class_branch"):
        note += ", classification branch fresh (sized for another class count)"
    return note


def evaluate_weights(settings: Settings, weights, dataset: Path, classes: list[str], split: str | None = None) -> dict:
    """COCO and VOC metrics of `weights` on a split of a data.yaml dataset (default: whole validation images)."""
    from .datasets import read_yolo_split

    if split is None:
        split = VAL_FULL if (Path(dataset).parent / "images" / VAL_FULL).is_dir() else "val"

    names, items = read_yolo_split(dataset, split)
    return evaluate_items(settings, weights, items, names)


def evaluate_items(settings: Settings, weights, items, names: list[str]) -> dict:
    """COCO and VOC metrics of `weights` on labelled images, with the number of images and boxes.

    Predictions are what an annotator would be shown (`serving.shown_detections`)
    with the score threshold lowered to EVAL_SCORE_FLOOR: average precision
    needs the whole ranking of boxes, not only those above SCORE_THRESHOLD.
    """
    from .adapters import load_adapter
    from .datasets import predict_items
    from .serving import ServingFilters, shown_detections

    settings = settings.replace(model_weights=str(weights), model_classes=(), score_threshold=EVAL_SCORE_FLOOR)
    adapter = load_adapter(settings)
    if list(adapter.classes) != list(names):
        raise TrainingError(f"model {adapter.version} predicts {list(adapter.classes)}, the evaluation set has {list(names)}")
    shown = np.ones(len(names), dtype=bool)
    filters = ServingFilters.from_settings(settings)
    predicted = predict_items(adapter, items, settings.predict_batch_size, settings.predict_chunk_pixels)
    predictions = [shown_detections(d, shown, filters) for d in predicted]
    truths = [item.truth for item in items]
    if not any(len(t.labels) for t in truths):
        return {"images": len(truths), "boxes": 0, "map": 0.0, "map50": 0.0, "map75": 0.0, "voc07_map50": 0.0, "voc12_map50": 0.0, "per_class": {}}
    return evaluate(truths, predictions, names)
