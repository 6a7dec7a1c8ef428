"""Background jobs: predict the pool, and keep Label Studio's queue ranked.

Both run the same way on an rq worker (`ale worker`) and in-process (the
embedded queue); they take a project id and find everything else through the
process `Runtime`.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from datetime import datetime, timezone

import numpy as np

from .adapters import Adapter, is_trained
from .detection_store import ServedQueue
from .errors import AleError
from .fanout import can_fan_out, fan_out, fanout_flag
from .jobqueue import QUEUE_SYNC
from .ls_client import UNCERTAINTY_SAMPLING, LabelStudioError
from .ls_format import detections_to_results, match_labels, parse_label_config
from .pool import SPREAD_POLICY, batch_extras, predict_missing, predict_pool, preview_ranking, rank_pool  # noqa: F401 (re-exported)
from .pool import predicted_labelled_tasks
from .prediction_clusters import cluster_ids, cluster_pool, labelled_predictions
from .progress import TRAINER_METRICS_NOTE, Progress, _job_progress, describe_progress, publish  # noqa: F401 (re-exported)
from .queue_update import place_new_tasks, ranking_key
from .ranking import ls_scores
from .runtime import Runtime, current_runtime
from .serving import ServingFilters, raw_output_key
from .settings import Settings

log = logging.getLogger(__name__)

#: Prefix of the prediction versions the sync writes; only these are ever deleted.
SYNC_VERSION_PREFIX = "ale:"
#: A queued sync covers new requests this long at most: a job lost from the queue cannot hold syncs back for longer.
SYNC_QUEUED_TTL = 30 * 60


class SyncError(AleError):
    status = 502


def request_sync(queue, runtime: Runtime, project: int) -> tuple[str, bool]:
    """Queue a sync of `project` unless one is queued and has not started. -> (its job id, whether queued now).

    Any number of requests (TASKS_CREATED webhooks) while a sync waits in the
    queue are covered by that one: it lists the project's tasks when it
    starts. From its start on, the next request queues one more.
    """
    job_id = uuid.uuid4().hex
    held = runtime.claim_flag(queued_sync_flag(project), job_id, SYNC_QUEUED_TTL)
    if held is not None:
        return held, False
    try:
        return queue.enqueue(QUEUE_SYNC, queued_sync, project, retry=True, job_id=job_id), True
    except Exception:
        runtime.take_flag(queued_sync_flag(project))  # nothing was queued: the next request must queue it
        raise


def queued_sync(project: int, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """The sync `request_sync` queues: it lets the next request queue another, then syncs."""
    rt = runtime or current_runtime()
    rt.take_flag(queued_sync_flag(project))
    return sync_priorities(project, runtime=rt, progress=progress)


def queued_sync_flag(project: int) -> str:
    return f"sync-queued:{project}"


def sync_priorities(
    project: int, *, runtime: Runtime | None = None, progress: Progress | None = None, full: bool = False, fanout: bool = True
) -> dict:
    """Keep LS's queue for `project` ranked: one prediction per unlabeled task, written for what changed (see `_sync`).

    full: rewrite the whole queue even if nothing changed. fanout: inside an
    rq job, predict many missing tasks as parallel jobs (`fanout`).

    A rewrite's predictions go in under a fresh prediction version; only when LS
    has created every one is the project switched to it (model_version and
    Uncertainty sampling in one PATCH). Until then the previous order stays in
    force; on failure the partial version is removed. Older versions written
    by this backend are deleted after the switch.

    One sync of a project runs at a time. A request that arrives while one
    runs is never dropped: it raises the project's pending flag and returns
    `coalesced`, and the running sync runs once more when it is done (with
    the model served by then), covering every request that came meanwhile.
    """
    rt = runtime or current_runtime()
    progress = progress or _job_progress
    pending = f"sync-pending:{project}"
    # Raised before trying the lock: a holder checks the flags after releasing the lock, so it cannot miss them.
    if full:  # its own flag: a holder's rerun covering this request rewrites the queue too
        rt.raise_flag(full_sync_flag(project))
    rt.raise_flag(pending)
    result, runs = None, 0
    while True:
        with rt.lock(f"sync:{project}") as acquired:
            if not acquired or not rt.take_flag(pending):
                break  # the holder runs it, or a sync that began after this request already did
            rewrite = rt.take_flag(full_sync_flag(project))
            try:
                latest = _sync(rt, project, progress, full=rewrite, fanout=fanout)
            except Exception:
                if rewrite:  # the retry, or the next sync, still owes the rewrite
                    rt.raise_flag(full_sync_flag(project))
                raise
            runs += 1
        if result is None or latest["status"] != "unchanged":  # a rerun that found nothing new keeps the answer of the run that wrote
            result = latest
            _delete_stale(rt, project, result)
        if not rt.flag_raised(pending):
            break
    if result is None:
        log.info("project %s: a sync is already running; it will run once more to cover this request", project)
        return {"status": "coalesced", "reason": "a sync of this project is running; it runs once more when done, covering this request"}
    result["runs"] = runs
    return result


def full_sync_flag(project: int) -> str:
    """Raised by a request for a full rewrite (`ale sync --full`) until a sync of the project takes it."""
    return f"sync-pending-full:{project}"


def _delete_stale(rt: Runtime, project: int, result: dict) -> None:
    """Delete the versions the sync replaced, outside the lock.

    Deleting predictions is slow in LS (~7 ms each) and does not affect the
    order served. Only versions that existed before the sync started are
    deleted: a later sync's version, possibly still importing, is never touched.
    """
    started = time.perf_counter()
    result["deleted_versions"] = []
    for old in result.pop("stale_versions"):
        try:
            rt.ls.delete_model_version(project, old)
            result["deleted_versions"].append(old)
        except Exception as exc:  # left for the next sync to remove
            log.warning("project %s: could not delete old version %s: %s", project, old, exc)
    result["phases"]["cleanup"] = round(time.perf_counter() - started, 3)


def _sync(rt: Runtime, project: int, progress: Progress, full: bool = False, fanout: bool = True) -> dict:
    """One sync under the project's lock: what changed since the served queue decides what is written.

    - the served queue is still current (same LS version, model and ranking
      settings) and no task is new: nothing is written ("unchanged");
    - only new tasks: they are predicted and added to the served version,
      placed among the others by usefulness ("updated"; O(new tasks) writes);
    - tasks of the head batch labelled, with batch extras on: the next
      batches are re-ordered by them ("reshaped"; one write per task moved);
    - anything else, or `full`: the whole queue is rewritten and switched ("synced").
    """
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    follow_up = rt.flag_value(fanout_flag(project))
    if follow_up is not None:
        return {
            "status": "coalesced",
            "reason": f"the pool is being predicted in parallel jobs; sync job {follow_up} follows them and covers this request",
            "follow_up": follow_up,
            "stale_versions": [],
            "phases": phases,
        }
    # "load" pays the first use of the LS client and of the model (imports, weights), so "list" is listing alone.
    info = rt.ls.project(project)
    config = parse_label_config(info.label_config)
    # One model for the whole sync: a version promoted meanwhile is served by the next sync, never mixed into this one.
    adapter = rt.adapter_for(project)
    raw_key = raw_output_key(adapter.version, rt.settings)
    queue = ServedQueue(info.model_version, raw_key, queue_ranking_key(rt.settings, adapter, info.label_config))
    served = None if full else rt.store.served_queue(project)
    current = served == queue and bool(info.model_version)
    phase_done("load")
    if current:
        restored = _restore_sampling(rt, project, info)
        # Task ids only grow: the tasks created since the served queue are those above its last one.
        last = rt.store.served_last_task(project)
        fresh = list(rt.ls.unlabeled_tasks(project, after_id=last))
        phase_done("list")
        base = {"project": project, "served_model": adapter.version, "new_tasks": len(fresh), "stale_versions": [], "phases": phases}
        if restored:
            base["sampling_restored"] = restored
        if not fresh:
            reshaped = _reshape_head(rt, project, config, adapter, info.model_version)
            if reshaped:
                phase_done("reshape")
                return {**base, "status": "reshaped", "model_version": info.model_version, "written": reshaped}
            log.info("project %s: no task since version %s was served; nothing written", project, info.model_version)
            return {**base, "status": "unchanged", "model_version": info.model_version, "written": 0}
        if _fan_out_needed(rt, fresh, fanout):
            return {**base, "status": "predicting", "model_version": info.model_version, "written": 0, **fan_out(rt, project, fresh, adapter.version)}
        predicted = predict_missing(rt, project, config, fresh, progress, adapter)
        phase_done("predict")
        if is_trained(adapter):
            updated = _add_new_tasks(rt, project, config, adapter, info.model_version, fresh, progress, phase_done)
            if updated is not None:
                return {**base, **updated, "predicted": predicted}
            log.info("project %s: no room left between scores for the new tasks; rewriting the queue", project)
        del fresh
    # Listed page by page; only the tasks without stored detections keep their data.
    known = set(rt.store.usable_ids(project, raw_key).tolist())
    task_ids, fresh = [], []
    for task in rt.ls.unlabeled_tasks(project):
        task_ids.append(task.id)
        if task.id not in known:
            fresh.append(task)
    del known
    task_ids = np.asarray(task_ids, dtype=np.int64)
    phase_done("list")
    base = {"project": project, "served_model": adapter.version, "tasks": int(task_ids.size), "stale_versions": [], "phases": phases}
    if not task_ids.size:
        log.info("project %s: no unlabeled task left; the served version %s is kept", project, info.model_version or "(none)")
        return {**base, "status": "nothing to rank", "reason": "no unlabeled task is left; the served version and its predictions are kept", "model_version": info.model_version}
    if _fan_out_needed(rt, fresh, fanout):
        return {**base, "status": "predicting", "model_version": info.model_version, "written": 0, **fan_out(rt, project, fresh, adapter.version)}
    predicted = predict_missing(rt, project, config, fresh, progress, adapter)
    phase_done("predict")
    del fresh
    return {**base, **_rewrite(rt, project, config, adapter, queue, served, task_ids, progress, phase_done), "predicted": predicted}


def _restore_sampling(rt: Runtime, project: int, info) -> str | None:
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


def _fan_out_needed(rt: Runtime, tasks: list, fanout: bool) -> bool:
    return fanout and len(tasks) > rt.settings.predict_job_tasks and can_fan_out(rt)


def _add_new_tasks(rt, project, config, adapter, version, fresh, progress, phase_done) -> dict | None:
    """Add `fresh` tasks to the served version between their neighbours by usefulness; None when a gap is full."""
    ids = np.array([t.id for t in fresh], dtype=np.int64)
    # measured as the queue was (its labelled tasks, on its scale; its pool's class rarity): no listing, and
    # comparable with the queue's usefulness
    ranked = rank_pool(
        rt, project, ids, adapter, config, extras=False, reference=rt.store.served_reference(project, version), stream=int(ids.min()),
        rarity=rt.store.served_rarity(project, version),
    )
    scores = place_new_tasks(rt.store.served_tasks(project), ids, ranked["usefulness"])
    centroids = rt.store.served_centroids(project, version) if rt.settings.ls_clusters else None
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


def _reshape_head(rt: Runtime, project: int, config, adapter: Adapter, version: str) -> int:
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
    reference = rt.store.served_reference(project, version)
    reference = None if reference is None else reference.with_tasks([t for t in ids if states.get(t)])
    ranked = rank_pool(rt, project, window.task_ids[keep], adapter, config, reference=reference, rarity=rt.store.served_rarity(project, version))
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


def _rewrite(rt, project, config, adapter, queue: ServedQueue, served: ServedQueue | None, task_ids, progress, phase_done) -> dict:
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


def queue_ranking_key(settings: Settings, adapter: Adapter, label_config: str) -> str:
    """What besides the model decides a queue: policy, batch extras, serving filters, the label config."""
    return ranking_key(
        policy=settings.policy,
        seed=settings.policy_seed,
        # the policy's own parameters (pool.settings_policy): a change re-scores every task
        cost_per_image=settings.cost_per_image,
        novelty_weight=settings.novelty_weight,
        extras=batch_extras(settings, adapter.classes),
        filters=ServingFilters.from_settings(settings),
        trained=is_trained(adapter),
        label_config=label_config,
        clusters=settings.ls_clusters,
    )


def sync_all(*, runtime: Runtime | None = None) -> dict:
    """The scheduled job: sync every project in SYNC_PROJECTS and every project seen at /setup."""
    rt = runtime or current_runtime()
    projects = set(rt.settings.sync_projects)
    if rt.redis is not None:
        projects |= {int(p) for p in rt.redis.smembers(projects_key(rt.settings.adapter))}
    results = {}
    for project in sorted(projects):
        try:
            results[project] = sync_priorities(project, runtime=rt)["status"]
        except Exception as exc:  # one project's failure must not stop the others
            log.exception("scheduled sync of project %s failed", project)
            results[project] = f"failed: {exc}"
    return results


def projects_key(adapter: str) -> str:
    """The Redis set of the project ids that connected (/setup) to backends serving ADAPTER=`adapter`."""
    return f"ale:{adapter}:projects"


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
