"""Writing a ranked queue into Label Studio: the full rewrite and its switch, and the incremental writes.

`jobs._sync` decides which applies; these make the writes. The full rewrite
imports the whole pool under a fresh prediction version and switches the
project to it in one PATCH. On a queue still current: new tasks are added to
the served version between their neighbours, the head is re-shaped by the
batch extras once it was labelled, a project set to another sampling is set
back, and images that could not be used are tried again.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timezone

import numpy as np

from .adapters import Adapter, is_trained
from .detection_store import ServedQueue
from .errors import AleError
from .ls_client import UNCERTAINTY_SAMPLING, LabelStudioError
from .ls_format import detections_to_results, match_labels
from .pool import batch_extras, predict_missing, predicted_labelled_tasks, rank_pool
from .prediction_clusters import cluster_ids, cluster_pool, labelled_predictions
from .progress import Progress
from .queue_update import place_in_store
from .ranking import ls_scores
from .runtime import Runtime
from .served_queue_store import ServedRecord
from .serving import raw_output_key

log = logging.getLogger(__name__)

#: Prefix of the prediction versions the sync writes; only these are ever deleted.
SYNC_VERSION_PREFIX = "ale:"


class SyncError(AleError):
    status = 502


#: Served tasks whose image could not be used (last in the queue) are tried again at most this often per project...
RETRY_UNUSABLE_SECONDS = 60 * 60
#: ... and this many at a time, going round them: the next round starts after the last task tried...
RETRY_UNUSABLE_TASKS = 100
#: ... which is remembered this long.
RETRY_CURSOR_TTL = 7 * 24 * 60 * 60


def unusable_recovered(rt: Runtime, project: int, config, adapter: Adapter, progress: Progress) -> bool:
    """Predict again the served tasks whose image could not be used, at most every RETRY_UNUSABLE_SECONDS.

    A passing failure (a timeout, LS or the bucket answering 502) leaves a task
    last in the queue; incremental syncs list only tasks newer than the queue,
    so without this it would wait there for the next model. -> whether any can
    be used now (the queue is then rewritten; a rewrite that fails leaves the
    recovery owed, and the next sync rewrites at once).
    """
    key = raw_output_key(adapter.version, rt.settings)
    cursor = f"retry-unusable-after:{project}"
    unusable = rt.store.served_unusable(project, RETRY_UNUSABLE_TASKS, int(rt.flag_value(cursor) or 0))
    if not unusable:
        return False
    # usable already: a recovery whose rewrite failed (or was handed to a fan-out) is still owed
    if rt.store.usable_ids(project, key, unusable).size:
        return True
    if rt.claim_flag(f"retry-unusable:{project}", "1", RETRY_UNUSABLE_SECONDS) is not None:
        return False
    rt.raise_flag(cursor, str(max(unusable)), RETRY_CURSOR_TTL)  # the next round goes on from here: none waits for good
    tasks = list(rt.ls.unlabeled_tasks_among(project, unusable))
    predict_missing(rt, project, config, tasks, progress, adapter)
    return bool(rt.store.usable_ids(project, key, unusable).size)


def restore_sampling(rt: Runtime, project: int, info) -> str | None:
    """Put a project whose sampling was changed in LS back on Uncertainty sampling. -> the sampling it had, or None.

    The served queue is still right, but LS only serves it under Uncertainty
    sampling: one PATCH (the same version, and the sampling) restores it.
    """
    if info.sampling == UNCERTAINTY_SAMPLING:
        return None
    rt.check_lock(f"sync:{project}", f"setting project {project} back to {UNCERTAINTY_SAMPLING}")
    rt.ls.switch_queue(project, info.model_version)
    log.warning("project %s: its sampling was %r; set back to %r, which serves the ranked queue", project, info.sampling, UNCERTAINTY_SAMPLING)
    return info.sampling


def add_new_tasks(rt, project, config, adapter, version, fresh, progress, phase_done) -> dict | None:
    """Add `fresh` tasks to the served version between their neighbours by usefulness; None when a gap is full."""
    ids = np.array([t.id for t in fresh], dtype=np.int64)
    # measured as the queue was (its labelled tasks, on its scale; its pool's class rarity; one read of the record):
    # no listing, and comparable with the queue's usefulness
    record = rt.store.served_record(project, version) or ServedRecord(None, None, None)
    ranked = rank_pool(
        rt, project, ids, adapter, config, extras=False, reference=record.reference, stream=int(ids.min()), rarity=record.rarity
    )
    scores = place_in_store(rt.store, project, ids, ranked["usefulness"])
    centroids = record.centroids if rt.settings.ls_clusters else None
    clusters = None if centroids is None else cluster_ids(rt.store, project, raw_output_key(adapter.version, rt.settings), ids, centroids)
    phase_done("score")
    if scores is None:
        return None
    try:
        rt.check_lock(f"sync:{project}", f"adding {ids.size} new tasks to version {version}")
        rt.store.begin_served_write(project, version)  # a sync killed from here on leaves a record that is not current
        _import(rt, project, ids, ranked, scores, version, adapter, config, progress, clusters)
    except Exception as exc:
        # Chunks imported before the failure are in the served version already: the next sync rewrites the whole
        # queue under a fresh version, rather than add those tasks a second time.
        rt.store.forget_served(project)
        raise SyncError(
            f"sync of project {project} could not add {ids.size} new tasks; the older tasks keep their order, "
            f"and the next sync rewrites the queue: {exc}"
        ) from exc
    phase_done("import")
    if not rt.store.add_served(project, version, ids, ranked["usefulness"], scores):
        rt.store.forget_served(project)  # another sync replaced the record meanwhile: the next sync rewrites
    log.info("project %s: %d new tasks added to version %s", project, ids.size, version)
    return {"status": "updated", "model_version": version, "added": ids.tolist(), **_written(ids, ranked)}


#: The batch extras re-shape this many batches of the served queue's head when it moved on.
RESHAPE_WINDOW_BATCHES = 4


def reshape_head(rt: Runtime, project: int, config, adapter: Adapter, version: str) -> int:
    """Re-apply the batch extras to the head of the served queue once tasks of its head batch were labelled.

    The extras shape the first SYNC_BATCH_SIZE tasks of a queue; once some of
    those are labelled, the next tasks served were ranked by usefulness alone.
    The window of the next RESHAPE_WINDOW_BATCHES batches is re-ordered with
    the extras and its tasks trade scores among themselves (exploration then
    draws from the window's less useful half, not the pool's). Writes one score
    per task that moves, at most the window; none while the head is unlabeled
    or the extras are off. -> predictions written.
    """
    extras = batch_extras(rt.settings, adapter.classes)
    if not extras.any or not is_trained(adapter):
        return 0
    head = rt.store.served_tasks(project, extras.batch_size).task_ids.tolist()
    if len(rt.ls.unlabeled_among(project, head)) == len(head):
        return 0
    size = extras.batch_size * RESHAPE_WINDOW_BATCHES
    window = rt.store.served_tasks(project, size + len(head))  # the labelled head is still in the record
    ids = window.task_ids.tolist()
    states = rt.ls.label_states(project, ids)
    keep = np.array([states.get(t) is False for t in ids], dtype=bool)
    keep[np.flatnonzero(keep)[size:]] = False  # the window is `size` unlabeled tasks; later ones stay as they are
    labelled = [t for t in ids if states.get(t) is not False]  # labelled, or deleted: LS serves neither
    # the head's labelled tasks join those the queue was ranked against (labelled elsewhere: at the next full sync)
    record = rt.store.served_record(project, version) or ServedRecord(None, None, None)
    reference = None if record.reference is None else record.reference.with_tasks([t for t in ids if states.get(t)])
    ranked = rank_pool(rt, project, window.task_ids[keep], adapter, config, reference=reference, rarity=record.rarity)
    scores = np.empty(int(keep.sum()))
    scores[ranked["order"]] = np.sort(window.scores[keep])  # the window's own scores, handed out in the new order
    moved = {int(t): float(new) for t, old, new in zip(window.task_ids[keep], window.scores[keep], scores) if new != old}
    try:
        rt.check_lock(f"sync:{project}", f"re-ordering the head of version {version}")
        rt.store.begin_served_write(project, version)  # a sync killed from here on leaves a record that is not current
        written = rt.ls.set_prediction_scores(project, version, moved)
    except Exception as exc:
        rt.store.forget_served(project)  # some scores may have moved: the record no longer says what LS serves
        raise SyncError(f"sync of project {project} could not re-shape the head of its queue; the next sync rewrites it: {exc}") from exc
    if not rt.store.rescore_served(project, version, labelled, window.task_ids[keep], scores, ranked["reference"]):
        rt.store.forget_served(project)
    log.info("project %s: head batch labelled; %d of the next %d tasks re-ordered by the batch extras", project, len(moved), len(scores))
    return written


def _check_whole(rt, project: int, version: str, task_ids: np.ndarray, labelled: int) -> None:
    """Raise SyncError unless `version` holds a prediction for every pool task that still exists: a version another
    sync removed part of (its lock lost) must not be served. Tasks deleted in LS meanwhile took theirs with them;
    only then are the pool's tasks listed, to count those."""
    held, written = rt.ls.model_versions(project).get(version, 0), int(task_ids.size) + labelled
    if held >= written:
        return
    remaining = len(rt.ls.label_states(project, [int(t) for t in task_ids])) + labelled
    if held < remaining:
        raise SyncError(
            f"version {version} holds {held} predictions where {remaining} tasks still want one (another sync removed "
            "some?); the next sync writes the queue again"
        )


def rewrite_queue(rt, project, config, adapter, queue: ServedQueue, served: ServedQueue | None, task_ids, progress, phase_done) -> dict:
    """Rank the whole pool, import it under a fresh version, switch LS to it atomically, record it."""
    previous = [v for v in _versions(rt, project) if v.startswith(SYNC_VERSION_PREFIX)]
    # listed once, on first need: novelty scores against them, clusters are written for them
    labelled_tasks = functools.cache(lambda: predicted_labelled_tasks(rt, project, config, adapter))
    ranked = rank_pool(rt, project, task_ids, adapter, config, labelled=labelled_tasks)
    scores = ls_scores(ranked["order"])
    clustering = cluster_pool(rt, project, adapter, task_ids)
    phase_done("score")
    version = f"{SYNC_VERSION_PREFIX}{adapter.version}:{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
    labelled = 0
    try:
        _import(rt, project, task_ids, ranked, scores, version, adapter, config, progress, None if clustering is None else clustering.ids)
        if clustering is not None:
            # LS reads a labelled task's cluster from its predictions, and the old versions are about to go
            for items in labelled_predictions(rt, project, config, adapter, clustering.centroids, version, labelled_tasks()):
                labelled += rt.ls.create_predictions(project, items)
        phase_done("import")
        _check_whole(rt, project, version, task_ids, labelled)
        rt.check_lock(f"sync:{project}", f"switching project {project} to {version}")
        rt.ls.switch_queue(project, version)
        phase_done("switch")
    except Exception as exc:
        _discard(rt, project, version)
        raise SyncError(f"sync of project {project} failed before switching; the previous order stays: {exc}") from exc
    # Recorded after the switch: a record lost here only makes the next sync a full one.
    centroids = None if clustering is None else clustering.centroids
    rt.store.replace_served(
        project, ServedQueue(version, queue.raw_key, queue.ranking_key), task_ids, ranked["usefulness"], scores, centroids, ranked["reference"],
        ranked["rarity"],
    )
    rt.store.prune(project, {queue.raw_key} | ({served.raw_key} if served is not None else set()))
    log.info("project %s: queue synced, %d tasks, version %s", project, task_ids.size, version)
    return {
        "status": "synced",
        "model_version": version,
        "order": [int(task_ids[i]) for i in ranked["order"]],
        "stale_versions": previous,
        **_written(task_ids, ranked),
        **({} if clustering is None else {"clusters": int(clustering.centroids.shape[0]), "labelled_predictions": labelled}),
    }


def _written(task_ids: np.ndarray, ranked: dict) -> dict:
    """What a sync that wrote predictions for `task_ids` reports about them."""
    return {
        "policy": ranked["policy"],
        "written": int(task_ids.size),
        "unusable": int((~ranked["usable"]).sum()),
        # None for an image that could not be used (it is last in the queue)
        "usefulness": {int(t): float(u) if ok else None for t, u, ok in zip(task_ids, ranked["usefulness"], ranked["usable"])},
    }


def _import(
    rt: Runtime, project: int, task_ids: np.ndarray, ranked: dict, scores: np.ndarray, version: str, adapter: Adapter, config,
    progress: Progress, clusters: dict[int, int] | None = None,
) -> None:
    """One prediction per task of `task_ids` (with `ranked`'s arrays and `scores` aligned to it) under `version`.

    Items are built per IMPORT_CHUNK_SIZE request, so a large pool is never held as LS JSON at once.
    With `clusters` (task id -> cluster) each prediction carries its cluster, one request each (the bulk import drops it).
    """
    label_map = match_labels(adapter.classes, config)
    total = int(task_ids.size)
    chunk_size = rt.settings.import_chunk_size
    progress("import", 0, total)
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        items = [
            {
                "task": int(task_ids[i]),
                "result": detections_to_results(ranked["detections"][i], label_map, config) if ranked["usable"][i] else [],
                "score": float(scores[i]),
                "model_version": version,
            }
            for i in range(start, stop)
        ]
        if clusters is None:
            rt.ls.import_predictions(project, items)
        else:
            rt.ls.create_predictions(project, [item | {"cluster": clusters.get(item["task"])} for item in items])
        progress("import", stop, total)


def _versions(rt: Runtime, project: int) -> list[str]:
    try:
        return list(rt.ls.model_versions(project))
    except LabelStudioError:
        return []


def _discard(rt: Runtime, project: int, version: str) -> None:
    try:
        served = rt.ls.project(project).model_version
        # A switch whose answer was lost may have taken effect: never delete what is being served. And while the
        # project serves a version not written by a sync (its ML backend's title, before the first sync), LS clears
        # the project's model_version on any deletion: the partial version waits for the next sync's cleanup.
        if served != version and (not served or served.startswith(SYNC_VERSION_PREFIX)):
            rt.ls.delete_model_version(project, version)
    except Exception:  # LS may be the thing that failed; the next sync cleans up
        log.warning("project %s: could not remove partial version %s yet", project, version)
