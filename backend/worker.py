"""`ale worker`: an rq worker that proves the job it runs alive, so a killed worker's job is known failed.

rq's SimpleWorker runs jobs in its own process (no fork after torch has
started its threads) and gives a running job a registry lease as long as the
job timeout (hours). While a job runs, this worker refreshes a short-lived key
every HEARTBEAT_INTERVAL seconds; `RedisJobQueue.info` fails a job whose key
lapsed, and Start Training can start again at once.
"""

from __future__ import annotations

import logging
import threading

from rq import SimpleWorker

from .jobqueue import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, JOB_TIMEOUT, alive_key, watched_key

log = logging.getLogger(__name__)


class AleWorker(SimpleWorker):
    def perform_job(self, job, queue) -> bool:
        stop = threading.Event()
        redis = self.connection

        def beat() -> None:
            while not stop.wait(HEARTBEAT_INTERVAL):
                try:
                    redis.set(alive_key(job.id), self.name, ex=HEARTBEAT_TTL)
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
                redis.delete(alive_key(job.id), watched_key(job.id))
            except Exception:
                pass
