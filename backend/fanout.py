"""Pool prediction spread over every predict worker, on any machine that reaches Redis.

A sync inside an rq job that finds more than PREDICT_JOB_TASKS tasks to
predict does not predict them itself: it enqueues them in chunks of
PREDICT_JOB_TASKS as `predict_chunk` jobs on the predict queue, and one
`sync_after_prediction` job on the sync queue that depends on all of them
(rq dependencies, released when each chunk has finished or finally failed).
Every `ale worker --queues predict` takes chunks. A chunk whose worker dies
is failed by the surviving workers' sweep (`jobqueue.recover_abandoned`) and
retried by rq; a chunk that still fails leaves its tasks to the following
sync, which predicts what is missing itself.

While chunks run, the project's fan-out flag holds the follow-up sync's job
id: later sync requests are covered by it and return at once, as long as
that job can still run (`follow_up_waits`). Each chunk renews the flag, so
it outlasts a fan-out of any length, and lapses soon after the last chunk
if the follow-up never comes.
"""

from __future__ import annotations

import logging
import uuid

from .jobqueue import ACTIVE, QUEUE_PREDICT, QUEUE_SYNC, RedisJobQueue
from .ls_client import TaskRef
from .ls_format import parse_label_config
from .pool import predict_missing
from .progress import Progress, _job_progress, publish
from .runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

#: Retries of a chunk whose worker was lost or that failed (interval 0: at once, on any worker).
CHUNK_RETRIES = 2
#: A chunk of a few hundred images runs for minutes on a CPU; far longer means its worker hangs.
CHUNK_TIMEOUT = 60 * 60
#: The fan-out flag lapses this long after it was raised or a chunk last renewed it (longer than a chunk may run).
FANOUT_TTL = 3 * 60 * 60


def fanout_flag(project: int) -> str:
    return f"sync-fanout:{project}"


def can_fan_out(rt: Runtime) -> bool:
    """Whether this process runs an rq job on Redis (the only place chunks can go to other workers)."""
    if rt.redis is None:
        return False
    try:
        from rq import get_current_job
    except ImportError:  # pragma: no cover - rq is a dependency
        return False
    return get_current_job() is not None


def fan_out(rt: Runtime, project: int, tasks: list[TaskRef], model_version: str) -> dict:
    """Enqueue `tasks` as prediction chunks and the sync that follows them. -> what was queued."""
    queue = RedisJobQueue(rt.redis, rt.settings.adapter)
    follow_id = uuid.uuid4().hex
    # The flag goes up before anything is queued: the follow-up sync lowers it when it starts.
    rt.raise_flag(fanout_flag(project), follow_id, FANOUT_TTL)
    size = rt.settings.predict_job_tasks
    chunk_ids = []
    try:
        for start in range(0, len(tasks), size):
            part = [(t.id, t.data) for t in tasks[start : start + size]]
            chunk_ids.append(
                queue.enqueue(
                    QUEUE_PREDICT, predict_chunk, project, model_version, part, follow_up=follow_id, retries=CHUNK_RETRIES, timeout=CHUNK_TIMEOUT
                )
            )
        queue.enqueue(
            QUEUE_SYNC, sync_after_prediction, project, model_version, follow_up=follow_id, retry=True, job_id=follow_id, depends_on=chunk_ids
        )
    except Exception:
        rt.take_flag_if(fanout_flag(project), follow_id)  # nothing follows: the next sync must not wait for it
        raise
    log.info("project %s: %d tasks to predict in %d jobs; sync job %s follows them", project, len(tasks), len(chunk_ids), follow_id)
    return {
        "chunks": chunk_ids,
        "follow_up": follow_id,
        "to_predict": len(tasks),
        "reason": f"{len(tasks)} tasks are predicted in {len(chunk_ids)} jobs on the predict workers; sync job {follow_id} writes the queue after them",
    }


def follow_up_waits(rt: Runtime, job_id: str) -> tuple[bool, str]:
    """Whether the follow-up sync `job_id` of a fan-out will still run. -> (it will, its state in words).

    It will while queued, scheduled or started, or deferred while a prediction job it depends on can still end and
    release it. rq releases a deferred job when its last remaining dependency ends (`Job.dependencies_are_met`): a
    dependency no longer stored counts as met (rq deletes a finished chunk after its result_ttl, so a long fan-out
    loses its first chunks long before its last), one finished or failed (the chunks are enqueued with allow_failure)
    is met, and one canceled or stopped holds the follow-up back for good. It will not run once it finished, failed,
    was canceled, stopped or deleted, or waits with no dependency left to release it.
    """
    if rt.redis is None:  # only an rq job fans out: nothing follows without Redis
        return False, "no job queue to run it"
    queue = RedisJobQueue(rt.redis, rt.settings.adapter)
    info = queue.info(job_id)
    if info is None:
        return False, "it is no longer in the job queue"
    if info.status not in ACTIVE:
        return False, f"it is {info.status}"
    if info.status != "deferred":
        return True, info.status
    from rq.exceptions import NoSuchJobError

    try:
        blocked, pending = _dependencies(rt, job_id)
    except NoSuchJobError:  # deleted since
        return False, "it is no longer in the job queue"
    if blocked:
        return False, f"it waits on prediction job {blocked[0]}, which is {blocked[1]}, so rq will never release it"
    if pending:
        return True, info.status
    # Its last chunk may have ended, and released it, since it was read as deferred.
    info = queue.info(job_id)
    if info is not None and info.status in ACTIVE and info.status != "deferred":
        return True, info.status
    return False, "it waits, but none of the prediction jobs it depends on is left to release it"


#: A dependency in one of these states still ends, and so may release the job that depends on it ("created": being queued).
_DEPENDENCY_PENDING = ("created", "queued", "started", "scheduled", "deferred")


def _dependencies(rt: Runtime, job_id: str) -> tuple[tuple[str, str] | None, int]:
    """What the deferred job `job_id` depends on, as rq's release reads it.

    -> (a dependency that keeps rq from ever releasing it and its state, or None; how many may still end).
    """
    from rq.job import Job

    job = Job.fetch(job_id, connection=rt.redis)
    met = ("finished", "failed") if job.allow_dependency_failures else ("finished",)
    ids = sorted(job.dependency_ids)  # rq's own record of them (the job's dependencies set)
    with rt.redis.pipeline() as pipe:
        for dep in ids:
            pipe.hget(Job.key_for(dep), "status")
        states = pipe.execute()
    pending = 0
    for dep, state in zip(ids, states):
        if state is None:  # no longer stored: rq skips it
            continue
        state = state.decode()
        if state in _DEPENDENCY_PENDING:
            pending += 1
        elif state not in met:
            return (dep, state), pending
    return None, pending


def predict_chunk(
    project: int, model_version: str, tasks: list[tuple[int, dict]], *, follow_up: str | None = None, runtime: Runtime | None = None,
    progress: Progress | None = None,
) -> dict:
    """Predict and store one chunk of a fanned-out pool, with the model version the sync saw.

    follow_up: the sync job after the chunks; the fan-out flag naming it is renewed while chunks run.
    """
    rt = runtime or current_runtime()
    if follow_up is not None:
        rt.renew_flag(fanout_flag(project), follow_up, FANOUT_TTL)
    try:
        return _predict_chunk(rt, project, model_version, tasks, progress)
    finally:
        if follow_up is not None:
            rt.renew_flag(fanout_flag(project), follow_up, FANOUT_TTL)  # a long chunk: FANOUT_TTL from its end


def _predict_chunk(rt: Runtime, project: int, model_version: str, tasks: list[tuple[int, dict]], progress: Progress | None) -> dict:
    adapter = rt.adapter_for(project)
    publish({"chunk": {"project": project, "tasks": len(tasks)}})
    if adapter.version != model_version:
        # another version is served since: the follow-up sync predicts for that one
        return {"status": "skipped", "reason": f"model {model_version} is no longer served ({adapter.version} is)", "tasks": len(tasks)}
    config = parse_label_config(rt.ls.project(project).label_config)
    refs = [TaskRef(int(task_id), dict(data)) for task_id, data in tasks]
    result = predict_missing(rt, project, config, refs, progress or _job_progress, adapter)
    return {"status": "predicted", **result}


def sync_after_prediction(
    project: int, model_version: str | None = None, *, follow_up: str | None = None, runtime: Runtime | None = None,
    progress: Progress | None = None,
) -> dict:
    """The sync that follows a fan-out of `model_version`'s predictions.

    Tasks no chunk stored are predicted here, not fanned out again. Where
    another version is served by now (a training promoted meanwhile: the
    chunks skipped), the whole pool is new to it, and it is fanned out anew
    rather than predicted by this one job on one worker.

    follow_up: this job's id, which the fan-out flag holds while it is to follow (a job queued without it: its rq id).
    It lowers the flag only while the flag still names it: a sync that found it unable to run took the flag, and
    a fan-out since raised it for a follow-up of its own, which still covers the requests that come meanwhile.
    """
    from .jobs import sync_priorities

    rt = runtime or current_runtime()
    own = follow_up or _current_job_id()
    if own is None:  # run outside a job: nothing else can name it
        rt.take_flag(fanout_flag(project))
    elif not rt.take_flag_if(fanout_flag(project), own):
        log.info(
            "project %s: the fan-out flag does not name sync job %s (a sync ran instead of it, and may have fanned out "
            "anew for a follow-up of its own): left as it is", project, own,
        )
    promoted = model_version is not None and rt.adapter_for(project).version != model_version
    return sync_priorities(project, runtime=rt, progress=progress, fanout=promoted)


def _current_job_id() -> str | None:
    """The id of the rq job this code runs in, if any."""
    from rq import get_current_job

    job = get_current_job()
    return None if job is None else job.id
