"""The training set: a project's annotated tasks -> cached images and boxes -> an ultralytics dataset folder.

The validation split is decided per task by a hash of its id, so a task stays
in the same split across versions and versions are compared on the same images.
"""

from __future__ import annotations

import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .boxes import clip_boxes
from .consensus import consensus
from .errors import AleError, TrainingError
from .ls_format import rectangle_to_xyxy, task_image_url
from .media import MediaFetcher, read_image, turned_size, turning, use_own_pixel_limit
from .model_store import ModelStore
from .runtime import Runtime
from .tile_dataset import TrainingTiles, write_tiles, yolo_lines

log = logging.getLogger(__name__)

#: Share of annotated tasks kept for validation (by task-id hash, stable across versions).
VAL_PERCENT = 20
MIN_VAL_TASKS = 1
MIN_TRAIN_TASKS = 2
#: The split of whole validation images (tiled at evaluation as at serving); `val` may hold tiles.
VAL_FULL = "val_full"
#: Where `write_training_set` writes the upright copies of images stored turned (EXIF orientation).
UPRIGHT = "upright"
#: Tasks a training reports by their number of annotator disagreements, at most.
MOST_DISAGREEMENT = 10
#: Result types that mark out an object but are not a <RectangleLabels> rectangle (counted as not trained on).
REGION_SHAPES = ("rectangle", "polygon", "brush", "keypoint", "ellipse", "bitmask", "vector")
#: What `ignored_regions` counts a label of a region after its first under (one box trains as one label).
EXTRA_LABELS = "labels after a region's first"


def is_validation(task_id: int) -> bool:
    return zlib.crc32(str(task_id).encode()) % 100 < VAL_PERCENT


def with_a_validation_task(picked: list[int], candidates) -> list[int]:
    """Task ids `picked`, the last swapped for the first validation-split id of `candidates` not picked, if none is one.

    Start Training needs a validation image, and the split is by task id: a
    dozen ids miss it about one time in fourteen. Unchanged when no candidate is one.
    """
    if any(is_validation(t) for t in picked):
        return list(picked)
    spare = next((int(t) for t in candidates if is_validation(int(t)) and int(t) not in picked), None)
    return list(picked) if spare is None else list(picked[:-1]) + [spare]


@dataclass(frozen=True)
class TrainingSample:
    """One annotated image: `xyxy` (n, 4) pixels, `labels` (n,) indices into the class names."""

    task_id: int
    image: Path
    xyxy: np.ndarray
    labels: np.ndarray
    #: the file holds the image as shown (Start Training's cache, written upright): its EXIF is not looked at,
    #: which for a PNG would decode the whole frame
    upright: bool = False


def cached_image_size(cached: Path, fetch) -> tuple[int, int]:
    """The size of a task's image in the training cache, fetched (`fetch() -> PIL image`) if absent. -> (width, height).

    Written whole or not at all (flushed before its rename); a cached file
    that does not open anyway (copied in damaged, say) is fetched again.
    """
    use_own_pixel_limit()  # the frame passed MAX_IMAGE_PIXELS when it was fetched; Pillow's own limit may be lower
    if cached.exists():
        try:
            with Image.open(cached) as image:
                return image.size
        except (OSError, SyntaxError) as exc:  # PIL's errors for a file it cannot identify or parse
            log.warning("cached training image %s does not open (%s); fetching it again", cached, exc)
            cached.unlink(missing_ok=True)
    temp = cached.with_suffix(".tmp.png")
    image = fetch()
    with temp.open("wb") as f:
        image.save(f, format="PNG", compress_level=1)  # a 45 MP frame: seconds, not tens
        f.flush()
        os.fsync(f.fileno())
    temp.replace(cached)
    return image.size


def annotated_samples(rt: Runtime, project: int, config, classes: list[str]) -> tuple[list[TrainingSample], dict]:
    """The project's annotated tasks as samples. Images are cached per task and image URL across runs (images/<task>/<url crc>.png).

    The URL is in the name: a task whose image was changed in LS (or another LS reusing task ids in this
    MODEL_DIR) is fetched again, never trained with the old pixels under the new boxes. A task whose
    annotations hold one marked as ground truth (a reviewer's) trains on it alone (`trained_results`);
    otherwise several annotators' boxes are merged (consensus.py). Regions not trained on are counted
    by why (`ignored_regions`) and logged.
    """
    cache = ModelStore(rt.settings.model_dir, project).dir / "images"
    cache.mkdir(parents=True, exist_ok=True)
    fetcher = MediaFetcher(rt.settings, rt.ls)
    skipped: dict = {"skipped_images": 0, "skipped_boxes": 0, "ignored_regions": {}}
    disagreements: dict[int, int] = {}
    ground_truth_tasks = 0
    samples = []
    for task, listed in rt.ls.annotated_tasks(project):
        try:
            url = task_image_url({"id": task.id, "data": task.data}, config)
            cached = cache / str(task.id) / f"{zlib.crc32(url.encode()):08x}.png"
            if not cached.exists():
                _drop_other_images(cache, task.id)
            size = cached_image_size(cached, lambda: fetcher.fetch(url, task.id, project))
        except AleError as exc:
            log.warning("project %s task %s: image skipped for training: %s", project, task.id, exc)
            skipped["skipped_images"] += 1
            skipped.setdefault("first_image_error", f"task {task.id}: {exc}")
            continue
        results, reviewed = trained_results(listed)
        ground_truth_tasks += reviewed
        annotations = [_result_boxes(result, config, classes, size, skipped) for result in results]
        if len(annotations) == 1:
            boxes, labels = annotations[0]
        else:  # several annotators: what a majority of them drew (consensus.py)
            agreed = consensus(annotations)
            boxes, labels = agreed.xyxy, agreed.labels
            disagreements[task.id] = agreed.disagreements
        boxes, labels = np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)
        samples.append(TrainingSample(task.id, cached, boxes, labels, upright=True))
    if disagreements:
        skipped["consensus_tasks"] = len(disagreements)
        skipped["disagreements"] = sum(disagreements.values())
        worst = sorted(disagreements.items(), key=lambda item: (-item[1], item[0]))[:MOST_DISAGREEMENT]
        skipped["most_disagreement"] = [{"task": t, "disagreements": n} for t, n in worst if n]
    if ground_truth_tasks:
        skipped["ground_truth_tasks"] = ground_truth_tasks
    if skipped["ignored_regions"]:
        log.warning(
            "project %s: regions not trained on (%s): training reads the rectangles of <RectangleLabels name=\"%s\">, one "
            "label each", project, regions_note(skipped["ignored_regions"]), config.from_name,
        )
    return samples, skipped


def trained_results(annotations: list[dict]) -> tuple[list[list[dict]], bool]:
    """A task's annotations as the LS client lists them ({"result", "ground_truth"}, oldest first) -> (the results
    it trains on, whether a ground-truth annotation decided).

    The annotation a reviewer marks as ground truth (LS keeps one a task) is the task's answer, not one vote
    among those it corrects. Several marked are not such a choice: LS marks every annotation imported with
    its task as ground truth unless told otherwise, so then every annotator's count, merged by consensus.
    """
    truth = [a for a in annotations if a.get("ground_truth", False)]
    if len(truth) == 1 and len(annotations) > 1:
        return [list(truth[0].get("result") or [])], True
    return [list(a.get("result") or []) for a in annotations], False


def regions_note(ignored: dict[str, int]) -> str:
    """{why: count} -> "from_name tag: 4, polygonlabels: 2"."""
    return ", ".join(f"{why}: {n}" for why, n in sorted(ignored.items()))


def not_trained_note(skipped: dict) -> str:
    """What `annotated_samples` left out of the boxes, for an error: "" when nothing was."""
    parts = [f"regions not trained on: {regions_note(skipped['ignored_regions'])}"] if skipped.get("ignored_regions") else []
    if skipped.get("skipped_boxes"):
        parts.append(f"{skipped['skipped_boxes']} boxes skipped, their label not in the label config or their values unreadable")
    return "; ".join(parts)


def _drop_other_images(cache: Path, task_id: int) -> None:
    """Before a task's image is fetched: its images cached under other URLs (and one named by the task alone) go."""
    (cache / f"{task_id}.png").unlink(missing_ok=True)  # named by the task alone: which image it holds is not known
    folder = cache / str(task_id)
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():  # one task's folder: a file or two, not the whole cache
        old.unlink(missing_ok=True)


def _result_boxes(result: list[dict], config, classes: list[str], size, skipped: dict) -> tuple[np.ndarray, np.ndarray]:
    """One annotation's rectangles -> ((k, 4) pixel boxes, (k,) class indices); others are counted as skipped.

    size: (width, height) of the image trained on; the percentages are taken of it, not of the
    original_width/height the result recorded (`rectangle_to_xyxy`). A result's label is
    resolved by the label's own names (`config.names`): one stored under a label's value
    before an alias was added is that label's, as LS's editor shows it.
    """
    boxes, labels = [], []
    ignored = skipped.setdefault("ignored_regions", {})
    for region in result:
        if not isinstance(region, dict) or region.get("type") != "rectanglelabels" or region.get("from_name") != config.from_name:
            why = _not_a_box(region, config)
            if why:
                ignored[why] = ignored.get(why, 0) + 1
            continue
        chosen = (region.get("value") or {}).get("rectanglelabels")
        if isinstance(chosen, list) and len(chosen) > 1:  # LS's choice="multiple": the box trains as its first label
            ignored[EXTRA_LABELS] = ignored.get(EXTRA_LABELS, 0) + len(chosen) - 1
        try:
            box, label = rectangle_to_xyxy(region, size)
        except AleError:
            skipped["skipped_boxes"] += 1
            continue
        label = config.names.get(label, label)
        if label not in classes:
            skipped["skipped_boxes"] += 1
            continue
        boxes.append(box)
        labels.append(classes.index(label))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _not_a_box(region, config) -> str | None:
    """Why a result that is not one of the config's rectangles is not trained on, for counting; None for one that
    marks out no object (a choice, a text field), which is not counted."""
    if not isinstance(region, dict):
        return None
    kind = str(region.get("type") or "")
    if kind == "rectanglelabels":
        return f"from_name {region.get('from_name')}"
    return kind if kind.endswith("labels") or kind in REGION_SHAPES else None


def write_training_set(
    work: Path, samples: list[TrainingSample], classes: list[str], tiling: TrainingTiles | None = None, not_trained: str = ""
) -> tuple[Path, dict]:
    """Write an ultralytics dataset under `work`, split by `is_validation(task_id)`. -> (data.yaml, counts).

    Boxes are clipped to the image; boxes with no area left are skipped and counted. A training split
    without a box is refused: it would teach every object to be background. `not_trained` (what the
    annotations held that is not trained on) goes into that error.
    An image that `tiling` applies to is cut into tiles (`tile_dataset`). The
    validation images also go, whole, to a `val_full` split: a version is
    evaluated on them as a user's images are predicted, tiled where they are large.
    """
    counts = {"train_images": 0, "val_images": 0, "boxes": 0, "skipped_boxes": 0, "tiled_images": 0, "tiles": 0}
    train_boxes = 0
    for split in ("train", "val", VAL_FULL):
        (work / "images" / split).mkdir(parents=True, exist_ok=True)
        (work / "labels" / split).mkdir(parents=True, exist_ok=True)
    for sample in samples:
        image_path, (width, height) = _shown_image(sample, work)
        xyxy = np.asarray(sample.xyxy, dtype=np.float64).reshape(-1, 4)
        clipped = clip_boxes(xyxy, (0, 0, width, height))
        kept = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        counts["skipped_boxes"] += int((~kept).sum())
        clipped, labels = clipped[kept], np.asarray(sample.labels).reshape(-1)[kept]
        lines = yolo_lines(clipped, labels, width, height)
        split = "val" if is_validation(sample.task_id) else "train"
        if tiling is not None and tiling.tiles.applies((width, height)):
            made = write_tiles(image_path, clipped, labels, work / "images" / split, work / "labels" / split, str(sample.task_id), tiling)
            counts["tiled_images"] += 1
            counts["tiles"] += made["tiles"]
        else:
            shutil.copyfile(image_path, work / "images" / split / f"{sample.task_id}{image_path.suffix}")
            (work / "labels" / split / f"{sample.task_id}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        if split == "val":
            _link_or_copy(image_path, work / "images" / VAL_FULL / f"{sample.task_id}{image_path.suffix}")
            (work / "labels" / VAL_FULL / f"{sample.task_id}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        counts[f"{split}_images"] += 1
        counts["boxes"] += len(lines)
        train_boxes += len(lines) if split == "train" else 0
    if counts["val_images"] < MIN_VAL_TASKS or counts["train_images"] < MIN_TRAIN_TASKS:
        raise TrainingError(
            f"{counts['train_images']} training and {counts['val_images']} validation images; "
            f"annotate more images (about 1 in {100 // VAL_PERCENT} goes to validation) and try again"
        )
    if not train_boxes:
        raise TrainingError(
            f"no box in its {counts['train_images']} training images{f' ({not_trained})' if not_trained else ''}: draw "
            "each object as a rectangle of the label config's <RectangleLabels>, with one of its labels, then press Start Training"
        )
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    (work / "data.yaml").write_text(f"path: {work.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return work / "data.yaml", counts


def _shown_image(sample: TrainingSample, work: Path) -> tuple[Path, tuple[int, int]]:
    """The sample's image as shown to the annotator, whose pixels its boxes are in, and its (width, height).

    The file itself, or, for a photo stored turned (EXIF orientation: a user's dataset; the server's cache holds
    upright PNGs), an upright PNG copy under `work`: the tiles and the model must not see it as stored.
    """
    with Image.open(sample.image) as image:
        method = None if sample.upright else turning(image)
        if method is None:
            return sample.image, image.size
        shown = turned_size(image.size, method)
    copy = work / UPRIGHT / f"{sample.task_id}.png"
    copy.parent.mkdir(parents=True, exist_ok=True)
    read_image(sample.image).save(copy, compress_level=1)
    return copy, shown


def _link_or_copy(source: Path, target: Path) -> None:
    # a folder written before (a run killed part-way) may hold the target already, even as a link to `source`
    target.unlink(missing_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:  # another file system
        shutil.copyfile(source, target)
