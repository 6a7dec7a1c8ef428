"""The unlabeled pool: predicting what is missing from the detection store, and ranking what is stored.

Both read and write the store chunk by chunk: a predicted chunk is stored
before the next is fetched, and ranking reads the detections of the tasks it
is given, nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from .adapters import Adapter, check_policy_fits, is_trained
from .detection_rows import image_reference
from .detection_store import LabelledReference, StoredDetections
from .detections import Detections
from .embeddings import novelty as embedding_novelty
from .embeddings import spacing
from .ls_client import TaskRef
from .ls_format import match_labels, parse_label_config
from .media import MediaFetcher, average_hash
from .policies import RandomPolicy, get_policy
from .policy_suffixes import is_coreset, is_diverse, needs_novelty, rarity_weighted, with_inner, with_rarity
from .predictor import Predictor
from .progress import Progress, _job_progress
from .ranking import BatchExtras, ls_scores, select_order, spread_order
from .scoring import most_uncertain_box
from .runtime import Runtime, current_runtime
from .serving import ServingFilters, raw_output_key, shown_classes, shown_detections
from .settings import Settings

log = logging.getLogger(__name__)

#: The order a sync writes while the serving model is untrained (see ranking.spread_order).
SPREAD_POLICY = "spread (untrained model: farthest-first on image hashes)"
#: Per-task reasons a job result carries at most (all are logged).
REPORTED_ERRORS = 20
PREDICT_CHUNK = 64  # at most this many images per step (PREDICT_CHUNK_PIXELS bounds their pixels)
#: Pool embeddings read at a time to score novelty.
NOVELTY_CHUNK = 2048
#: Tasks whose raw detections `rank_pool` decodes at a time (it keeps only the boxes shown).
RANK_READ_CHUNK = 2000


def predict_pool(project: int, task_ids: list[int] | None = None, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """Predict every unlabeled task (or `task_ids`) lacking detections for the current model version."""
    rt = runtime or current_runtime()
    progress = progress or _job_progress
    info = rt.ls.project(project)
    wanted = None if task_ids is None else set(task_ids)
    # Task ids only grow: the tasks an import created are listed from the smallest of them, not the whole project.
    after = None if not wanted else min(wanted) - 1
    tasks = [t for t in rt.ls.unlabeled_tasks(project, after_id=after) if wanted is None or t.id in wanted]
    return predict_missing(rt, project, parse_label_config(info.label_config), tasks, progress, rt.adapter_for(project))


def predict_missing(rt: Runtime, project: int, config, tasks: Sequence[TaskRef], progress: Progress, adapter: Adapter) -> dict:
    """Store what `adapter` produces for every task that has nothing stored for it yet (or only an error), or whose row is
    of another image (`is_stored`)."""
    key = raw_output_key(adapter.version, rt.settings)
    known = stored_refs(rt, project, key, adapter, [t.id for t in tasks])  # ids and references only: nothing decoded
    missing = [t for t in tasks if not is_stored(known, t, config)]
    del known
    predictor = Predictor(rt.settings, adapter, MediaFetcher(rt.settings, rt.ls), project)
    failed = 0
    errors: dict[int, str] = {}
    progress("predict", 0, len(missing))
    done = 0
    refs = [{"id": t.id, "data": t.data} for t in missing]
    for chunk in predictor.image_chunks(refs, config, rt.settings.predict_chunk_pixels, PREDICT_CHUNK):
        ready = chunk.ready()
        found = dict(zip(ready, predictor.raw([chunk.images[i] for i in ready])))
        items = []
        for i, image in enumerate(chunk.images):
            task = missing[chunk.start + i]
            if image is None:
                failed += 1
                reason = chunk.errors[chunk.start + i]
                log.warning("project %s task %s: not predicted: %s", project, task.id, reason)
                if len(errors) < REPORTED_ERRORS:
                    errors[task.id] = reason
                items.append(StoredDetections(task.id, None, None, reason, image_reference(task.data, config.value_key)))
            else:
                items.append(StoredDetections(task.id, found[i], average_hash(image), None, image_reference(task.data, config.value_key)))
        rt.store.put_many(project, key, items)
        done += len(chunk.images)
        progress("predict", done, len(missing))
        chunk = image = None  # the frames go before the next chunk's are decoded
    return {"model_version": adapter.version, "tasks": len(tasks), "predicted": len(missing) - failed, "failed": failed, "errors": errors}


def stored_refs(rt: Runtime, project: int, key: str, adapter: Adapter, task_ids: Sequence[int] | None = None) -> dict[int, str | None]:
    """{task id: image reference} of the tasks (all when None) `key` holds usable detections for, with `adapter`'s
    class count: a row with another (a model rebuilt with other classes under one name) is not usable."""
    return rt.store.usable_refs(project, key, task_ids, num_classes=len(adapter.classes))


def is_stored(known: dict[int, str | None], task: TaskRef, config) -> bool:
    """Whether `known` (`stored_refs`) holds detections of the image `task` points at under `config`.

    A row of another image (the label config's <Image value="$..."> names another field, or the task's data was
    replaced) is not. A row stored before references were recorded (None) is taken as this image's: treating it as
    missing would run the model over every stored pool once more after an upgrade, for the few tasks whose image
    changed before it; the next model version predicts every task afresh, under its own key, anyway.
    """
    if task.id not in known:
        return False
    stored = known[task.id]
    return stored is None or stored == image_reference(task.data, config.value_key)


def rank_pool(
    rt: Runtime, project: int, task_ids: Sequence[int], adapter: Adapter, config, extras: bool = True,
    labelled: Callable[[], list[TaskRef]] | None = None, reference: LabelledReference | None = None, stream: int | None = None,
    rarity: np.ndarray | None = None,
) -> dict:
    """Score and order what annotators would be shown of `task_ids`. Returns arrays aligned with `task_ids`.

    Uses what `adapter` stored for the tasks, through the serving filters of
    the current settings and narrowed to the classes `config` has labels for
    (`serving.shown_detections`, the same as /predict). `extras`: reshape the
    head of the order with the batch extras (off: usefulness order alone).
    `labelled`: gives the project's labelled tasks, predicted (`predicted_labelled_tasks`),
    for a caller that lists them too; listed here when a policy needs them and no `reference` is given.
    `reference`: the labelled tasks (and novelty scale) to measure against instead, as a served
    queue recorded them: nothing is listed. The result's "reference" is what was measured against
    (None where the policy needs no labelled images). `stream`: the `random` policy draws from a stream
    of its own for these tasks (tasks added to a queue: the seed's stream would give each add the same values).
    `rarity`: the (C,) class rarity a `+rare` policy weights by, as a served queue recorded it; measured on
    these tasks otherwise. The result's "rarity" is what was weighted by (None without `+rare`).
    """
    task_ids = np.asarray(task_ids, dtype=np.int64)
    key = raw_output_key(adapter.version, rt.settings)
    shown = shown_classes(match_labels(adapter.classes, config))
    filters = ServingFilters.from_settings(rt.settings)
    num_classes = len(adapter.classes)
    detections, hashes, usable = [], [], []
    ids = task_ids.tolist()
    # The raw output (every box above the model's floor) is read a slice at a time; only what is shown is kept.
    for begin in range(0, len(ids), RANK_READ_CHUNK):
        part = ids[begin : begin + RANK_READ_CHUNK]
        stored = rt.store.get_many(project, key, part)
        for task_id in part:
            item = stored.pop(task_id, None)
            # a row with another class count (stored by a model of other classes under one name) is unusable, not a crash
            ok = item is not None and item.detections is not None and item.detections.num_classes == num_classes
            detections.append(shown_detections(item.detections, shown, filters) if ok else Detections.empty(num_classes, (1, 1)))
            hashes.append(item.image_hash if ok else None)
            usable.append(ok)
        del stored
    usable = np.array(usable, dtype=bool)
    if not is_trained(adapter):
        # An untrained model's uncertainty is noise: cover the pool's look first, not its import order.
        order, spread = spread_order(hashes, task_ids)
        usefulness = np.where(usable, spread, -np.inf)
        return {"policy": SPREAD_POLICY, "detections": detections, "usefulness": usefulness, "order": order, "usable": usable, "reference": None, "rarity": None}
    check_policy_fits(adapter, rt.settings.policy)
    policy = settings_policy(rt.settings)
    if stream is not None:  # bare random, or random under a suffix (random+cost, random+diverse)
        policy = with_inner(policy, RandomPolicy, lambda random: replace(random, stream=stream))
    rare = rarity_weighted(policy)
    if rare is not None:
        counted = (shown >= 0) if (shown >= 0).any() else None  # hidden classes neither count in C nor weigh
        rarity = rare.pool_rarity(detections, num_classes, counted) if rarity is None else np.asarray(rarity, dtype=np.float64)
        policy = with_rarity(policy, rarity)
    else:
        rarity = None
    novelty = vectors = None
    coreset = extras and is_coreset(policy)  # the labelled images shape the head batch only
    if needs_novelty(policy) or coreset:
        if reference is None:
            tasks = labelled() if labelled is not None else predicted_labelled_tasks(rt, project, config, adapter)
            reference = LabelledReference([t.id for t in tasks])
        found = rt.store.embeddings(project, key, reference.task_ids.tolist())
        vectors = np.stack(list(found.values())) if found else np.zeros((0, 0))
        scale = reference.scale
        if needs_novelty(policy) and scale is None and len(found) >= 2:
            scale = spacing(vectors)  # below two labelled images there is no spacing to record: measured when there is
        reference = LabelledReference(list(found), scale)
    else:
        reference = None
    if needs_novelty(policy):
        novelty = pool_novelty(rt.store, project, key, task_ids, vectors, reference.scale if reference.scale is not None else 1.0)
    usefulness = policy.usefulness(detections, novelty) if task_ids.size else np.zeros(0)
    # Images that could not be fetched or decoded have no usefulness: they go to the very end of the queue.
    usefulness = np.where(usable, usefulness, -np.inf)
    shaping = batch_extras(rt.settings, adapter.classes) if extras else BatchExtras(batch_size=max(1, task_ids.size))

    def embeddings(indices):
        # only the diversity candidates' are read: a pool's embeddings never sit in memory at once
        found = rt.store.embeddings(project, key, [int(task_ids[i]) for i in indices])
        return [found.get(int(task_ids[i])) for i in indices]

    order = select_order(usefulness, task_ids, detections, hashes, shaping, usable, embeddings, vectors if coreset else None)
    return {
        "policy": policy.name, "detections": detections, "usefulness": usefulness, "order": order, "usable": usable,
        "reference": reference, "rarity": rarity,
    }


def settings_policy(s: Settings):
    return get_policy(s.policy, s.policy_seed, s.cost_per_image, s.novelty_weight)


def pool_novelty(store, project: int, key: str, task_ids: np.ndarray, reference: np.ndarray, scale: float) -> np.ndarray:
    """(m,) novelty of each task against the (r, D) labelled embeddings in units of `scale`, from the store chunk by
    chunk; 1 without an embedding."""
    out = np.ones(task_ids.size)
    if reference.size == 0:
        return out
    for rows, vectors in store.embedding_chunks(project, key, task_ids.tolist(), NOVELTY_CHUNK):
        out[rows] = embedding_novelty(vectors, reference, scale)
    return out


def predicted_labelled_tasks(rt: Runtime, project: int, config, adapter: Adapter) -> list[TaskRef]:
    """The project's labelled tasks, each with stored detections (and embedding) by `adapter`: predicted once per model version."""
    labelled = list(rt.ls.labelled_tasks(project))
    predict_missing(rt, project, config, labelled, lambda *args, **kwargs: None, adapter)
    return labelled


def preview_ranking(project: int, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """The queue a sync would write, without writing it.

    -> {"policy", "model", "trained", "rows": one per unlabeled task, in order}.
    """
    rt = runtime or current_runtime()
    config = parse_label_config(rt.ls.project(project).label_config)
    adapter = rt.adapter_for(project)
    tasks = list(rt.ls.unlabeled_tasks(project))
    predict_missing(rt, project, config, tasks, progress or _job_progress, adapter)
    ranked = rank_pool(rt, project, [t.id for t in tasks], adapter, config)
    scores = ls_scores(ranked["order"])
    rows = []
    for position, i in enumerate(ranked["order"]):
        task = tasks[i]
        rows.append(
            {
                "rank": position + 1,
                "task": task.id,
                "image": str(task.data.get(config.value_key, "")),
                "usefulness": float(ranked["usefulness"][i]),
                "boxes": len(ranked["detections"][i]),
                "entropy": _most_uncertain_box(ranked["detections"][i]),
                "ls_score": float(scores[i]),
            }
        )
    return {"policy": ranked["policy"], "model": adapter.version, "trained": is_trained(adapter), "rows": rows}


def _most_uncertain_box(detections) -> float:
    """The image's least certain box: its entropy over classes and background, normalised by log(K) (0 without boxes)."""
    if not len(detections):
        return 0.0
    return most_uncertain_box(detections.class_probs, detections.background)


def batch_extras(s: Settings, model_classes) -> BatchExtras:
    """The queue-shaping extras configured in the settings, for a model with these classes."""
    classes = {name.lower(): i for i, name in enumerate(model_classes)}
    balance = {}
    for name, share in s.class_balance:
        if name.lower() not in classes:
            raise ValueError(f"CLASS_BALANCE names {name!r}, which is not a model class ({', '.join(model_classes)})")
        balance[classes[name.lower()]] = share
    return BatchExtras(
        diversity_pool=s.diversity_pool if is_diverse(settings_policy(s)) else 0,
        batch_size=s.sync_batch_size,
        exploration=s.exploration_fraction,
        empty_quota=s.empty_quota,
        class_balance=balance,
        duplicate_distance=s.duplicate_distance,
        seed=s.policy_seed,
    )
