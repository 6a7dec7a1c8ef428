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


def test_a_worker_started_before_redis_waits_for_it_and_then_runs_jobs(ls_sdk, label_studio, trained_weights, own_redis, tmp_path):
    from redis import Redis

    from label_studio_ale.jobqueue import QUEUE_SYNC
    from label_studio_ale.jobs import sync_priorities

    project, _ = create_project(ls_sdk, range(81_000, 81_003), "worker before redis")
    env = backend_env(label_studio, trained_weights, tmp_path / "models", own_redis)
    own_redis.stop()
    with run_worker(env, tmp_path, queues="predict,sync", registered=False) as worker:
        log = next(tmp_path.glob("worker-*.log"))
        deadline = time.monotonic() + 120
        while "is not reachable" not in log.read_text():
            assert worker.poll() is None, f"the worker exited while Redis was away: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        assert worker.poll() is None
        assert f"Redis at 127.0.0.1:{own_redis.port} is not reachable" in log.read_text()

        own_redis.restart()
        jobs = RedisJobQueue(Redis.from_url(own_redis.url), "yolov5")
        job_id = jobs.enqueue(QUEUE_SYNC, sync_priorities, project)
        deadline = time.monotonic() + 180
        while (info := jobs.info(job_id)).status != "finished":
            assert info.status != "failed", info.error
            assert time.monotonic() < deadline, f"the job did not run: {info.status}; worker log: {log.read_text()[-2000:]}"
            time.sleep(0.5)
    assert ls_sdk.projects.get(id=project).model_version.startswith("ale:")


def test_a_worker_killed_mid_training_fails_the_job_and_a_new_press_trains(ls_sdk, label_studio, trained_weights, own_redis, tmp_path):
    import os
    import signal

    from label_studio_ale.model_store import ModelStore
    from tests.support.projects import annotate, create_split_project

    project, train, val, scenes = create_split_project(ls_sdk, "worker killed", 8, 2, 82_000)
    for task_id in train + val:
        annotate(ls_sdk, task_id, scenes[task_id])
    env = backend_env(label_studio, trained_weights, tmp_path / "models", own_redis, BASE_MODEL=str(trained_weights), TRAIN_BATCH="8")
    predict = {"tasks": [{"id": train[0], "data": ls_sdk.tasks.get(id=train[0]).data}], "label_config": LABEL_CONFIG, "project": f"{project}.1"}
    press = {"action": "START_TRAINING", "project": {"id": project}}
    with run_backend(env, tmp_path) as url:
        served = httpx.post(f"{url}/predict", json=predict, timeout=60).json()["model_version"]
        with run_worker(env | {"TRAIN_EPOCHS": "500"}, tmp_path, queues="train") as worker:
            job_id = httpx.post(f"{url}/webhook", json=press, timeout=30).json()["job"]
            deadline = time.monotonic() + 180
            while not (httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()["meta"].get("training") or {}).get("epoch"):
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.5)
            os.killpg(worker.pid, signal.SIGKILL)  # the machine dies mid-epoch
            worker.wait()

        # Until its lease lapses the job still looks alive; then it is failed, with the reason.
        assert httpx.post(f"{url}/webhook", json=press, timeout=30).json()["job"] == job_id
        deadline = time.monotonic() + 150
        while (job := httpx.get(f"{url}/jobs/{job_id}", timeout=10).json())["status"] != "failed":
            assert job["status"] == "started" and time.monotonic() < deadline, job
            time.sleep(2)
        assert "worker running this training stopped" in job["error"] and "before it stored a new version" in job["error"]
        # nothing half-written: no version, and the served model is the one from before
        store = ModelStore(env["MODEL_DIR"], project)
        assert store.current() is None and store.versions() == []
        assert httpx.post(f"{url}/predict", json=predict, timeout=60).json()["model_version"] == served

        # A new press trains again, on a new worker.
        with run_worker(env | {"TRAIN_EPOCHS": "2"}, tmp_path, queues="train"):
            again = httpx.post(f"{url}/webhook", json=press, timeout=30)
            assert again.status_code == 201 and again.json()["job"] != job_id
            deadline = time.monotonic() + 300
            while (job := httpx.get(f"{url}/jobs/{again.json()['job']}", timeout=10).json())["status"] != "finished":
                assert job["status"] != "failed" and time.monotonic() < deadline, job
                time.sleep(1)
        assert store.current().name == "v0001"


def test_a_held_lock_outlives_its_lease_and_a_dead_holders_lock_lapses(redis_server, monkeypatch):
    from redis import Redis

    from label_studio_ale import runtime as runtime_module
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.settings import Settings

    monkeypatch.setattr(runtime_module, "LOCK_LEASE", 1.5)
    first, second = (Runtime(Settings(redis_url=redis_server.url)) for _ in range(2))
    with first.lock("sync:1") as held:
        assert held
        time.sleep(4)  # well past one lease: renewed, so still held
        with second.lock("sync:1") as also:
            assert not also
    with second.lock("sync:1") as free:
        assert free
    # A holder that dies stops renewing: its lease lapses and the lock is free again.
    Redis.from_url(redis_server.url).lock("ale:lock:sync:2", timeout=1.5).acquire()
    with second.lock("sync:2") as taken:
        assert not taken
    time.sleep(2)
    with second.lock("sync:2") as free:
        assert free


def test_two_syncs_at_once_one_runs_and_covers_the_other(ls_sdk, label_studio, trained_weights, redis_server, tmp_path):
    import threading

    from label_studio_ale.jobs import SYNC_VERSION_PREFIX, sync_priorities
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.settings import Settings

    project, task_ids = create_project(ls_sdk, range(83_000, 83_006), "two syncs")
    settings = Settings.from_env(backend_env(label_studio, trained_weights, tmp_path / "models", redis_server))
    start, results = threading.Barrier(2), []

    def sync():  # two processes' worth: separate runtimes, one Redis
        runtime = Runtime(settings)
        start.wait()
        results.append(sync_priorities(project, runtime=runtime))

    threads = [threading.Thread(target=sync) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(r["status"] for r in results) == ["coalesced", "synced"]
    # the request that found the lock taken is covered: by the running sync if it came before that sync
    # took the pending flag, else by one more run of it
    (synced,) = [r for r in results if r["status"] == "synced"]
    assert synced["runs"] in (1, 2)
    served = ls_sdk.projects.get(id=project).model_version
    versions = {p.model_version for p in ls_sdk.predictions.list(project=project)}
    assert served.startswith(SYNC_VERSION_PREFIX) and versions == {served}  # one complete queue, nothing half-written
    assert sorted(p.task for p in ls_sdk.predictions.list(project=project)) == sorted(task_ids)
