"""Background jobs: predict the pool, and keep Label Studio's queue ranked.

Both run the same way on an rq worker (`ale worker`) and in-process (the
embedded queue); they take a project id and find everything else through the
process `Runtime`.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from .adapters import Adapter, check_policy_fits, is_trained
from .detection_store import StoredDetections
from .detections import Detections
from .errors import AleError
from .jobqueue import QUEUE_SYNC
from .ls_client import LabelStudioError, TaskRef
from .ls_format import detections_to_results, match_labels, parse_label_config
from .media import MediaFetcher, average_hash
from .policies import get_policy
from .predictor import Predictor
from .ranking import BatchExtras, ls_scores, select_order, spread_order
from .runtime import Runtime, current_runtime
from .serving import ServingFilters, raw_output_key, shown_classes, shown_detections
from .settings import Settings

log = logging.getLogger(__name__)

#: Prefix of the prediction versions the sync writes; only these are ever deleted.
SYNC_VERSION_PREFIX = "ale:"
#: The order a sync writes while the serving model is untrained (see ranking.spread_order).
SPREAD_POLICY = "spread (untrained model: farthest-first on image hashes)"
#: A queued sync covers new requests this long at most: a job lost from the queue cannot hold syncs back for longer.
SYNC_QUEUED_TTL = 30 * 60
#: Per-task reasons a job result carries at most (all are logged).
REPORTED_ERRORS = 20
PREDICT_CHUNK = 64  # at most this many images per step (PREDICT_CHUNK_PIXELS bounds their pixels)

Progress = Callable[[str, int, int], None]


class SyncError(AleError):
    status = 502


def predict_pool(project: int, task_ids: list[int] | None = None, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """Predict every unlabeled task (or `task_ids`) lacking detections for the current model version."""
    rt = runtime or current_runtime()
    progress = progress or _job_progress
    info = rt.ls.project(project)
    wanted = None if task_ids is None else set(task_ids)
    tasks = [t for t in rt.ls.unlabeled_tasks(project) if wanted is None or t.id in wanted]
    return _predict_missing(rt, project, parse_label_config(info.label_config), tasks, progress, rt.adapter_for(project))


def _predict_missing(rt: Runtime, project: int, config, tasks: list[TaskRef], progress: Progress, adapter: Adapter) -> dict:
    """Store what `adapter` produces for every task that has nothing stored for it yet (or only an error)."""
    key = raw_output_key(adapter.version, rt.settings)
    stored = rt.store.get_many(project, key, [t.id for t in tasks])
    missing = [t for t in tasks if t.id not in stored or stored[t.id].error is not None]
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
                items.append(StoredDetections(task.id, None, None, reason))
            else:
                items.append(StoredDetections(task.id, found[i], average_hash(image), None))
        rt.store.put_many(project, key, items)
        done += len(chunk.images)
        progress("predict", done, len(missing))
    return {"model_version": adapter.version, "tasks": len(tasks), "predicted": len(missing) - failed, "failed": failed, "errors": errors}


def rank_pool(rt: Runtime, project: int, tasks: list[TaskRef], adapter: Adapter, config) -> dict:
    """Score and order what annotators would be shown of `tasks`. Returns arrays aligned with `tasks`.

    Uses what `adapter` stored for the tasks, through the serving filters of
    the current settings and narrowed to the classes `config` has labels for
    (`serving.shown_detections`, the same as /predict).
    """
    stored = rt.store.get_many(project, raw_output_key(adapter.version, rt.settings), [t.id for t in tasks])
    shown = shown_classes(match_labels(adapter.classes, config))
    filters = ServingFilters.from_settings(rt.settings)
    num_classes = len(adapter.classes)
    detections, hashes, usable = [], [], []
    for task in tasks:
        item = stored.get(task.id)
        ok = item is not None and item.detections is not None
        detections.append(shown_detections(item.detections, shown, filters) if ok else Detections.empty(num_classes, (1, 1)))
        hashes.append(item.image_hash if ok else None)
        usable.append(ok)
    usable = np.array(usable, dtype=bool)
    task_ids = np.array([t.id for t in tasks])
    if not is_trained(adapter):
        # An untrained model's uncertainty is noise: cover the pool's look first, not its import order.
        order, spread = spread_order(hashes, task_ids)
        usefulness = np.where(usable, spread, -np.inf)
        return {"policy": SPREAD_POLICY, "detections": detections, "usefulness": usefulness, "order": order, "usable": usable}
    check_policy_fits(adapter, rt.settings.policy)
    policy = get_policy(rt.settings.policy, rt.settings.policy_seed)
    usefulness = policy.usefulness(detections) if tasks else np.zeros(0)
    # Images that could not be fetched or decoded have no usefulness: they go to the very end of the queue.
    usefulness = np.where(usable, usefulness, -np.inf)
    extras = batch_extras(rt.settings, adapter.classes)
    order = select_order(usefulness, task_ids, detections, hashes, extras, usable)
    return {"policy": policy.name, "detections": detections, "usefulness": usefulness, "order": order, "usable": usable}


def preview_ranking(project: int, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """The queue a sync would write, without writing it.

    -> {"policy", "model", "trained", "rows": one per unlabeled task, in order}.
    """
    rt = runtime or current_runtime()
    config = parse_label_config(rt.ls.project(project).label_config)
    adapter = rt.adapter_for(project)
    tasks = list(rt.ls.unlabeled_tasks(project))
    _predict_missing(rt, project, config, tasks, progress or _job_progress, adapter)
    ranked = rank_pool(rt, project, tasks, adapter, config)
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
                "ls_score": float(scores[i]),
            }
        )
    return {"policy": ranked["policy"], "model": adapter.version, "trained": is_trained(adapter), "rows": rows}


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


def sync_priorities(project: int, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """Rewrite LS's queue for `project`: one prediction per unlabeled task, ranked, switched atomically.

    The new predictions go in under a fresh prediction version; only when LS
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
    # Raised before trying the lock: a holder checks the flag after releasing the lock, so it cannot miss it.
    rt.raise_flag(pending)
    result, runs = None, 0
    while True:
        with rt.lock(f"sync:{project}") as acquired:
            if not acquired or not rt.take_flag(pending):
                break  # the holder runs it, or a sync that began after this request already did
            result = _sync(rt, project, progress)
            runs += 1
        _delete_stale(rt, project, result)
        if not rt.flag_raised(pending):
            break
    if result is None:
        log.info("project %s: a sync is already running; it will run once more to cover this request", project)
        return {"status": "coalesced", "reason": "a sync of this project is running; it runs once more when done, covering this request"}
    result["runs"] = runs
    return result


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


def _sync(rt: Runtime, project: int, progress: Progress) -> dict:
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    # "load" pays the first use of the LS client and of the model (imports, weights), so "list" is listing alone.
    info = rt.ls.project(project)
    config = parse_label_config(info.label_config)
    # One model for the whole sync: a version promoted meanwhile is served by the next sync, never mixed into this one.
    adapter = rt.adapter_for(project)
    label_map = match_labels(adapter.classes, config)
    phase_done("load")
    tasks = list(rt.ls.unlabeled_tasks(project))
    previous = [v for v in _versions(rt, project) if v.startswith(SYNC_VERSION_PREFIX)]
    phase_done("list")
    if not tasks:
        log.info("project %s: no unlabeled task left; the served version %s is kept", project, info.model_version or "(none)")
        return {
            "status": "nothing to rank",
            "reason": "no unlabeled task is left; the served version and its predictions are kept",
            "project": project,
            "model_version": info.model_version,
            "tasks": 0,
            "stale_versions": [],
            "phases": phases,
        }
    predicted = _predict_missing(rt, project, config, tasks, progress, adapter)
    phase_done("predict")
    ranked = rank_pool(rt, project, tasks, adapter, config)
    scores = ls_scores(ranked["order"])
    phase_done("score")

    version = f"{SYNC_VERSION_PREFIX}{adapter.version}:{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
    items = [
        {
            "task": task.id,
            "result": detections_to_results(det, label_map, config) if usable else [],
            "score": float(score),
            "model_version": version,
        }
        for task, det, usable, score in zip(tasks, ranked["detections"], ranked["usable"], scores)
    ]
    chunk_size = rt.settings.import_chunk_size
    try:
        progress("import", 0, len(items))
        for start in range(0, len(items), chunk_size):
            rt.ls.import_predictions(project, items[start : start + chunk_size])
            progress("import", min(start + chunk_size, len(items)), len(items))
        phase_done("import")
        rt.ls.switch_queue(project, version)
        phase_done("switch")
    except Exception as exc:
        _discard(rt, project, version)
        raise SyncError(f"sync of project {project} failed before switching; the previous order stays: {exc}") from exc

    order_ids = [tasks[i].id for i in ranked["order"]]
    log.info("project %s: queue synced, %d tasks, version %s, phases %s", project, len(tasks), version, phases)
    return {
        "status": "synced",
        "project": project,
        "model_version": version,
        "served_model": adapter.version,
        "policy": ranked["policy"],
        "tasks": len(tasks),
        "unusable": int((~ranked["usable"]).sum()),
        "order": order_ids,
        # None for an image that could not be used (it is last in the queue)
        "usefulness": {
            task.id: float(value) if ok else None for task, value, ok in zip(tasks, ranked["usefulness"], ranked["usable"])
        },
        "predicted": predicted,
        "stale_versions": previous,
        "phases": phases,
    }


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
        # A switch whose answer was lost may have taken effect: never delete what is being served.
        if rt.ls.project(project).model_version != version:
            rt.ls.delete_model_version(project, version)
    except Exception:  # LS may be the thing that failed; the next sync cleans up
        log.warning("project %s: could not remove partial version %s yet", project, version)


def batch_extras(s: Settings, model_classes) -> BatchExtras:
    """The queue-shaping extras configured in the settings, for a model with these classes."""
    classes = {name.lower(): i for i, name in enumerate(model_classes)}
    balance = {}
    for name, share in s.class_balance:
        if name.lower() not in classes:
            raise ValueError(f"CLASS_BALANCE names {name!r}, which is not a model class ({', '.join(model_classes)})")
        balance[classes[name.lower()]] = share
    return BatchExtras(
        batch_size=s.sync_batch_size,
        exploration=s.exploration_fraction,
        empty_quota=s.empty_quota,
        class_balance=balance,
        duplicate_distance=s.duplicate_distance,
        seed=s.policy_seed,
    )


def _job_progress(phase: str, done: int, total: int, metrics: dict | None = None) -> None:
    """Inside a job: publish progress in its meta (read by `ale jobs` and GET /jobs/<id>).

    A training's epoch record is kept apart under "training", so it survives
    the sync that follows it; its figures are the trainer's own for that
    epoch (losses, and the trainer's validation where it ran one), which are
    not the stored version's evaluation (published as "evaluation").
    """
    record = {"progress": {"phase": phase, "done": done, "total": total}}
    if phase == "train":
        record["training"] = {"epoch": done, "epochs": total, "trainer_metrics": metrics or {}, "note": TRAINER_METRICS_NOTE}
    publish(record)


def describe_progress(meta: dict) -> str:
    """One line for `ale jobs`: a training's epochs and its stored evaluation stay visible after its re-sync."""
    progress = meta.get("progress")
    line = f"{progress['phase']} {progress['done']}/{progress['total']}" if progress else ""
    training, evaluation = meta.get("training"), meta.get("evaluation")
    if evaluation:
        verdict = "promoted" if evaluation["promoted"] else "not promoted"
        trained = (
            f"trained {evaluation['version']}: mAP50 {evaluation['map50']:.3f} on {evaluation['images']} validation images "
            f"({evaluation['boxes']} boxes), {verdict}"
        )
        return trained if not progress or progress["phase"] == "train" else f"{trained}; then {line}"
    if training:
        return f"epoch {training['epoch']}/{training['epochs']}" + ("" if progress["phase"] == "train" else f"; {line}")
    return line


TRAINER_METRICS_NOTE = "the trainer's own per-epoch figures; the stored version's evaluation is under 'evaluation'"


def publish(record: dict) -> None:
    """Inside a job (rq or embedded): merge `record` into the job's meta. Outside a job: nothing."""
    from .jobqueue import current_embedded_job

    embedded = current_embedded_job()
    if embedded is not None:
        embedded.meta.update(record)
        return
    try:
        from rq import get_current_job
    except ImportError:
        return
    job = get_current_job()
    if job is not None:
        job.meta.update(record)
        job.save_meta()
