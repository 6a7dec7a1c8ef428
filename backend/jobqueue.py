"""Where jobs run: rq queues on Redis (`ale worker` processes), or in-process.

With REDIS_URL set, jobs go to rq queues that any number of `ale worker`
processes (on any machine reaching Redis) consume. Without it, the embedded
queue runs the same job functions on one background thread of this process.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

QUEUE_TRAIN = "train"
QUEUE_PREDICT = "predict"
QUEUE_SYNC = "sync"
#: The kinds of job; each adapter has one rq queue per kind (`queue_name`).
QUEUES = (QUEUE_TRAIN, QUEUE_PREDICT, QUEUE_SYNC)
#: Jobs in these states still count as "running" for deduplication.
ACTIVE = ("queued", "started", "scheduled", "deferred")
#: LS down: retry the sync after 10 s, 30 s, then 90 s.
SYNC_RETRY_INTERVALS = (10, 30, 90)
JOB_TIMEOUT = 6 * 60 * 60  # training on a CPU takes a while
#: `ale worker` proves a running job alive this often; a job not proven alive for
#: HEARTBEAT_TTL seconds lost its worker (killed, crashed, machine gone). rq alone
#: would keep it "started" for JOB_TIMEOUT, and Start Training would wait that long.
HEARTBEAT_INTERVAL = 10
#: Longer than a lock's lease (runtime.LOCK_LEASE): once a job is known dead, its locks are free.
HEARTBEAT_TTL = 75
#: The error of a job whose worker died, by what the job is and, for a training, how far it got (`abandoned_message`).
ABANDONED = "the worker running this job stopped (killed or crashed) before it finished; no model was trained or changed"
ABANDONED_SYNC = (
    "the worker running this sync stopped (killed or crashed) before it finished; no model was trained or changed. "
    "The next sync ranks the queue again: the scheduled one, or `ale sync --project <id>` now"
)
ABANDONED_SAVINGS = (
    "the worker recording these annotations' savings stopped (killed or crashed) before it finished; the next "
    "annotation of a task records it again, and `ale savings --project <id> --recompute` records every task now"
)
ABANDONED_TRAINING = (
    "the worker running this training stopped (killed or crashed) before it stored a new version; the served model "
    "is unchanged. Press Start Training again"
)
ABANDONED_TRAINING_STORED = (
    "the worker running this training stopped (killed or crashed) after it stored {version}, which is not served: "
    "`ale models --project {project}` lists it with its promotion decision, `ale models --project {project} --promote "
    "{version}` serves it; or press Start Training again"
)
ABANDONED_TRAINING_PROMOTED = (
    "the worker running this training stopped (killed or crashed) after it stored {version} and made it the served "
    "version, before its re-sync finished: the next sync (scheduled, or `ale sync --project {project}`) ranks the queue with it"
)
#: A training's job meta names the version it stored, once stored: {"project", "version", "served"}.
STORED_VERSION = "stored_version"


def abandoned_message(job) -> str:
    """The error of a job (an rq Job) whose worker died: true of what it is, and of how far a training got."""
    func, origin = (job.func_name or "").rsplit(".", 1)[-1], job.origin or ""
    if func == "train_project" or origin.endswith(f"-{QUEUE_TRAIN}"):
        stored = (job.meta or {}).get(STORED_VERSION)
        if not stored:
            return ABANDONED_TRAINING
        return (ABANDONED_TRAINING_PROMOTED if stored.get("served") else ABANDONED_TRAINING_STORED).format(**stored)
    if func in ("record_annotations", "record_tasks"):  # savings records, run on the sync queue
        return ABANDONED_SAVINGS
    if origin.endswith(f"-{QUEUE_SYNC}"):
        return ABANDONED_SYNC
    return ABANDONED


def alive_key(job_id: str) -> str:
    """Set with a short TTL while an `ale worker` runs the job."""
    return f"ale:job-alive:{job_id}"


def watched_key(job_id: str) -> str:
    """Set once when an `ale worker` starts the job: its heartbeat can be trusted (plain rq workers set none)."""
    return f"ale:job-watched:{job_id}"


def queue_name(adapter: str, kind: str) -> str:
    """The rq queue of `kind` jobs for a stack serving ADAPTER=`adapter`, e.g. "yolov5-train".

    Jobs load the adapter's framework, and TensorFlow and torch cannot share
    a process: a tfod stack and a yolov5 stack on one Redis must never take
    each other's jobs.
    """
    if kind not in QUEUES:
        raise ValueError(f"queue kind must be one of {', '.join(QUEUES)}, got {kind!r}")
    return f"{adapter}-{kind}"


_embedded = threading.local()


def current_embedded_job() -> "JobInfo | None":
    """The embedded queue's job running on this thread, if any (rq jobs have rq's get_current_job)."""
    return getattr(_embedded, "job", None)


def current_embedded_queue() -> "EmbeddedJobQueue | None":
    """The embedded queue whose thread this is, if any: a job it runs can queue another on it."""
    return getattr(_embedded, "queue", None)


@dataclass
class JobInfo:
    id: str
    name: str
    status: str  # queued, started, finished, failed
    result: object = None
    error: str | None = None
    meta: dict = field(default_factory=dict)


class RedisJobQueue:
    def __init__(self, redis, adapter: str):
        from rq import Queue

        self.redis = redis
        self.queues = {kind: Queue(queue_name(adapter, kind), connection=redis) for kind in QUEUES}

    def enqueue(
        self,
        kind: str,
        func: Callable,
        *args,
        retry: bool = False,
        job_id: str | None = None,
        retries: int = 0,
        timeout: int = JOB_TIMEOUT,
        depends_on: list[str] | None = None,
        **kwargs,
    ) -> str:
        """Queue `func(*args, **kwargs)` as a `kind` job (QUEUES) on this adapter's queue. -> job id (`job_id` if given).

        retry: LS may be down, retry after SYNC_RETRY_INTERVALS; retries: retry
        this many times at once (on any worker); depends_on: start once these
        jobs have finished or finally failed.
        """
        from rq import Retry
        from rq.job import Dependency

        options = {"job_timeout": timeout, "job_id": job_id}
        if retry:
            options["retry"] = Retry(max=len(SYNC_RETRY_INTERVALS), interval=list(SYNC_RETRY_INTERVALS))
        elif retries:
            options["retry"] = Retry(max=retries)
        if depends_on:
            options["depends_on"] = Dependency(jobs=list(depends_on), allow_failure=True)
        job = self.queues[kind].enqueue(func, args=args, kwargs=kwargs, **options)
        return job.id

    def info(self, job_id: str) -> JobInfo | None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.redis)
        except (NoSuchJobError, ValueError):  # ValueError: not an id rq could have made (rq validates before reading)
            return None
        status = job.get_status(refresh=True)
        error = None
        abandoned = status == "started" and is_abandoned(self.redis, job.id) and fail_abandoned(self.redis, job)
        # it may have finished meanwhile, or, abandoned with retries left, be queued again
        status = job.get_status(refresh=True)
        if status == "failed" and abandoned:
            error = abandoned_message(job)
        elif status == "failed":
            latest = job.latest_result()
            error = (latest.exc_string or "").strip().splitlines()[-1] if latest and latest.exc_string else "failed"
        return JobInfo(job.id, job.func_name, str(status.value if hasattr(status, "value") else status), job.return_value(), error, dict(job.meta))


#: Deletes each key (a job's alive and watched keys) only while it still names this worker (ARGV[1]).
_RELEASE_OWN_KEYS = """
for _, key in ipairs(KEYS) do
    if redis.call('get', key) == ARGV[1] then redis.call('del', key) end
end
"""


#: Renews a job's alive key (KEYS[1]) for ARGV[2] s, unless another worker's run of it holds the key now.
_RENEW_OWN_KEY = """
local holder = redis.call('get', KEYS[1])
if (not holder) or holder == ARGV[1] then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
"""


def renew_alive(redis, job_id: str, worker_name: str) -> None:
    """A running job's heartbeat; a late beat of a run that just failed never takes over its retry's key."""
    redis.eval(_RENEW_OWN_KEY, 1, alive_key(job_id), worker_name, HEARTBEAT_TTL)


def release_watch(redis, job_id: str, worker_name: str) -> None:
    """After a job ran: its alive and watched keys go, unless a retry on another worker holds them already.

    One script, so a job is never seen watched without its heartbeat.
    """
    redis.eval(_RELEASE_OWN_KEYS, 2, alive_key(job_id), watched_key(job_id), worker_name)


def is_abandoned(redis, job_id: str) -> bool:
    """An `ale worker` started the job and has stopped proving it alive."""
    # One read of both keys: a worker that finishes the job deletes both at once,
    # and two reads could see it watched, then not alive, and fail a finished job.
    watched, alive = redis.mget(watched_key(job_id), alive_key(job_id))
    return watched is not None and alive is None


def fail_abandoned(redis, job) -> bool:
    """Fail the job through rq's own path for abandoned jobs: callbacks, a retry if it has retries left, else the failed registry.

    -> False when rq no longer has it started (it finished meanwhile): nothing is failed.
    """
    from rq.registry import StartedJobRegistry

    registry = StartedJobRegistry(job.origin, connection=redis)
    entries = [e for e in redis.zrange(registry.key, 0, -1) if e.decode().split(":", 1)[0] == job.id]
    if not entries or job.get_status(refresh=True) != "started" or not is_abandoned(redis, job.id):
        return False
    # Every worker's sweep and every status read may find the same lost job at once: the one that removes
    # its registry entries fails it, the others stop here (two would retry it twice, and run it twice).
    claimed = [entry for entry in entries if redis.zrem(registry.key, entry)]
    if not claimed:
        return False
    redis.delete(watched_key(job.id))  # before a retry can start it again: that run is watched afresh
    redis.zadd(registry.key, {entry: 1 for entry in claimed})  # expired since 1970
    registry.cleanup(timestamp=1)
    log.warning("job %s (%s): %s", job.id, job.func_name, abandoned_message(job))
    return True


def recover_abandoned(redis, queue_names) -> list[str]:
    """Fail (and so retry, where rq has retries left) every started job of these queues whose worker is gone. -> their ids."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    found = []
    for name in queue_names:
        registry = StartedJobRegistry(name, connection=redis)
        for entry in redis.zrange(registry.key, 0, -1):
            job_id = entry.decode().split(":", 1)[0]
            if not is_abandoned(redis, job_id):
                continue
            try:
                failed = fail_abandoned(redis, Job.fetch(job_id, connection=redis))
            except NoSuchJobError:
                redis.zrem(registry.key, entry)
                continue
            if failed:
                found.append(job_id)
    return found


#: Jobs read at a time, newest first, while looking for one project's latest jobs.
SCAN_BATCH = 100
#: At most this many of a registry's newest jobs are read looking for one project's: the admin page stays quick.
SCAN_LIMIT = 2000


def job_project(job) -> int | None:
    """The project a job works on: its first argument, as the backend queues every per-project job; None for one of
    every project (the scheduled sync_all) or whose arguments cannot be read."""
    try:
        args = job.args
    except Exception:  # rq could not unpickle them: not a job of ours to place
        return None
    first = args[0] if args else None
    return first if isinstance(first, int) and not isinstance(first, bool) else None


def _latest_jobs(redis, ids: list[str], limit: int, project: int | None) -> list:
    """The last `limit` of `ids`' jobs still stored, oldest first; given `project`, of those that concern it (job_project)."""
    from rq.job import Job

    if project is None:
        return [job for job in Job.fetch_many(ids[-limit:], connection=redis) if job is not None]
    found: list = []
    end = len(ids)
    while end > 0 and len(found) < limit and len(ids) - end < SCAN_LIMIT:
        start = max(0, end - SCAN_BATCH)
        fetched = Job.fetch_many(ids[start:end], connection=redis)
        found = [job for job in fetched if job is not None and job_project(job) in (None, project)] + found
        end = start
    return found[-limit:]


def recent_jobs(redis, adapter: str, limit: int, project: int | None = None) -> list[dict]:
    """The adapter's queued, running, finished and failed jobs (the last `limit` of each), with progress or error.

    project: only that project's jobs and those of every project (sync_all); None: every job.
    -> [{"queue", "status", "id", "function", "detail"}], queue by queue.
    """
    from rq import Queue

    from .progress import describe_progress

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        # ids[-0:] is every id, and a negative limit drops the newest: neither is "the last `limit`"
        raise ValueError(f"limit (ale jobs --limit) must be a positive integer, got {limit!r}")
    rows = []
    for kind in QUEUES:
        name = queue_name(adapter, kind)
        queue = Queue(name, connection=redis)
        registries = (
            ("queued", queue.get_job_ids()),
            ("started", queue.started_job_registry.get_job_ids()),
            ("finished", queue.finished_job_registry.get_job_ids()),
            ("failed", queue.failed_job_registry.get_job_ids()),
        )
        for status, ids in registries:
            for job in _latest_jobs(redis, ids, limit, project):
                detail = describe_progress(job.meta)
                if status == "failed":
                    latest = job.latest_result()
                    detail = (latest.exc_string or "").strip().splitlines()[-1] if latest and latest.exc_string else "failed"
                rows.append({"queue": name, "status": status, "id": job.id, "function": job.func_name, "detail": detail})
    return rows


#: Finished and failed jobs the embedded queue remembers (the oldest are forgotten first), as rq keeps
#: results for a while: every annotation queues a job, and a full sync's result names every task.
EMBEDDED_JOBS_KEPT = 500


class EmbeddedJobQueue:
    """One daemon thread running jobs in order; enough for a small project without Redis.

    Jobs get this process's `runtime` passed in, instead of building one from the environment.
    """

    def __init__(self, runtime=None):
        self.runtime = runtime
        self._jobs: dict[str, JobInfo] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ale-embedded-jobs", daemon=True)
        self._thread.start()

    def enqueue(self, kind: str, func: Callable, *args, retry: bool = False, job_id: str | None = None, **kwargs) -> str:
        for option in ("retries", "timeout", "depends_on"):  # one thread runs jobs in order: nothing to retry or wait for
            kwargs.pop(option, None)
        job_id = job_id or uuid.uuid4().hex
        self._jobs[job_id] = JobInfo(job_id, f"{func.__module__}.{func.__name__}", "queued")
        if self.runtime is not None:
            kwargs = kwargs | {"runtime": self.runtime}
        self._queue.put((job_id, func, args, kwargs))
        return job_id

    def info(self, job_id: str) -> JobInfo | None:
        return self._jobs.get(job_id)

    def join(self) -> None:
        self._queue.join()

    def _run(self) -> None:
        _embedded.queue = self
        while True:
            job_id, func, args, kwargs = self._queue.get()
            info = self._jobs[job_id]
            info.status = "started"
            _embedded.job = info
            try:
                info.result = func(*args, **kwargs)
                info.status = "finished"
            except Exception as exc:
                log.exception("job %s (%s) failed", job_id, info.name)
                info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                _embedded.job = None
                self._forget_oldest_done()
                self._queue.task_done()

    def _forget_oldest_done(self) -> None:
        done = [job_id for job_id, info in list(self._jobs.items()) if info.status in ("finished", "failed")]
        for job_id in done[: max(0, len(done) - EMBEDDED_JOBS_KEPT)]:
            self._jobs.pop(job_id, None)


def make_job_queue(runtime) -> RedisJobQueue | EmbeddedJobQueue:
    if runtime.redis is not None:
        return RedisJobQueue(runtime.redis, runtime.settings.adapter)
    return EmbeddedJobQueue(runtime)
