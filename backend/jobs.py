"""Background jobs: predict the pool, and keep Label Studio's queue ranked.

Both run the same way on an rq worker (`ale worker`) and in-process (the
embedded queue); they take a project id and find everything else through the
process `Runtime`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import numpy as np

from .adapters import Adapter, is_trained
from .detection_store import ServedQueue
from .fanout import FANOUT_TTL, can_fan_out, fan_out, fanout_flag, follow_up_waits
from .jobqueue import QUEUE_SYNC, current_embedded_queue
from .ls_client import LabelStudioError
from .ls_format import parse_label_config
from .pool import SPREAD_POLICY, batch_extras, is_stored, predict_missing, predict_pool, preview_ranking, rank_pool, stored_refs  # noqa: F401 (re-exported)
from .progress import TRAINER_METRICS_NOTE, Progress, _job_progress, describe_progress, publish  # noqa: F401 (re-exported)
from .queue_update import ranking_key
from .queue_writes import SYNC_VERSION_PREFIX, SyncError  # noqa: F401 (re-exported)
from .queue_writes import add_new_tasks, reshape_head, restore_sampling, rewrite_queue, unusable_recovered
from .runtime import Runtime, current_runtime
from .serving import ServingFilters, raw_output_key
from .settings import Settings

log = logging.getLogger(__name__)

#: A queued sync covers new requests this long at most: a job lost from the queue cannot hold syncs back for longer.
SYNC_QUEUED_TTL = 30 * 60
#: Without Redis, a sync waits this long for one of the same project running in another process (`ale serve`,
#: `ale sync`): that process cannot see this one's requests, so it would not run once more to cover them.
OTHER_PROCESS_WAIT = 60 * 60
#: A sync the embedded queue runs does not wait for another process's: the queue's one thread runs every job of
#: `ale serve` (savings, Start Training, other projects' syncs), which would all wait behind it. It is requested
#: again this many seconds later instead, until the other process is done or OTHER_PROCESS_WAIT has passed.
ELSEWHERE_RETRY = 30


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
    embedded = current_embedded_queue()
    result, runs = None, 0
    while True:
        with rt.lock(f"sync:{project}", wait_elsewhere=0 if embedded is not None else OTHER_PROCESS_WAIT) as acquired:
            if acquired.elsewhere:
                later = None if embedded is None else _sync_later(embedded, rt, project, acquired.holder)
                if later is not None:
                    return later
                raise SyncError(
                    f"project {project} was not synced: another process (pid {acquired.holder or 'unknown'}) sharing MODEL_DIR "
                    f"has been syncing it for over {OTHER_PROCESS_WAIT / 60:g} minutes ({rt.lock_path(f'sync:{project}')}); "
                    f"let it finish or stop it, then run `ale sync --project {project}`"
                )
            if acquired and embedded is not None:
                rt.take_flag(elsewhere_flag(project))  # the other process is done: a later refusal waits afresh
            if not acquired or not rt.take_flag(pending):
                break  # the holder runs it, or a sync that began after this request already did
            rewrite = rt.take_flag(full_sync_flag(project))
            try:
                latest = _sync(rt, project, progress, full=rewrite, fanout=fanout)
            except Exception:
                if rewrite:  # the retry, or the next sync, still owes the rewrite
                    rt.raise_flag(full_sync_flag(project))
                raise
            if rewrite and latest["status"] in ("coalesced", "predicting"):
                rt.raise_flag(full_sync_flag(project))  # handed to the sync that follows the fan-out: it owes the rewrite
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


def _sync_later(queue, rt: Runtime, project: int, holder: str) -> dict | None:
    """A sync of the embedded queue refused because another process syncs `project`: request it again in
    ELSEWHERE_RETRY s. -> its answer; None once that process has held the project for OTHER_PROCESS_WAIT (it fails).

    Its pending flag (and a full rewrite's) stay raised for the sync requested again. One request is on its way at a
    time, however many syncs are refused meanwhile.
    """
    now = time.time()
    since = rt.claim_flag(elsewhere_flag(project), repr(now), int(2 * OTHER_PROCESS_WAIT) + 1)
    if since is not None and now - float(since) >= OTHER_PROCESS_WAIT:
        rt.take_flag(elsewhere_flag(project))
        return None
    if rt.claim_flag(sync_again_flag(project), "1", int(2 * ELSEWHERE_RETRY) + 60) is None:
        timer = threading.Timer(ELSEWHERE_RETRY, _request_again, (queue, rt, project))
        timer.daemon = True
        timer.start()
    log.info("project %s: another process (pid %s) is syncing it; this sync runs again in %g s", project, holder or "unknown", ELSEWHERE_RETRY)
    return {
        "status": "postponed",
        "reason": (
            f"another process (pid {holder or 'unknown'}) sharing MODEL_DIR is syncing project {project} "
            f"({rt.lock_path(f'sync:{project}')}); this sync is queued again every {ELSEWHERE_RETRY:g} s until that one is done "
            f"(for {OTHER_PROCESS_WAIT / 60:g} minutes at most)"
        ),
    }


def _request_again(queue, rt: Runtime, project: int) -> None:
    rt.take_flag(sync_again_flag(project))
    try:
        request_sync(queue, rt, project)
    except Exception:  # nothing can report it: the next request (a webhook, `ale sync`) syncs the project
        log.exception("project %s: the sync postponed for another process's could not be queued again", project)


def elsewhere_flag(project: int) -> str:
    """Raised, holding the time, when a sync of the embedded queue first found another process syncing `project`."""
    return f"sync-elsewhere:{project}"


def sync_again_flag(project: int) -> str:
    """Raised while a sync postponed for another process's is to be queued again."""
    return f"sync-again:{project}"


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
        waits, state = follow_up_waits(rt, follow_up)
        if waits:
            rt.renew_flag(fanout_flag(project), follow_up, FANOUT_TTL)  # chunks may wait behind a long training
            return {
                "status": "coalesced",
                "reason": f"the pool is being predicted in parallel jobs; sync job {follow_up} ({state}) follows them and covers this request",
                "follow_up": follow_up,
                "stale_versions": [],
                "phases": phases,
            }
        log.warning("project %s: sync job %s was to follow the pool's prediction jobs, but %s; this sync runs instead", project, follow_up, state)
        rt.take_flag_if(fanout_flag(project), follow_up)
    # "load" pays the first use of the LS client and of the model (imports, weights), so "list" is listing alone.
    info = rt.ls.project(project)
    config = parse_label_config(info.label_config)
    # One model for the whole sync: a version promoted meanwhile is served by the next sync, never mixed into this one.
    adapter = rt.adapter_for(project)
    raw_key = raw_output_key(adapter.version, rt.settings)
    queue = ServedQueue(info.model_version, raw_key, queue_ranking_key(rt.settings, adapter, info.label_config))
    served = rt.store.served_queue(project)  # read even when `full`: its detections are kept, as the previous model's
    current = not full and served == queue and bool(info.model_version)
    phase_done("load")
    if current and unusable_recovered(rt, project, config, adapter, progress):
        log.info("project %s: images that could not be used before can be now; rewriting the queue", project)
        current = False
    if current:
        restored = restore_sampling(rt, project, info)
        # Task ids only grow: the tasks created since the served queue are those above its last one.
        last = rt.store.served_last_task(project)
        fresh = list(rt.ls.unlabeled_tasks(project, after_id=last))
        phase_done("list")
        base = {"project": project, "served_model": adapter.version, "new_tasks": len(fresh), "stale_versions": [], "phases": phases}
        if restored:
            base["sampling_restored"] = restored
        if not fresh:
            reshaped = reshape_head(rt, project, config, adapter, info.model_version)
            if reshaped:
                phase_done("reshape")
                return {**base, "status": "reshaped", "model_version": info.model_version, "written": reshaped}
            if restored:
                return {
                    **base, "status": "sampling_restored", "model_version": info.model_version, "written": 0,
                    "reason": f"its sampling was {restored!r} in Label Studio; set back to Uncertainty sampling, which serves the ranked queue",
                }
            log.info("project %s: no task since version %s was served; nothing written", project, info.model_version)
            return {**base, "status": "unchanged", "model_version": info.model_version, "written": 0}
        if _fan_out_needed(rt, fresh, fanout):
            return {**base, "status": "predicting", "model_version": info.model_version, "written": 0, **fan_out(rt, project, fresh, adapter.version)}
        predicted = predict_missing(rt, project, config, fresh, progress, adapter)
        phase_done("predict")
        if is_trained(adapter):
            updated = add_new_tasks(rt, project, config, adapter, info.model_version, fresh, progress, phase_done)
            if updated is not None:
                return {**base, **updated, "predicted": predicted}
            log.info("project %s: no room left between scores for the new tasks; rewriting the queue", project)
        del fresh
    # Listed page by page; only the tasks without stored detections of the image they point at keep their data.
    known = stored_refs(rt, project, raw_key, adapter)
    task_ids, fresh = [], []
    for task in rt.ls.unlabeled_tasks(project):
        task_ids.append(task.id)
        if not is_stored(known, task, config):
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
    return {**base, **rewrite_queue(rt, project, config, adapter, queue, served, task_ids, progress, phase_done), "predicted": predicted}


def _fan_out_needed(rt: Runtime, tasks: list, fanout: bool) -> bool:
    return fanout and len(tasks) > rt.settings.predict_job_tasks and can_fan_out(rt)


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
    """The scheduled job: sync every project in SYNC_PROJECTS and every project seen at /setup.

    A project Label Studio answers 404 for leaves the set of projects seen at /setup, said once in the log, only
    once LS's own list of projects confirms it is not there (`_drop_gone`); its next /setup would bring it back. One
    in SYNC_PROJECTS stays: the result says to remove it there.
    """
    rt = runtime or current_runtime()
    listed = set(rt.settings.sync_projects)
    projects = set(listed)
    key = projects_key(rt.settings.adapter)
    if rt.redis is not None:
        projects |= {int(p) for p in rt.redis.smembers(key)}
    results, gone = {}, {}
    for project in sorted(projects):
        try:
            results[project] = sync_priorities(project, runtime=rt)["status"]
        except Exception as exc:  # one project's failure must not stop the others
            if _project_gone(exc) and project not in listed and rt.redis is not None:
                gone[project] = exc
                continue
            log.exception("scheduled sync of project %s failed", project)
            if _project_gone(exc):
                exc = f"{exc}; remove {project} from SYNC_PROJECTS"
            results[project] = f"failed: {exc}"
    if gone:
        results |= _drop_gone(rt, key, gone)
    return results


def _drop_gone(rt: Runtime, key: str, gone: dict[int, BaseException]) -> dict:
    """Drop from the set `key` those of the projects LS answered 404 for (project -> its error) that LS's list of
    projects does not hold. -> each one's result.

    A 404 alone is not proof: LABEL_STUDIO_URL with a wrong path (a reverse proxy's) answers 404 for every project,
    and one scheduled sync would drop them all. Where the list cannot be read, every one is kept.
    """
    try:
        known = rt.ls.project_ids(list(gone))
    except Exception as exc:
        log.warning(
            "projects %s: Label Studio answered 404 for each, but its list of projects could not be read to confirm they "
            "are gone, so scheduled syncs keep them: %s", ", ".join(map(str, sorted(gone))), exc,
        )
        return {project: f"failed: {error}; kept: its absence could not be confirmed ({exc})" for project, error in gone.items()}
    results = {}
    for project, error in sorted(gone.items()):
        if project in known:
            log.warning("scheduled sync of project %s: Label Studio answered 404 for it, yet lists it among its projects: %s", project, error)
            results[project] = f"failed: {error}; kept: Label Studio lists project {project} among its projects"
            continue
        rt.redis.srem(key, project)
        log.warning(
            "project %s is not among the projects Label Studio lists for LABEL_STUDIO_API_KEY's user (deleted, or in "
            "another organization than the user's active one): scheduled syncs skip it from now on (a project joins "
            "them again at its next /setup, when it connects to this backend)", project,
        )
        results[project] = f"dropped: {error}"
    return results


def _project_gone(exc: BaseException) -> bool:
    """Whether `exc` is Label Studio answering 404 for the project itself (the client's LabelStudioError over it)."""
    return isinstance(exc, LabelStudioError) and getattr(exc.__cause__, "status_code", None) == 404


def projects_key(adapter: str) -> str:
    """The Redis set of the project ids that connected (/setup) to backends serving ADAPTER=`adapter`."""
    return f"ale:{adapter}:projects"


