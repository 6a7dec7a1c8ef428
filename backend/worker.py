"""`ale worker`: an rq worker that proves the job it runs alive, so a killed worker's job is known failed.

rq's SimpleWorker runs jobs in its own process (no fork after torch has
started its threads) and gives a running job a registry lease as long as the
job timeout (hours). While a job runs, this worker refreshes a short-lived key
every HEARTBEAT_INTERVAL seconds; `RedisJobQueue.info` fails a job whose key
lapsed, and Start Training can start again at once. Each worker also sweeps
its queues every SWEEP_INTERVAL seconds for jobs whose worker is gone, so
that a lost pool-prediction chunk is retried on a live worker even when
nobody asks about it.

`ale cron` runs `AleCronScheduler`: rq's cron scheduler, except that it does
not enqueue a job again while the one it enqueued last still waits.
"""

from __future__ import annotations

import logging
import threading
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.cron import CronJob, CronScheduler
from rq.utils import now

from .jobqueue import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, JOB_TIMEOUT, alive_key, recover_abandoned, release_watch, renew_alive, watched_key

log = logging.getLogger(__name__)

#: Seconds between tries, at most, while a starting worker waits for Redis (doubling from 1 s).
REDIS_RETRY_MAX_WAIT = 30.0
#: Seconds between two sweeps for jobs whose worker is gone.
SWEEP_INTERVAL = HEARTBEAT_INTERVAL


def wait_for_redis(connection, *, max_wait: float = REDIS_RETRY_MAX_WAIT, sleep=time.sleep) -> None:
    """Block until Redis answers a ping.

    rq registers a worker before its own reconnect loop starts, so a worker
    started while Redis is away (a host reboot, compose starting services in
    any order) would exit; it waits here instead, saying for what.
    """
    wait = 1.0
    while True:
        try:
            connection.ping()
            return
        except RedisConnectionError as exc:
            where = connection.connection_pool.connection_kwargs
            log.warning(
                "Redis at %s:%s is not reachable (%s); the worker starts when it is, next try in %.0f s",
                where.get("host", "?"),
                where.get("port", "?"),
                exc,
                wait,
            )
            sleep(wait)
            wait = min(wait * 2, max_wait)


class AleWorker(SimpleWorker):
    def work(self, *args, **kwargs):
        stop = threading.Event()
        thread = threading.Thread(target=self._sweep, args=(stop,), name="ale-sweep", daemon=True)
        thread.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            stop.set()

    def _sweep(self, stop: threading.Event) -> None:
        """Fail the lost jobs of this worker's queues (rq retries those with retries left)."""
        while not stop.wait(SWEEP_INTERVAL):
            try:
                for job_id in recover_abandoned(self.connection, self.queue_names()):
                    log.warning("job %s lost its worker; failed, and retried where it has retries left", job_id)
            except Exception as exc:  # Redis away for a moment: the next sweep retries
                log.warning("sweep for lost jobs failed: %s", type(exc).__name__)

    def perform_job(self, job, queue) -> bool:
        stop = threading.Event()
        redis = self.connection

        def beat() -> None:
            while not stop.wait(HEARTBEAT_INTERVAL):
                try:
                    renew_alive(redis, job.id, self.name)
                except Exception as exc:  # Redis away for a moment: the next beat retries
                    log.warning("job %s heartbeat failed: %s", job.id, type(exc).__name__)

        # alive before watched: a job is never seen watched without a heartbeat
        redis.set(alive_key(job.id), self.name, ex=HEARTBEAT_TTL)
        redis.set(watched_key(job.id), self.name, ex=JOB_TIMEOUT + HEARTBEAT_TTL)
        thread = threading.Thread(target=beat, name=f"ale-heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            return super().perform_job(job, queue)
        finally:
            stop.set()
            thread.join()
            try:
                # a failed job with an immediate retry may already run on another worker, under its own keys
                release_watch(redis, job.id, self.name)
            except Exception:
                pass


class AleCronScheduler(CronScheduler):
    """rq's cron scheduler, skipping a round while the job its cron job enqueued last is still in its queue.

    rq enqueues at every interval whether or not the last one has started: while the only worker trains for hours,
    a sync every SYNC_INTERVAL piles up (72 in 6 h at 5 min), and they then run back to back, each redoing the last.
    One waiting is enough: it syncs whatever changed before it starts.
    """

    def enqueue_jobs(self) -> list[CronJob]:
        for cron_job in self.get_jobs():
            if cron_job.should_run():
                waiting = still_waiting(self.connection, cron_job)
                if waiting:
                    log.info("%s: the one enqueued last (job %s) has not started yet; not enqueued again", cron_job.name, waiting)
                    cron_job.set_enqueue_time(now())  # this round is done: the next is an interval away
        return super().enqueue_jobs()


def still_waiting(connection, cron_job: CronJob) -> str | None:
    """The id of the job `cron_job` enqueued last, while it is still in its queue (not yet started); else None.

    Its queue is first in, first out: an older one still waiting would mean this one does too. A job gone from the
    queue (started, or the queue emptied by hand) waits for nothing, whatever its record says.
    """
    newest = cron_job.get_job_ids(connection, 0, 0)
    if newest and Queue(cron_job.queue_name, connection=connection).get_job_position(newest[0]) is not None:
        return newest[0]
    return None
