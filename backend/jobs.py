"""Background jobs: predict the pool, and keep Label Studio's queue ranked.

Both run the same way on an rq worker (`ale worker`) and in-process (the
embedded queue); they take a project id and find everything else through the
process `Runtime`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from .adapters import check_policy_fits
from .detection_store import StoredDetections
from .detections import Detections
from .errors import AleError
from .ls_client import LabelStudioError, TaskRef
from .ls_format import detections_to_results, match_labels, parse_label_config
from .media import MediaFetcher, average_hash
from .policies import get_policy
from .predictor import Predictor
from .ranking import BatchExtras, ls_scores, select_order
from .runtime import Runtime, current_runtime
from .settings import Settings

log = logging.getLogger(__name__)

#: Prefix of the prediction versions the sync writes; only these are ever deleted.
SYNC_VERSION_PREFIX = "ale:"
PREDICT_CHUNK = 64  # images fetched and predicted per step (bounds memory)

Progress = Callable[[str, int, int], None]


class SyncError(AleError):
    status = 502


def predict_pool(project: int, task_ids: list[int] | None = None, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """Predict every unlabeled task (or `task_ids`) lacking detections for the current model version."""
    rt = runtime or current_runtime()
    progress = progress or _job_progress
    info = rt.ls.project(project)
    tasks = [t for t in rt.ls.unlabeled_tasks(project) if task_ids is None or t.id in set(task_ids)]
    return _predict_missing(rt, project, parse_label_config(info.label_config), tasks, progress)


def _predict_missing(rt: Runtime, project: int, config, tasks: list[TaskRef], progress: Progress) -> dict:
    adapter = rt.adapter_for(project)
    version = adapter.version
    stored = rt.store.get_many(project, version)
    missing = [t for t in tasks if t.id not in stored or stored[t.id].error is not None]
    predictor = Predictor(rt.settings, adapter, MediaFetcher(rt.settings, rt.ls))
    failed = 0
    progress("predict", 0, len(missing))
    for start in range(0, len(missing), PREDICT_CHUNK):
        chunk = missing[start : start + PREDICT_CHUNK]
        images, errors = predictor.fetch_images([{"id": t.id, "data": t.data} for t in chunk], config)
        ready = [i for i in range(len(chunk)) if images[i] is not None]
        found = dict(zip(ready, predictor.detect([images[i] for i in ready])))
        items = []
        for i, task in enumerate(chunk):
            if i in errors:
                failed += 1
                log.warning("project %s task %s: not predicted: %s", project, task.id, errors[i])
                items.append(StoredDetections(task.id, None, None, errors[i]))
            else:
                items.append(StoredDetections(task.id, found[i], average_hash(images[i]), None))
        rt.store.put_many(project, version, items)
        progress("predict", min(start + PREDICT_CHUNK, len(missing)), len(missing))
    return {"model_version": version, "tasks": len(tasks), "predicted": len(missing) - failed, "failed": failed}


def rank_pool(rt: Runtime, project: int, tasks: list[TaskRef]) -> dict:
    """Score and order the stored detections of `tasks`. Returns arrays aligned with `tasks`."""
    adapter = rt.adapter_for(project)
    stored = rt.store.get_many(project, adapter.version, [t.id for t in tasks])
    num_classes = len(adapter.classes)
    detections, hashes, usable = [], [], []
    for task in tasks:
        item = stored.get(task.id)
        ok = item is not None and item.detections is not None
        detections.append(item.detections if ok else Detections.empty(num_classes, (1, 1)))
        hashes.append(item.image_hash if ok else None)
        usable.append(ok)
    check_policy_fits(adapter, rt.settings.policy)
    policy = get_policy(rt.settings.policy, rt.settings.policy_seed)
    usefulness = policy.usefulness(detections) if tasks else np.zeros(0)
    # Images that could not be fetched or decoded go to the very end of the queue.
    usefulness = np.where(np.array(usable, dtype=bool), usefulness, -np.inf) if tasks else usefulness
    order = select_order(usefulness, np.array([t.id for t in tasks]), detections, hashes, batch_extras(rt.settings, adapter.classes))
    return {"policy": policy.name, "detections": detections, "usefulness": usefulness, "order": order, "usable": usable}


def preview_ranking(project: int, *, runtime: Runtime | None = None, progress: Progress | None = None) -> list[dict]:
    """The queue a sync would write, without writing it: one row per unlabeled task, in order."""
    rt = runtime or current_runtime()
    config = parse_label_config(rt.ls.project(project).label_config)
    tasks = list(rt.ls.unlabeled_tasks(project))
    _predict_missing(rt, project, config, tasks, progress or _job_progress)
    ranked = rank_pool(rt, project, tasks)
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
    return rows


def sync_priorities(project: int, *, runtime: Runtime | None = None, progress: Progress | None = None) -> dict:
    """Rewrite LS's queue for `project`: one prediction per unlabeled task, ranked, switched atomically.

    The new predictions go in under a fresh prediction version; only when LS
    has created every one is the project switched to it (model_version and
    Uncertainty sampling in one PATCH). Until then the previous order stays in
    force; on failure the partial version is removed. Older versions written
    by this backend are deleted after the switch.
    """
    rt = runtime or current_runtime()
    progress = progress or _job_progress
    with rt.lock(f"sync:{project}") as acquired:
        if not acquired:
            log.info("project %s: a sync is already running; skipped", project)
            return {"status": "skipped", "reason": "another sync of this project is running"}
        result = _sync(rt, project, progress)
    # Deleting predictions is slow in LS (~7 ms each) and does not affect the
    # order served, so it runs after the lock is released. Only versions that
    # existed before this sync started are deleted: a later sync's version,
    # possibly still importing, is never touched.
    started = time.perf_counter()
    result["deleted_versions"] = []
    for old in result.pop("stale_versions"):
        try:
            rt.ls.delete_model_version(project, old)
            result["deleted_versions"].append(old)
        except Exception as exc:  # left for the next sync to remove
            log.warning("project %s: could not delete old version %s: %s", project, old, exc)
    result["phases"]["cleanup"] = round(time.perf_counter() - started, 3)
    return result


def _sync(rt: Runtime, project: int, progress: Progress) -> dict:
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    info = rt.ls.project(project)
    config = parse_label_config(info.label_config)
    adapter = rt.adapter_for(project)
    label_map = match_labels(adapter.classes, config)
    tasks = list(rt.ls.unlabeled_tasks(project))
    previous = [v for v in _versions(rt, project) if v.startswith(SYNC_VERSION_PREFIX)]
    phase_done("list")
    predicted = _predict_missing(rt, project, config, tasks, progress)
    phase_done("predict")
    ranked = rank_pool(rt, project, tasks)
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
        if items:
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
        "policy": ranked["policy"],
        "tasks": len(tasks),
        "order": order_ids,
        "usefulness": {tasks[i].id: float(ranked["usefulness"][i]) for i in range(len(tasks))},
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

    A training's epoch record is kept apart, so it survives the sync that follows it.
    """
    from .jobqueue import current_embedded_job

    record = {"progress": {"phase": phase, "done": done, "total": total}}
    if phase == "train":
        record["training"] = {"epoch": done, "epochs": total, "metrics": metrics or {}}
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
