"""The same jobs in every mode: embedded (no Redis), rq cron + worker processes, and the CLI."""

import subprocess
import sys
import time

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from label_studio_ale.app import create_app
from label_studio_ale.jobqueue import JOB_TIMEOUT, QUEUE_SYNC, queue_name
from label_studio_ale.jobs import SYNC_VERSION_PREFIX
from label_studio_ale.settings import DEFAULT_ADAPTER, Settings
from label_studio_ale_plugins.yolov5 import YoloV5Adapter
from tests.support.backend import backend_env, process_env, run_worker
from tests.support.label_studio import stop_process
from tests.support.models import IMAGE_SIZE
from tests.support.projects import add_images, create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def make_project(ls, seeds, title):
    return create_project(ls, seeds, title, max_objects=4)


def wait_until(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise TimeoutError(message)


def test_embedded_queue_runs_jobs_in_process_without_redis(ls_sdk, label_studio, trained_weights, tmp_path):
    """`ale serve` alone: TASKS_CREATED queues a sync, which predicts the new tasks and ranks them, on a thread of the app."""
    project, task_ids = make_project(ls_sdk, range(40_000, 40_005), "embedded mode")
    settings = Settings.from_env(backend_env(label_studio, trained_weights, tmp_path))
    assert settings.redis_url == ""
    adapter = YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE)
    client = create_app(settings, adapter_factory=lambda: adapter).test_client()
    tasks = [{"id": t} for t in task_ids]
    response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": project}, "tasks": tasks})
    assert response.status_code == 200, response.get_json()
    (sync_job,) = response.get_json()["jobs"]

    def finished(job_id):
        status = client.get(f"/jobs/{job_id}").get_json()
        assert status["status"] != "failed", status
        return status["status"] == "finished"

    wait_until(lambda: finished(sync_job), 120, "the embedded sync did not finish")
    served = ls_sdk.projects.get(id=project)
    assert served.model_version.startswith(SYNC_VERSION_PREFIX) and served.sampling == "Uncertainty sampling"
    predictions = [p for p in ls_sdk.predictions.list(project=project) if p.model_version == served.model_version]
    assert sorted(p.task for p in predictions) == sorted(task_ids)
    # a project event that is not new tasks starts nothing
    response = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": project}})
    assert response.get_json()["status"] == "ignored"


def test_rq_cron_schedules_syncs_that_a_worker_runs(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    project, _ = make_project(ls_sdk, range(41_000, 41_004), "scheduled sync")
    env = backend_env(label_studio, trained_weights, tmp_path) | {
        "REDIS_URL": redis_server.url,
        "SYNC_INTERVAL": "2",
        "SYNC_PROJECTS": str(project),
    }
    log = tmp_path / "cron.log"
    cron = subprocess.Popen(
        [sys.executable, "-m", "label_studio_ale.cli", "cron"],
        env=process_env(env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with run_worker(env, tmp_path):
            wait_until(
                lambda: ls_sdk.projects.get(id=project).model_version.startswith(SYNC_VERSION_PREFIX),
                120,
                f"no scheduled sync reached LS; cron log: {log.read_text()[-1500:]}",
            )
            first = ls_sdk.projects.get(id=project).model_version
            # the schedule keeps going: a later run finds a new task and adds it to the served version
            (new,) = add_images(ls_sdk, project, [41_010])
            wait_until(
                lambda: any(p.model_version == first for p in ls_sdk.predictions.list(task=new)),
                60,
                "the cron scheduler did not enqueue a later sync that ranks the new task",
            )
            assert ls_sdk.projects.get(id=project).model_version == first
        # the scheduled syncs get the backend's job timeout, not rq's default 180 s
        sync_queue = Queue(queue_name(DEFAULT_ADAPTER, QUEUE_SYNC), connection=Redis.from_url(redis_server.url))
        scheduled = [Job.fetch(i, connection=sync_queue.connection) for i in FinishedJobRegistry(queue=sync_queue).get_job_ids()]
        scheduled = [job for job in scheduled if job.func_name.endswith("sync_all")]
        assert scheduled and {job.timeout for job in scheduled} == {JOB_TIMEOUT}
    finally:
        stop_process(cron)
    assert "sync_all" in log.read_text()


def test_cli_rank_and_sync(ls_sdk, label_studio, trained_weights, tmp_path):
    project, task_ids = make_project(ls_sdk, range(42_000, 42_005), "cli")
    env = process_env(backend_env(label_studio, trained_weights, tmp_path))
    rank = subprocess.run(
        [sys.executable, "-m", "label_studio_ale.cli", "rank", "--project", str(project), "--top", "3"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert rank.returncode == 0, rank.stderr[-2000:]
    lines = rank.stdout.strip().splitlines()
    assert lines[0].split()[:6] == ["rank", "task", "score", "boxes", "entropy", "image"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3"] and {int(r[1]) for r in rows} <= set(task_ids)
    assert all(0 <= float(r[4]) <= 1 and (float(r[4]) == 0 or int(r[3]) > 0) for r in rows)
    assert all(r[5].startswith("/data/upload/") for r in rows)
    assert ls_sdk.projects.get(id=project).model_version == ""  # rank writes nothing

    sync = subprocess.run(
        [sys.executable, "-m", "label_studio_ale.cli", "sync", "--project", str(project)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert sync.returncode == 0, sync.stderr[-2000:]
    assert "import" in sync.stderr and "5/5" in sync.stderr  # the progress bars
    version = ls_sdk.projects.get(id=project).model_version
    assert f"now served as {version}" in sync.stdout
    # loading the client and the model is a phase of its own, so "list" times the listing alone
    phases = [part.split()[0] for part in sync.stdout.strip().splitlines()[-1].split("  ")]
    assert phases == ["load", "list", "predict", "score", "import", "switch", "cleanup"]
    # the order LS serves starts with rank's first row
    assert int(rows[0][1]) == min(
        (p for p in ls_sdk.predictions.list(project=project) if p.model_version == version), key=lambda p: p.score
    ).task
