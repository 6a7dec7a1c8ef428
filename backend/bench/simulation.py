"""Simulated active-learning cycles: the ground truth plays the annotator.

Per seed, an initial labelled set is drawn from the pool (without any image of
the new class, when there is one: the ALE paper's scenario of a class the
first model never saw) and a first model is trained on it. Then, for every
policy, starting from that same model, each cycle:

1. predicts the unlabeled pool with the served version (same adapter and
   serving filters as /predict and the sync),
2. ranks it with the policy and the batch extras (same `select_order` as the
   priority sync) and "labels" the first `budget` images from the ground truth
   (with `budget_cost`, the queue up to that annotation cost: see `budget`),
3. trains a new version on everything labelled so far (same `train_version`
   as Start Training: fine-tune from the current version, validation split
   by task id, promotion by PROMOTION),
4. evaluates the served version on a fixed evaluation set shared by all
   policies and seeds.

Each cycle also records what the annotator would have changed in the
pre-annotations of the images it labelled (`edits`: the previous model's
shown boxes against the ground truth; the initial set's against the base
model's), the cost of labelling them for a team that accepts good boxes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..annotation_edits import EditCounts
from ..datasets import LabelledImage
from ..media import read_image
from ..model_store import ModelStore
from ..novelty import embedding_matrix, image_novelty
from ..policies import get_policy
from ..policy_suffixes import is_coreset, needs_novelty
from ..serving import ServingFilters
from ..settings import PROMOTION_POLICIES, Settings
from .budget import batch_size_for_cost, check_budget_cost, check_pool_cost, cost_prefix
from .edits import image_edits, shown_edits
from .null import as_selection, is_null
from .oracle import NEW_CLASS_REFERENCES, is_reference, reads_mistakes, reference_picks
from .records import cycle_record, model_identity, selection_settings

#: Every policy the paper compares, random first: gains are measured against it.
DEFAULT_POLICIES = (
    "random",
    "min-confidence",
    "entropy-sum",
    "entropy-max",
    "entropy-mean",
    "lc-sum",
    "lc-max",
    "lc-mean",
    "ale-entropy-sum",
    "ale-entropy-max",
    "ale-entropy-mean",
    "ale-lc-sum",
    "ale-lc-max",
    "ale-lc-mean",
    "novelty",
    "ale-entropy-sum+novelty",
    "ale-entropy-sum+diverse",
    "ale-entropy-sum+coreset",
    "loc-sum",
    "ale-loc-sum",
    "entropy-sum+cost",
)
BASELINE_POLICY = "random"
#: Pool images loaded and predicted at a time, at most (fewer once they reach PREDICT_CHUNK_PIXELS).
LOAD_CHUNK = 64


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Image counts are images labelled; epochs are training epochs per model (0: the recipe decides)."""

    policies: tuple[str, ...] = DEFAULT_POLICIES
    seeds: tuple[int, ...] = (0, 1)
    initial: int = 24
    budget: int = 16
    cycles: int = 3
    image_size: int = 128
    initial_epochs: int = 40
    epochs: int = 10
    batch: int = 16
    new_class: str | None = None
    # The question is which images teach most, so every cycle's model is kept;
    # `if-not-worse` reproduces the server's default gate instead.
    promotion: str = "always"
    base_model: str = "yolov5n.yaml"
    device: str = "cpu"
    # > 0: a cycle labels the queue until its boxes + COST_PER_IMAGE per image reach this, instead of `budget` images
    budget_cost: float = 0.0

    def __post_init__(self):
        for name in ("initial", "budget", "cycles", "image_size", "initial_epochs", "epochs", "batch"):
            value = getattr(self, name)
            if name.endswith("epochs"):
                if not isinstance(value, int) or value < 0:
                    raise ValueError(f"{name} must be 0 (the training recipe decides) or a positive integer, got {value!r}")
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.policies:
            raise ValueError("policies is empty: name at least one, e.g. random,ale-entropy-sum")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"policies lists a name twice: {','.join(self.policies)}")
        for name in self.policies:
            if not is_reference(name) and not is_null(name):
                get_policy(name)  # unknown names fail here, before any training
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct integers, got {self.seeds}")
        check_budget_cost(self.budget_cost)
        if self.promotion not in PROMOTION_POLICIES:
            raise ValueError(f"promotion must be one of {', '.join(PROMOTION_POLICIES)}, got {self.promotion!r}")

    def labelled_after(self, cycle: int) -> int:
        """Images labelled after `cycle` cycles of `budget` images (under a cost budget, what the policy's images cost decides)."""
        return self.initial + cycle * self.budget


@dataclass
class BenchData:
    """Class names, the pool the policies choose from, and the fixed evaluation set."""

    names: list[str]
    pool: list[LabelledImage]
    evaluation: list[LabelledImage]
    description: str = ""
    #: frames a scene in the pool, listed one after another (1: every pool image its own scene)
    burst: int = 1

    def __post_init__(self):
        if not self.pool or not self.evaluation:
            raise ValueError(f"the pool ({len(self.pool)} images) and the evaluation set ({len(self.evaluation)}) must not be empty")
        if self.burst < 1:
            raise ValueError(f"burst must be 1 (one frame a scene) or more frames a scene, got {self.burst}")


Log = Callable[[str], None]


def simulate(
    config: BenchConfig,
    data: BenchData,
    settings: Settings,
    work: str | Path,
    *,
    log: Log = print,
    results_path: Path | None = None,
    jobs: int | None = 1,
) -> dict:
    """Run every (seed, policy) and return the results; written to `results_path` after each run if given.

    `jobs` > 1 runs that many (seed, policy) runs at once in worker processes
    (`runs.RunPool`; None: one per CPU core), each with its share of the CPU
    threads; `log` is then called in the workers too and must be a
    module-level function.
    """
    from ..adapters import adapter_class
    from .runs import RunPool

    work = Path(work)
    new_index = _new_class_index(config, data)
    if new_index is None and any(name in NEW_CLASS_REFERENCES for name in config.policies):
        references = ", ".join(name for name in config.policies if name in NEW_CLASS_REFERENCES)
        raise ValueError(f"{references} picks images of the new class: name one with --new-class, or leave {references} out")
    needed = config.initial if config.budget_cost else config.labelled_after(config.cycles)
    eligible = [i for i, item in enumerate(data.pool) if new_index is None or new_index not in item.truth.labels]
    if len(eligible) < config.initial or len(data.pool) < needed:
        raise ValueError(
            f"the pool has {len(data.pool)} images ({len(eligible)} usable for the initial set); the configuration needs "
            f"{config.initial} initial and {needed} in all: lower --initial, --budget or --cycles, or use a larger dataset"
        )
    if config.budget_cost:
        boxes = [len(item.truth.labels) for item in data.pool]
        check_pool_cost(boxes, settings.cost_per_image, config.initial, config.cycles, config.budget_cost)
    settings = settings.replace(
        image_size=config.image_size,
        train_batch=config.batch,
        base_model=config.base_model,
        device=config.device,
        promotion=config.promotion,
        model_dir=str(work / "models"),
    )
    hashes = pool_hashes(settings, data.pool)
    results = {
        # the base model by its content: a path on the machine that ran it says nothing to a reader
        "config": dataclasses.asdict(config)
        | {"base_model": model_identity(config.base_model, adapter_class(settings))}
        # a cycle sized by cost labels what its cost buys: the image budget plays no part and is not reported as if it did
        | ({"budget": None} if config.budget_cost else {}),
        "dataset": {
            "description": data.description,
            "classes": data.names,
            "pool_images": len(data.pool),
            "burst": data.burst,
            "evaluation_images": len(data.evaluation),
            "new_class": config.new_class,
        },
        "selection": selection_settings(settings),
        # the settings that decide how long each fine-tune trains (0: the recipe's own minimum); what each
        # cycle's fine-tune actually got (epochs, optimizer steps, the precision auto chose) is in its record's "fine_tune"
        "training": {
            "TRAIN_RECIPE": settings.train_recipe,
            "TRAIN_MIN_STEPS": settings.train_min_steps,
            "TRAIN_CONTINUE_STEPS": settings.train_continue_steps,
            "TRAIN_PRECISION": settings.train_precision,
            "TRAIN_FREEZE": settings.train_freeze,
        },
        "runs": [],
    }
    order = [(seed, policy) for seed in config.seeds for policy in config.policies]
    done: dict[tuple[int, str], dict] = {}
    with RunPool(jobs, config.device) as pool:
        results["jobs"] = pool.jobs
        firsts = {seed: pool.submit(seed_start, config, data, settings, seed, eligible, work / f"seed{seed}") for seed in config.seeds}
        runs = {}
        for seed in config.seeds:
            initial, first_metrics, first_dir, seconds, first_edits = firsts[seed].result()
            log(f"seed {seed}: initial model on {len(initial)} images: mAP50 {first_metrics['map50']:.3f} ({seconds:.0f} s)")
            for policy_name in config.policies:
                runs[pool.submit(
                    policy_run, config, data, settings.replace(train_epochs=config.epochs), policy_name, seed, initial,
                    hashes, work / f"seed{seed}" / policy_name, new_index, first_dir, first_metrics, log, first_edits,
                )] = (seed, policy_name)  # fmt: skip
        for future in pool.as_completed(runs):
            done[runs[future]] = future.result()
            # canonical order whatever finished first: a partial file reads like a complete one
            results["runs"] = [done[key] for key in order if key in done]
            if results_path is not None:
                _write_json(results_path, results)
    for seed in config.seeds:
        shutil.rmtree(work / f"seed{seed}", ignore_errors=True)
    return results


def initial_model(config: BenchConfig, data: BenchData, settings: Settings, seed: int, eligible: list[int], work: Path):
    """Draw the seed's initial set and train its first model. -> (initial pool indices, metrics, model folder, seconds)."""
    rng = np.random.default_rng(seed)
    initial = with_a_validation_image(sorted(int(i) for i in rng.choice(eligible, size=config.initial, replace=False)), eligible)
    start = time.monotonic()
    first = ModelStore(work / "initial", 0)
    train_labelled(settings.replace(train_epochs=config.initial_epochs), first, data, initial, work / "work", seed)
    return initial, evaluate_served(settings, first, data), first.dir, time.monotonic() - start


def seed_start(config: BenchConfig, data: BenchData, settings: Settings, seed: int, eligible: list[int], work: Path):
    """`initial_model`, and the edits of labelling the initial set from the base model's pre-annotations. -> 5-tuple."""
    initial, metrics, first_dir, seconds = initial_model(config, data, settings, seed, eligible, work)
    return initial, metrics, first_dir, seconds, base_model_edits(config, data, settings, initial)


def base_model_edits(config: BenchConfig, data: BenchData, settings: Settings, initial: list[int]) -> EditCounts:
    """What labelling the `initial` images changes in the base model's pre-annotations of them.

    A base model built from a description (no checkpoint, no trained
    classes) shows nothing worth keeping: every box is drawn.
    """
    from ..adapters import adapter_class, load_adapter
    from ..predictor import Predictor

    items = [data.pool[i] for i in initial]
    base_classes = adapter_class(settings).base_classes(config.base_model)  # a Trainer's, as Start Training reads them
    if not base_classes:
        return EditCounts(added=sum(len(item.truth.labels) for item in items))
    adapter = load_adapter(settings.replace(model_weights=config.base_model, model_classes=tuple(base_classes)))
    detections = detect_images(Predictor(settings, adapter, None), data, initial)
    return shown_edits(detections, items, adapter.classes, data.names, ServingFilters.from_settings(settings))


def policy_run(
    config, data, settings, policy_name, seed, initial, hashes, run_dir, new_index, first_dir, first_metrics, log, first_edits=None
) -> dict:
    """One policy's cycles from the seed's first model (copied from `first_dir`); its versions are removed after."""
    shutil.copytree(first_dir, run_dir / "models" / "0")
    first_plan = ModelStore(run_dir / "models", 0).current().manifest.get("plan")
    try:
        run = _run_policy(config, data, settings, policy_name, seed, initial, hashes, run_dir, new_index, log)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # versions are large; the metrics are kept
    run["cycles"].insert(0, cycle_record(0, initial, first_metrics, data, new_index, 0.0, first_plan, initial, first_edits))
    return run


def _run_policy(config, data, settings, policy_name, seed, initial, hashes, run_dir, new_index, log) -> dict:
    store = ModelStore(run_dir / "models", 0)
    labelled = list(initial)
    cycles = []
    for cycle in range(1, config.cycles + 1):
        start = time.monotonic()
        unlabeled = np.setdiff1d(np.arange(len(data.pool)), labelled)
        detections = None  # what the served version predicted on the unlabeled pool, when a model ranked it
        if is_reference(policy_name):  # reads the ground truth, not the model's scores
            mistakes = None
            if reads_mistakes(policy_name):  # where the served model's pre-annotations are wrong
                detections, classes = served_detections(settings, store, data, list(unlabeled))
                found = image_edits(detections, [data.pool[i] for i in unlabeled], classes, data.names, ServingFilters.from_settings(settings))
                mistakes = np.array([e.mistakes for e in found], dtype=np.int64)
            queue = reference_picks(policy_name, [data.pool[i].truth.labels for i in unlabeled], new_index, len(unlabeled),
                                    settings.cost_per_image, mistakes)  # fmt: skip
        else:
            queue, detections, classes = _policy_queue(config, data, settings, store, policy_name, labelled, unlabeled, hashes, seed * 1000 + cycle)
        positions = _labelled_next(config, data, settings, unlabeled, queue)
        picked = [int(unlabeled[i]) for i in positions]
        if detections is None:  # a reference picks from the truth, but its annotator still sees the served model's boxes
            shown, classes = served_detections(settings, store, data, picked)
        else:
            shown = [detections[i] for i in positions]
        edits = shown_edits(shown, [data.pool[i] for i in picked], classes, data.names, ServingFilters.from_settings(settings))
        labelled += picked
        plan = train_labelled(settings, store, data, labelled, run_dir / "work", seed).version.manifest.get("plan")
        metrics = evaluate_served(settings, store, data)
        cycles.append(cycle_record(cycle, labelled, metrics, data, new_index, time.monotonic() - start, plan, picked, edits))
        boxes = sum(cycles[-1]["labelled_objects"].values())
        steps = f"{plan['steps']} steps, " if plan and "steps" in plan else ""
        log(f"seed {seed}: {policy_name:<17} cycle {cycle}: {len(labelled)} images, {boxes} boxes, mAP50 {metrics['map50']:.3f} "
            f"({steps}{time.monotonic() - start:.0f} s)")  # fmt: skip
    return {"seed": seed, "policy": policy_name, "cycles": cycles}


def _labelled_next(config, data, settings, unlabeled, queue) -> np.ndarray:
    """The head of `queue` (positions in `unlabeled`) a cycle labels: `budget` images, or the images up to `budget_cost`."""
    if not config.budget_cost:
        return queue[: config.budget]
    boxes = [len(data.pool[unlabeled[i]].truth.labels) for i in queue]
    return queue[: cost_prefix(boxes, settings.cost_per_image, config.budget_cost)]


def served_adapter(settings: Settings, store):
    """The adapter of the store's current version, with the class names its checkpoint holds."""
    from ..adapters import load_adapter

    return load_adapter(settings.replace(model_weights=str(store.current().weights), model_classes=()))


def served_detections(settings: Settings, store, data: BenchData, indices: list[int]) -> tuple[list, list[str]]:
    """What the store's current version shows on pool images `indices`: one Detections each, and its class names."""
    from ..predictor import Predictor

    adapter = served_adapter(settings, store)
    return detect_images(Predictor(settings, adapter, None), data, indices), list(adapter.classes)


def _policy_queue(config, data, settings, store, policy_name, labelled, unlabeled, hashes, seed) -> tuple[np.ndarray, list, list[str]]:
    """The policy's queue under the store's current version, positions in `unlabeled`; with the (m,) Detections
    of `unlabeled` it ranked and the names of their classes.

    The batch extras shape its head: `budget` images, or under a cost budget
    the images the budget buys at the predicted boxes' cost.
    """
    from ..predictor import Predictor

    policy_name, seed = as_selection(policy_name, seed)  # random-null: random itself, from another stream of draws
    adapter = served_adapter(settings, store)
    predictor = Predictor(settings.replace(policy=policy_name), adapter, None)  # a loc policy predicts mirrored too
    detections = detect_images(predictor, data, unlabeled)
    novelty = covered = None
    policy = get_policy(policy_name)
    if needs_novelty(policy) or is_coreset(policy):  # against the labelled images' embeddings, by the same model
        reference = embedding_matrix(detect_images(predictor, data, labelled))
        reference = reference[~np.isnan(reference).any(axis=1)]
        novelty = image_novelty(detections, reference) if needs_novelty(policy) else None
        covered = reference if is_coreset(policy) else None
    batch = config.budget
    if config.budget_cost:
        batch = batch_size_for_cost([len(d) for d in detections], settings.cost_per_image, config.budget_cost)
    queue = select_queue(
        settings, policy_name, detections, unlabeled + 1, [hashes[i] for i in unlabeled] if hashes else None,
        adapter.classes, batch, seed, novelty, covered,
    )
    return queue, detections, list(adapter.classes)


def select_batch(
    settings: Settings, policy_name: str, detections, task_ids: np.ndarray, hashes, classes, budget: int, seed: int, novelty=None
) -> np.ndarray:
    """The `budget` images a sync would put first in the queue: (m,) detections and task ids -> (budget,) positions.

    Same policy, batch extras and `select_order` as the priority sync; `seed`
    drives the random policy and the exploration draw; `novelty`: (m,) each
    image's novelty against the labelled set (`novelty.image_novelty`).
    """
    return select_queue(settings, policy_name, detections, task_ids, hashes, classes, budget, seed, novelty)[:budget]


def select_queue(
    settings: Settings, policy_name: str, detections, task_ids: np.ndarray, hashes, classes, batch_size: int, seed: int, novelty=None,
    covered=None,
) -> np.ndarray:
    """The whole queue a sync would write, (m,) positions, with the batch extras shaping its first `batch_size`.

    `covered`: (r, D) the labelled images' embeddings, which a "+coreset" batch keeps away from.
    """
    from ..jobs import batch_extras
    from ..ranking import select_order

    settings = settings.replace(policy=policy_name, policy_seed=seed)
    policy = get_policy(policy_name, seed, settings.cost_per_image, settings.novelty_weight)
    usefulness = policy.usefulness(detections, novelty)
    extras = dataclasses.replace(batch_extras(settings, classes), batch_size=batch_size, seed=seed)
    lookup = lambda indices: [detections[i].embedding for i in indices]  # noqa: E731
    return select_order(usefulness, np.asarray(task_ids), detections, hashes, extras, embeddings=lookup, labelled=covered)


def detect_images(predictor, data: BenchData, indices) -> list:
    """One Detections per pool image `indices`, decoded a chunk at a time (`load_chunks`, the predictor's PREDICT_CHUNK_PIXELS)."""
    from .sources import load_chunks

    detections = []
    for chunk in load_chunks([data.pool[i].path for i in indices], predictor.settings.predict_chunk_pixels):
        detections += predictor.detect([_load(data.pool[i].path) for i in (indices[k] for k in chunk)])
    return detections


def train_labelled(settings: Settings, store, data: BenchData, labelled: list[int], work: Path, seed: int):
    """Train a version on the labelled pool images (task id = pool index + 1) into `store`. -> `training.TrainedVersion`"""
    from ..tile_dataset import TrainingTiles
    from ..training import train_version
    from ..training_set import write_training_set

    samples = [training_sample(i, data.pool[i]) for i in labelled]
    shutil.rmtree(work, ignore_errors=True)
    try:
        # large frames tiled as Start Training tiles them (and as evaluation and the pool's predictions see them)
        dataset, _ = write_training_set(work, samples, data.names, TrainingTiles.from_settings(settings))
        return train_version(settings, store, dataset, data.names, work, seed=seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def training_sample(index: int, item: LabelledImage):
    """Pool image `index` as Start Training's sample (task id = index + 1), without its crowd and difficult boxes:
    they count as neither hit nor miss in evaluation, and ultralytics' own COCO and VOC converters leave them out."""
    from ..training_set import TrainingSample

    keep = ~item.truth.difficult
    return TrainingSample(index + 1, item.path, item.truth.xyxy[keep], item.truth.labels[keep])


def evaluate_served(settings: Settings, store, data: BenchData) -> dict:
    from ..training import evaluate_items

    return evaluate_items(settings, store.current().weights, data.evaluation, data.names)


def with_a_validation_image(picked: list[int], candidates) -> list[int]:
    """`picked` pool indices (task id = pool index + 1) with a validation-split image among them, sorted (`with_a_validation_task`)."""
    from ..training_set import with_a_validation_task

    return sorted(t - 1 for t in with_a_validation_task([i + 1 for i in picked], (int(i) + 1 for i in candidates)))


def _new_class_index(config: BenchConfig, data: BenchData) -> int | None:
    if config.new_class is None:
        return None
    if config.new_class not in data.names:
        raise ValueError(f"new class {config.new_class!r} is not a class of the dataset ({', '.join(data.names)})")
    index = data.names.index(config.new_class)
    for part, items in (("pool", data.pool), ("evaluation set", data.evaluation)):
        if not any(index in item.truth.labels[~item.truth.difficult] for item in items):  # its AP would read 0.000 as if measured
            raise ValueError(f"new class {config.new_class!r} has no box in the {part}: name a class with boxes in both, or --new-class none")
    return index


def pool_hashes(settings: Settings, pool: list[LabelledImage]) -> list[int] | None:
    """Each pool image's average hash for near-duplicate suppression, when DUPLICATE_DISTANCE turns it on (None when off)."""
    if settings.duplicate_distance < 0:
        return None
    from ..media import average_hash

    return [average_hash(_load(item.path)) for item in pool]


def _load(path: Path) -> Image.Image:
    # decoded as evaluation and serving decode it (EXIF orientation, 16-bit scaling): boxes and ranks of the image shown
    return read_image(path)


def _write_json(path: Path, results: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(results, indent=1))
    temp.replace(path)
