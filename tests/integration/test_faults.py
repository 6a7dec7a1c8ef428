"""Faults a running backend must survive: Redis going away and coming back, with real processes."""

import time

import httpx
import pytest

from label_studio_ale.jobqueue import RedisJobQueue
from tests.support.backend import backend_env, run_backend, run_worker
from tests.support.projects import LABEL_CONFIG, create_project
from tests.support.redis_server import start_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_redis():
    """A Redis this test may stop and restart (the session's is shared)."""
    server = start_redis()
    yield server
    server.stop()


def test_redis_down_predict_serves_webhooks_answer_503_and_jobs_resume(ls_sdk, label_studio, trained_weights, own_redis, tmp_path):
    from redis import Redis

    project, task_ids = create_project(ls_sdk, range(80_000, 80_004), "redis outage")
    tasks = [{"id": t, "data": ls_sdk.tasks.get(id=t).data} for t in task_ids]
    env = backend_env(label_studio, trained_weights, tmp_path / "models", own_redis)
    with run_backend(env, tmp_path) as url, run_worker(env, tmp_path, queues="predict,sync"):
        own_redis.stop()

        # Annotators keep getting pre-annotations: /predict and /setup need no Redis.
        answer = httpx.post(f"{url}/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG, "project": f"{project}.1"}, timeout=120)
        assert answer.status_code == 200 and len(answer.json()["results"]) == len(tasks) and not answer.json()["errors"]
        assert httpx.post(f"{url}/setup", json={"project": f"{project}.1", "schema": LABEL_CONFIG}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "UP"

        # Jobs cannot be queued: a clear 503, never a traceback.
        event = {"action": "TASKS_CREATED", "project": {"id": project}, "tasks": [{"id": t} for t in task_ids]}
        refused = httpx.post(f"{url}/webhook", json=event, timeout=30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
        assert f"Redis at 127.0.0.1:{own_redis.port}" in refused.json()["error"] and "retry" in refused.json()["error"]
        training = httpx.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": project}}, timeout=30)
        assert training.status_code == 503

        # Redis is back: the same event is queued, and the running worker picks the jobs up.
        own_redis.restart()
        accepted = httpx.post(f"{url}/webhook", json=event, timeout=30)
        assert accepted.status_code == 200, accepted.text
        jobs = RedisJobQueue(Redis.from_url(own_redis.url), "yolov5")
        deadline = time.monotonic() + 180
        for job_id in accepted.json()["jobs"]:
            while (info := jobs.info(job_id)).status != "finished":
                assert info.status != "failed", info.error
                assert time.monotonic() < deadline, f"job {job_id} did not run after Redis came back: {info.status}"
                time.sleep(0.5)
    assert ls_sdk.projects.get(id=project).model_version.startswith("ale:")
