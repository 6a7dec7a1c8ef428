"""The train job: annotations from Label Studio -> dataset -> fine-tune -> evaluate -> new version.

The dataset is written by `training_set`; this module trains, evaluates,
versions and decides the promotion.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .datasets import split_label_boxes
from .errors import TrainingError
from .detections import Detections
from .evaluation import GroundTruth, evaluate
from .jobqueue import STORED_VERSION
from .label_rows import class_labels, continues_labels, grow_note, inherited_rows
from .ls_format import parse_label_config
from .model_store import WORK_PREFIX, ModelStore, ModelVersion
from .progress import publish
from .promotion import evaluation_record, promotion_decision
from .runtime import LockLostError, Runtime, current_runtime
from .settings import Settings
from .tile_dataset import TrainingTiles
from .training_set import VAL_FULL, annotated_samples, not_trained_note, write_training_set

log = logging.getLogger(__name__)

#: Evaluation keeps boxes down to this score: AP is computed over the whole ranking of boxes.
EVAL_SCORE_FLOOR = 0.001
#: What the training set reports beside its counts, into the job's result and the version's manifest.
REPORTED = ("consensus_tasks", "disagreements", "most_disagreement", "ignored_regions", "ground_truth_tasks")


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
        # a stopped training's files; one still running (its lock lapsed) keeps touching its own, which stay
        left = store.remove_leftovers()
        if left:
            log.warning("project %s: removed what a stopped training left in %s: %s", project, store.dir, ", ".join(left))
        work = store.dir / f"{WORK_PREFIX}{int(time.time() * 1000)}"
        try:
            with store.kept_in_use(work):
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
                    tiles = TrainingTiles.from_settings(settings)
                    dataset, counts = write_training_set(work, samples, classes, tiles, not_trained_note(skipped))
                except TrainingError as exc:
                    raise TrainingError(f"project {project} has {exc}") from None
                counts["skipped_images"] = skipped["skipped_images"]
                counts["skipped_boxes"] += skipped["skipped_boxes"]
                counts.update({k: v for k, v in skipped.items() if k in REPORTED})
                trained = train_version(
                    settings, store, dataset, classes, work, progress=progress, counts=counts, aliases=config.aliases,
                    names=config.names, before_promote=acquired.check,
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


@dataclass(frozen=True)
class Served:
    """What serves the project before a training, as its new version is compared with it.

    columns: each of its classes that means a label now -> that label (by name, a label's alias or value, or
    predicted_values). version: the stored version; None for MODEL_WEIGHTS (a project without a version of its own).
    """

    name: str
    weights: str
    classes: tuple[str, ...]
    columns: dict[str, str]
    version: ModelVersion | None = None

    def labels(self, classes: list[str]) -> list[str]:
        """The labels it knows, in the label config's order."""
        return [label for label in classes if label in set(self.columns.values())]

    def same_labels(self, classes: list[str]) -> bool:
        """Whether its classes are the labels one to one, under other names or in another order."""
        return len(self.columns) == len(self.classes) == len(classes) == len(set(self.columns.values()))


@dataclass(frozen=True)
class Start:
    """Where a fine-tune starts (`weights`; the manifest's `origin`) and what it is compared with (None: a first version)."""

    weights: str
    origin: str
    served: Served | None = None


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
    names: dict[str, str] | None = None,
    before_promote=None,
) -> TrainedVersion:
    """Fine-tune the store's current version (or BASE_MODEL) on `dataset` (a data.yaml from `write_training_set`),
    evaluate, store, promote by PROMOTION.

    Model classes are matched to the labels by `names` (a label's value and alias -> the label) and `aliases`
    (lower-cased model class -> label: own names, then `predicted_values`); default: the labels themselves.
    `before_promote(what, remedy)` runs before a promotion and raises LockLostError to prevent it (the
    project's lock lapsed): the version stays stored, not served, and its manifest says so.
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
        log.warning("the served version cannot be read (%s): training as a first version", damaged)
    start = starting_point(settings, factory, current, classes, work, aliases, names)
    # with the served version unreadable nothing serves the project (not MODEL_WEIGHTS either): no baseline to beat
    served = None if damaged else start.served
    trained_labels = sorted(label for label, boxes in split_label_boxes(dataset, classes).items() if boxes)
    if (
        settings.train_continue_steps and served is not None and served.version is not None and served.same_labels(classes)
        and continues_labels(served.version, trained_labels, served.columns)
    ):  # fmt: skip
        settings = settings.replace(train_min_steps=settings.train_continue_steps)
    progress("train", 0, settings.train_epochs)
    ran = {"epochs": settings.train_epochs}

    def on_epoch(epoch: int, epochs: int, metrics: dict) -> None:
        ran["epochs"] = epochs  # the recipe decides when TRAIN_EPOCHS is 0
        progress("train", epoch, epochs, metrics)

    # what the recipe made of the settings (e.g. TRAIN_MIN_STEPS=0): the manifest says what this version actually got
    plan = factory.training_plan(settings, dataset) if hasattr(factory, "training_plan") else None
    trained = factory.fine_tune(settings, start.weights, dataset, work, seed=seed, on_epoch=on_epoch)
    metrics = evaluate_weights(settings, trained, dataset, classes)
    shared = served.labels(classes) if served is not None else []
    baseline = compared = None
    if shared:
        # the served model's columns put under the labels they mean now; the new version's on the labels both know
        same = list(served.classes) == list(classes)
        baseline = evaluate_weights(settings, served.weights, dataset, classes, columns=None if same else served.columns)
        if len(shared) == len(classes):
            compared = metrics
        else:
            compared = evaluate_weights(settings, trained, dataset, classes, columns={k: k for k in shared})
    record = {
        "compared_with": served.name if baseline is not None else None,
        "baseline": None if baseline is None else {k: baseline[k] for k in ("map", "map50", "images", "boxes")},
        **({"labels_compared": shared} if baseline is not None and len(shared) < len(classes) else {}),
    }
    manifest = {
        "base": start.origin,
        "epochs": ran["epochs"],
        "recipe": settings.train_recipe,
        **({"plan": plan} if plan else {}),
        "image_size": settings.image_size,
        "label_config_labels": classes,
        # the labels it learnt from boxes of: the next fine-tune continues it with fewer steps only if it adds none
        "trained_labels": trained_labels,
        **(counts or {}),
    }
    decided: dict = {}

    def manifest_for(name: str) -> dict:
        """The manifest of the version stored as `name`: its promotion decision names the command that serves it."""
        by_hand = f"ale models --project {store.dir.name} --promote {name}"
        promote, reason = promotion_decision(
            settings, metrics, served, baseline, classes, compared=compared, shared=shared, by_hand=by_hand
        )
        if damaged and settings.promotion != "always":
            reason = f"the served version cannot be read ({damaged}): promoted as the project's first version would be"
        decided.update(promote=promote, reason=reason, by_hand=by_hand, record={"promoted": promote, "reason": reason} | record)
        if not promote:
            return manifest | {"promotion": decided["record"]}
        # served only once the pointer switched: a training stopped before that must not leave a record saying it is
        pending = f"to be served ({reason}); a record still saying so is of a training stopped before serving it: `{by_hand}` serves it"
        return manifest | {"promotion": decided["record"] | {"promoted": False, "pending": True, "reason": pending}}

    version = store.add(trained, classes, metrics, manifest_for)
    promote, reason, by_hand = decided["promote"], decided["reason"], decided["by_hand"]
    _publish_stored(store, version.name, served=False)
    if promote:
        if before_promote is not None:
            try:
                before_promote(
                    f"promoting {version.name} (trained and stored; `ale models` lists it)",
                    f"{version.name} stays stored, not served: serve it with `{by_hand}` once no training of the "
                    "project runs, or train again",
                )
            except LockLostError:
                # /versions and `ale models` show the stored record: it must not say promoted
                refused = {
                    "promoted": False,
                    "reason": f"not promoted: the project's training lock was lost, or could not be confirmed, before the "
                    f"promotion (another training may have run); by its evaluation it would have been ({reason}); "
                    f"`{by_hand}` serves it",
                }
                try:
                    store.record_promotion(version.name, decided["record"] | refused)
                except Exception:  # the lock's error says what happened; this one only says the record could not
                    log.exception("%s: could not record in its manifest that it was not promoted", version.name)
                raise
        store.promote(version.name)
        try:
            version = store.record_promotion(version.name, decided["record"])
        except OSError:  # served all the same; only its record is behind ("to be served")
            log.exception("%s is served, but its manifest could not record the promotion", version.name)
        _publish_stored(store, version.name, served=True)
    return TrainedVersion(version, promote, metrics, baseline, reason)


def starting_point(
    settings: Settings, factory, current: ModelVersion | None, classes: list[str], work: Path, aliases=None, names=None
) -> Start:
    """Where a fine-tune for `classes` starts, and what it is compared with.

    The served version continues when any of its classes means a label now; its head is grown (each label
    from its class's row) unless its classes are the labels as they are. Otherwise, as a first version:
    BASE_MODEL; unset, a trained MODEL_WEIGHTS whose classes mean labels (what the project is served, so
    also the version's baseline); else the adapter's fresh model. Such a base's head is grown to the labels
    it has a class for.
    """
    served = None
    if current is not None:
        columns = class_labels(current.classes, classes, aliases, names)
        served = Served(current.name, str(current.weights), tuple(current.classes), columns, current)
        if list(current.classes) == list(classes):
            return Start(str(current.weights), current.name, served)
        if served.columns:
            rows = inherited_rows(current.classes, classes, aliases, names)
            report: dict = {}
            grown = str(factory.grow(str(current.weights), classes, work / "grown", rows, report=report))
            how = "head's rows moved to the labels" if served.same_labels(classes) else f"head grown to {len(classes)} classes"
            return Start(grown, f"{current.name}, {how}" + grow_note(report, rows), served)
        # every label renamed, none by an alias: nothing of its head maps to them
        log.info("the labels share none of %s's classes %s: training as a first version", current.name, list(current.classes))
    if current is None and not settings.base_model:
        served = served_checkpoint(settings, factory, classes, aliases, names)
    if served is not None and served.version is None:  # MODEL_WEIGHTS, already fetched
        base, origin, known = served.weights, settings.model_weights, list(served.classes)
    else:
        base = origin = settings.base_model or factory.fresh_model
        if hasattr(factory, "local_weights"):
            base = factory.local_weights(settings, base)  # a hub name is fetched (ALLOW_DOWNLOADS) or refused here
        known = factory.base_classes(base)
    rows = inherited_rows(known or [], classes, aliases, names)
    if known and known != classes and rows:
        report = {}
        grown = str(factory.grow(base, classes, work / "grown", rows, report=report))
        return Start(grown, f"{origin}, head grown to {len(classes)} classes" + grow_note(report, rows), served)
    return Start(str(base), origin, served)


def served_checkpoint(settings: Settings, factory, classes: list[str], aliases=None, names=None) -> Served | None:
    """MODEL_WEIGHTS as a project without a version of its own is served by it: when it is a trained model the
    adapter can fine-tune (its classes known) and some of its classes mean labels. None otherwise."""
    try:
        weights = settings.model_weights
        if hasattr(factory, "local_weights"):
            weights = factory.local_weights(settings, weights, "MODEL_WEIGHTS")
        known = factory.base_classes(weights)
    except Exception as exc:  # serving reports an unreadable MODEL_WEIGHTS; here it is only not a start
        log.warning("MODEL_WEIGHTS=%s could not be read as a checkpoint to train from (%s): training from %s",
                    settings.model_weights, exc, factory.fresh_model)  # fmt: skip
        return None
    columns = class_labels(known or [], classes, aliases, names)
    return Served(f"MODEL_WEIGHTS={settings.model_weights}", str(weights), tuple(known), columns) if columns else None


def _publish_stored(store: ModelStore, name: str, served: bool) -> None:
    """Inside a job: record in its meta that `name` is stored (and served), for the error of a job whose worker dies
    afterwards (`jobqueue.abandoned_message`). Best effort: the version is stored whether or not the record is."""
    try:
        publish({STORED_VERSION: {"project": int(store.dir.name), "version": name, "served": served}})
    except Exception as exc:  # Redis away for a moment: the promotion's lock check decides what happens next
        log.warning("could not record %s as stored in the job's meta: %s", name, type(exc).__name__)


def evaluate_weights(settings: Settings, weights, dataset: Path, classes: list[str], split: str | None = None, columns=None) -> dict:
    """COCO and VOC metrics of `weights` on a split of a data.yaml dataset (default: whole validation images).

    `columns`: {model class: label} for a model whose classes are not the dataset's (`evaluate_items`).
    """
    from .datasets import read_yolo_split

    if split is None:
        split = VAL_FULL if (Path(dataset).parent / "images" / VAL_FULL).is_dir() else "val"

    names, items = read_yolo_split(dataset, split)
    if columns is None:
        return evaluate_items(settings, weights, items, names)
    return evaluate_items(settings, weights, items, names, columns)


def evaluate_items(settings: Settings, weights, items, names: list[str], columns: dict[str, str] | None = None) -> dict:
    """COCO and VOC metrics of `weights` on labelled images, with the number of images and boxes.

    Predictions are what an annotator would be shown (`serving.shown_detections`)
    with the score threshold lowered to EVAL_SCORE_FLOOR: average precision
    needs the whole ranking of boxes, not only those above SCORE_THRESHOLD.
    `columns` maps model classes to the labels (`names`) they are shown as, as
    serving does for a model trained before labels were renamed, reordered or
    added; only those labels are evaluated (the others' boxes leave the truth).
    """
    from .adapters import load_adapter
    from .datasets import predict_items
    from .serving import ServingFilters, shown_detections

    settings = settings.replace(model_weights=str(weights), model_classes=(), score_threshold=EVAL_SCORE_FLOOR)
    adapter = load_adapter(settings)
    if columns is None:
        if list(adapter.classes) != list(names):
            raise TrainingError(f"model {adapter.version} predicts {list(adapter.classes)}, the evaluation set has {list(names)}")
        groups = np.arange(len(names))
    else:
        groups = np.array([list(names).index(columns[c]) if columns.get(c) in names else -1 for c in adapter.classes], dtype=np.int64)
        evaluated = np.zeros(len(names), dtype=bool)
        evaluated[groups[groups >= 0]] = True
        items = [replace(item, truth=_truth_of(item.truth, evaluated)) for item in items]
    filters = ServingFilters.from_settings(settings)
    predicted = predict_items(adapter, items, settings.predict_batch_size, settings.predict_chunk_pixels)
    predictions = [shown_detections(d, groups, filters) for d in predicted]
    if columns is not None:
        predictions = [_as_labels(d, groups, len(names)) for d in predictions]
    truths = [item.truth for item in items]
    if not any(len(t.labels) for t in truths):
        return {"images": len(truths), "boxes": 0, "map": 0.0, "map50": 0.0, "map75": 0.0, "voc07_map50": 0.0, "voc12_map50": 0.0, "per_class": {}}
    return evaluate(truths, predictions, names)


def _truth_of(truth, evaluated: np.ndarray):
    """A GroundTruth narrowed to the boxes of the labels `evaluated` marks."""
    keep = evaluated[truth.labels]
    return GroundTruth(truth.xyxy[keep], truth.labels[keep], truth.image_size, truth.difficult[keep])


def _as_labels(detections, groups: np.ndarray, labels: int):
    """Shown detections of a model -> the same boxes with label columns (a label's score: its classes' highest)."""
    probs = np.zeros((len(detections), labels))
    for column, label in enumerate(groups):
        if label >= 0:
            probs[:, label] = np.maximum(probs[:, label], detections.class_probs[:, column])
    return Detections(detections.xyxy, probs, detections.image_size, groups[detections.labels], detections.scores, detections.background)
