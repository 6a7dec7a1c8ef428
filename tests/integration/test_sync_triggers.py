"""A burst of new tasks: 20 TASKS_CREATED webhooks within a second produce at most 2 syncs, and every new
task ends up ranked (real LS 1.23.2, Redis, `ale serve` and an `ale worker`)."""

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from redis import Redis

from label_studio_ale.jobqueue import RedisJobQueue
from label_studio_ale.synthetic import make_scene
from tests.support.backend import backend_env, run_backend, run_worker
from tests.support.label_studio import upload_images
from tests.support.projects import create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WEBHOOKS = 20


def png(scene) -> bytes:
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_twenty_task_webhooks_in_a_second_run_at_most_two_syncs(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    env = backend_env(label_studio, trained_weights, tmp_path / "models", redis_server)
    project, first = create_project(ls_sdk, range(45_000, 45_004), "import burst")
    with run_backend(env, tmp_path) as url, run_worker(env, tmp_path, queues="predict,sync"):
        # Twenty imports of one image each: LS sends one TASKS_CREATED per import request.
        new = upload_images(ls_sdk, project, [(f"burst{i}.png", png(make_scene(46_000 + i))) for i in range(WEBHOOKS)])
        events = [{"action": "TASKS_CREATED", "project": {"id": project}, "tasks": [{"id": task}]} for task in new]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda event: httpx.post(f"{url}/webhook", json=event, timeout=30), events))
        assert time.monotonic() - started < 3.0, "the burst took longer than a burst"
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        sync_jobs = {a.json()["jobs"][0] for a in answers}
        assert 1 <= len(sync_jobs) <= 2, sync_jobs
        assert sum(a.json()["sync"] == "queued" for a in answers) == len(sync_jobs)

        queue = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
        deadline = time.monotonic() + 300
        for job_id in sync_jobs:
            while (info := queue.info(job_id)).status != "finished":
                assert info.status != "failed", info.error
                assert time.monotonic() < deadline, f"sync {job_id} did not finish: {info.status}"
                time.sleep(0.5)
        results = [queue.info(job_id).result for job_id in sync_jobs]
        syncs_run = sum(r.get("runs", 0) for r in results)
        assert 1 <= syncs_run <= 2, results

    served = ls_sdk.projects.get(id=project).model_version
    ranked = {p.task for p in ls_sdk.predictions.list(project=project) if p.model_version == served}
    assert ranked == set(first) | set(new), "every new task is ranked"
