"""Pool prediction fanned out over two real `ale worker` processes (real LS 1.23.2, Redis), on both detection stores.

Both workers take chunks; one is killed in the middle of a chunk, and the
chunk is retried on the other, so every task ends up predicted and ranked.
"""

import os
import signal
import time

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job

from label_studio_ale.detection_store import open_detection_store
from label_studio_ale.jobqueue import HEARTBEAT_TTL, QUEUE_SYNC, RedisJobQueue
from label_studio_ale.jobs import queued_sync
from label_studio_ale.serving import raw_output_key
from label_studio_ale.settings import Settings
from tests.support.backend import backend_env, run_worker
from tests.support.projects import create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = 48
PER_JOB = 4
TIMEOUT = 120 + 2 * HEARTBEAT_TTL


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_two_workers_share_the_pool_and_a_killed_workers_chunk_is_retried(
    ls_sdk, label_studio, redis_server, trained_weights, store_url, tmp_path
):
    env = backend_env(
        label_studio, trained_weights, tmp_path / "models", redis_server, PREDICT_JOB_TASKS=str(PER_JOB), DETECTION_STORE_URL=store_url
    )
    redis = Redis.from_url(redis_server.url)
    jobs = RedisJobQueue(redis, "yolov5")
    project, task_ids = create_project(ls_sdk, range(60_000, 60_000 + TASKS), "fan-out", max_objects=5, min_side=14, max_side=30)
    with run_worker(env, tmp_path, queues="sync,predict") as first, run_worker(env, tmp_path, queues="sync,predict") as second:
        sync_id = jobs.enqueue(QUEUE_SYNC, queued_sync, project, retry=True)
        sync = wait(lambda: (i := jobs.info(sync_id)) and i.status == "finished" and i, 120, "the first sync")
        assert sync.result["status"] == "predicting", sync.result
        chunks, follow_up = sync.result["chunks"], sync.result["follow_up"]
        assert len(chunks) == TASKS // PER_JOB

        def started_by():
            seen = {}
            for job_id in chunks:
                job = Job.fetch(job_id, connection=redis)
                if job.get_status(refresh=True) in ("started", "finished") and job.worker_name:
                    seen.setdefault(job.worker_name, []).append((job_id, job.get_status()))
            return seen if len(seen) == 2 else None

        # Both workers take chunks of the same pool prediction...
        seen = wait(started_by, 120, "both workers to take chunks")
        names = {w.pid: w.name for w in Worker.all(connection=redis) if w.pid in (first.pid, second.pid)}
        assert set(seen) == set(names.values()), (seen, names)

        # ...and the first is killed in the middle of one.
        def running_on_first():
            for job_id in chunks:
                job = Job.fetch(job_id, connection=redis)
                if job.get_status(refresh=True) == "started" and job.worker_name == names[first.pid]:
                    return job_id
            return None

        killed_chunk = wait(running_on_first, 120, "a chunk running on the first worker")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

        done = wait(lambda: (i := jobs.info(follow_up)) and i.status in ("finished", "failed") and i, TIMEOUT, "the sync after the chunks")
        assert done.status == "finished", done.error
        assert done.result["status"] == "synced" and done.result["tasks"] == TASKS

        retried = Job.fetch(killed_chunk, connection=redis)
        assert retried.get_status(refresh=True) == "finished" and retried.worker_name == names[second.pid]
        results = [Job.fetch(c, connection=redis).return_value() for c in chunks]
        assert all(r and r["status"] == "predicted" for r in results)
        # the sync after them predicted nothing itself: the chunks did all of it
        assert done.result["predicted"]["predicted"] == 0

    # Every task is predicted once in the store and ranked in LS.
    from label_studio_ale_plugins.yolov5 import YoloV5Adapter
    from tests.support.models import IMAGE_SIZE

    settings = Settings.from_env(env)
    key = raw_output_key(YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE).version, settings)
    store = open_detection_store(store_url, tmp_path / "models")
    assert store.usable_ids(project, key).tolist() == sorted(task_ids)
    served = ls_sdk.projects.get(id=project).model_version
    assert served == done.result["model_version"]
    assert sorted(p.task for p in ls_sdk.predictions.list(project=project) if p.model_version == served) == sorted(task_ids)
