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

    def enqueue(self, queue_name: str, func: Callable, *args, retry: bool = False, **kwargs) -> str:
        from rq import Retry

        options = {"job_timeout": JOB_TIMEOUT}
        if retry:
            options["retry"] = Retry(max=len(SYNC_RETRY_INTERVALS), interval=list(SYNC_RETRY_INTERVALS))
        job = self.queues[queue_name].enqueue(func, args=args, kwargs=kwargs, **options)
        return job.id

    def info(self, job_id: str) -> JobInfo | None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=True)
        error = None
        if status == "failed":
            latest = job.latest_result()
            error = (latest.exc_string or "").strip().splitlines()[-1] if latest and latest.exc_string else "failed"
        return JobInfo(job.id, job.func_name, str(status.value if hasattr(status, "value") else status), job.return_value(), error, dict(job.meta))


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

    def enqueue(self, queue_name: str, func: Callable, *args, retry: bool = False, **kwargs) -> str:
        job_id = uuid.uuid4().hex
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
                self._queue.task_done()


def make_job_queue(runtime) -> RedisJobQueue | EmbeddedJobQueue:
    if runtime.redis is not None:
        return RedisJobQueue(runtime.redis, runtime.settings.adapter)
    return EmbeddedJobQueue(runtime)
