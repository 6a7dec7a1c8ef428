"""The priority sync end to end: real Label Studio 1.23.2, real Redis, real `ale worker` (rq) process.

Annotators ask LS for their next task (GET /api/projects/P/next/) and submit,
exactly as "Label All Tasks" does; LS must serve the backend's ranking.
"""

import time

import numpy as np
import pytest
from redis import Redis

from label_studio_ale.detection_store import SqliteDetectionStore
from label_studio_ale.jobqueue import QUEUE_SYNC, RedisJobQueue
from label_studio_ale.jobs import SYNC_VERSION_PREFIX, sync_priorities
from label_studio_ale.policies import DEFAULT_POLICY, get_policy
from label_studio_ale.ranking import rank
from label_studio_ale.runtime import Runtime
from label_studio_ale.serving import ServingFilters, raw_output_key, shown_detections
from label_studio_ale.settings import Settings
from tests.support.backend import backend_env, run_worker
from tests.support.label_studio import create_personal_access_token
from tests.support.models import IMAGE_SIZE
from tests.support.projects import create_project, next_task, submit_box

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB_TIMEOUT = 180


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("model-store")


@pytest.fixture(scope="module")
def worker_env(label_studio, redis_server, trained_weights, model_dir):
    # small imports make the import phase long enough to kill LS in the middle of it
    return backend_env(label_studio, trained_weights, model_dir, redis_server, SCORE_THRESHOLD="0.25", IMPORT_CHUNK_SIZE="2")


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory):
    with run_worker(worker_env, tmp_path_factory.mktemp("worker")) as process:
        yield process


@pytest.fixture(scope="module")
def jobs(redis_server):
    return RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")


@pytest.fixture(scope="module")
def second_annotator(label_studio):
    from label_studio_sdk import LabelStudio

    token = create_personal_access_token(label_studio.url, "annotator2@example.com", "second-annotator-pw-1", signup=True)
    return LabelStudio(base_url=label_studio.url, api_key=token)


def make_project(ls, seeds, title):
    return create_project(ls, seeds, title, max_objects=5, min_side=14, max_side=30)


def run_sync(jobs, project, timeout=JOB_TIMEOUT):
    job_id = jobs.enqueue(QUEUE_SYNC, sync_priorities, project, retry=True)
    return wait_job(jobs, job_id, timeout)


def wait_job(jobs, job_id, timeout=JOB_TIMEOUT, until=("finished", "failed")):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = jobs.info(job_id)
        if info is not None and info.status in until:
            return info
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not done in {timeout}s: {jobs.info(job_id)}")


def stored_scores(ls, project, version):
    return {p.task: p.score for p in ls.predictions.list(project=project) if p.model_version == version}


def test_ls_serves_tasks_in_the_backend_ranking(ls_sdk, worker, jobs, worker_env, model_dir, trained_weights):
    project, task_ids = make_project(ls_sdk, range(30_000, 30_008), "ranked queue")
    info = run_sync(jobs, project)
    assert info.status == "finished", info.error
    result = info.result
    assert result["status"] == "synced" and result["policy"] == DEFAULT_POLICY and result["tasks"] == 8
    version = result["model_version"]
    assert version.startswith(SYNC_VERSION_PREFIX)

    # LS now serves the backend's version with Uncertainty sampling.
    stored_project = ls_sdk.projects.get(id=project)
    assert stored_project.model_version == version and stored_project.sampling == "Uncertainty sampling"

    # The ranking is ALE entropy-sum over what the worker stored, through the serving filters, recomputed here.
    from label_studio_ale_plugins.yolov5 import YoloV5Adapter

    settings = Settings.from_env(worker_env)
    model_version = YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE).version
    stored = SqliteDetectionStore(model_dir / "detections.sqlite").get_many(project, raw_output_key(model_version, settings))
    assert set(stored) == set(task_ids)
    ids = np.array(sorted(task_ids))
    filters = ServingFilters.from_settings(settings)
    usefulness = get_policy(DEFAULT_POLICY).usefulness([shown_detections(stored[int(t)].detections, np.ones(2, dtype=bool), filters) for t in ids])
    expected = [int(ids[i]) for i in rank(usefulness, ids)]
    assert result["order"] == expected
    assert len(set(np.round(usefulness, 9))) > 1, "the generated scenes should not all score alike"

    # One prediction per task, score = (rank + 1) / (n + 1), most useful lowest, room at both ends.
    scores = stored_scores(ls_sdk, project, version)
    assert sorted(scores, key=scores.get) == expected
    assert scores[expected[0]] == pytest.approx(1 / 9) and scores[expected[-1]] == pytest.approx(8 / 9)

    # "Label All Tasks": next, submit, next, ... follows the ranking exactly.
    served = []
    for _ in range(len(expected)):
        task_id = next_task(ls_sdk, project)
        served.append(task_id)
        submit_box(ls_sdk, task_id)
    assert served == expected


def test_annotators_get_different_tasks_and_keep_their_lock_through_a_sync(
    ls_sdk, second_annotator, worker, jobs, worker_env, redis_server
):
    project, _ = make_project(ls_sdk, range(31_000, 31_006), "two annotators")
    first = run_sync(jobs, project)
    assert first.status == "finished", first.error
    order = first.result["order"]

    mine = next_task(ls_sdk, project)
    theirs = next_task(second_annotator, project)
    assert mine == order[0] and theirs == order[1]  # B skips the task locked by A

    # Re-rank while both work, with another policy: a different order is written and switched to.
    settings = Settings.from_env(worker_env).replace(policy="random", policy_seed=11)
    second = sync_priorities(project, runtime=Runtime(settings))
    assert second["status"] == "synced" and second["order"] != order
    assert first.result["model_version"] in second["deleted_versions"]
    assert ls_sdk.projects.get(id=project).model_version == second["model_version"]

    # Locked tasks stay with their annotators...
    assert next_task(ls_sdk, project) == mine
    assert next_task(second_annotator, project) == theirs
    # ...and after submitting, each gets the best of the new order that is not taken.
    submit_box(ls_sdk, mine)
    remaining = [t for t in second["order"] if t not in (mine, theirs)]
    assert next_task(ls_sdk, project) == remaining[0]


def test_killing_label_studio_mid_sync_keeps_the_old_order_and_the_retry_succeeds(
    ls_sdk, label_studio, worker, jobs
):
    project, _ = make_project(ls_sdk, range(32_000, 32_030), "crash during sync")
    first = run_sync(jobs, project)
    assert first.status == "finished", first.error
    old_version, old_order = first.result["model_version"], first.result["order"]

    # nothing changed: only a full sync rewrites the queue
    job_id = jobs.enqueue(QUEUE_SYNC, sync_priorities, project, retry=True, full=True)
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:  # wait until the worker is importing the new version, then pull the plug
        progress = (jobs.info(job_id).meta or {}).get("progress") or {}
        if progress.get("phase") == "import" and progress.get("done", 0) >= 2:
            break
        assert time.monotonic() < deadline, "sync never reached its import phase"
        time.sleep(0.02)
    label_studio.kill()
    try:
        failed = wait_job(jobs, job_id, until=("failed", "scheduled", "finished"))
        assert failed.status in ("failed", "scheduled"), f"sync should not succeed with LS down: {failed}"
    finally:
        label_studio.restart()

    # The previous order is still the one in force.
    assert ls_sdk.projects.get(id=project).model_version == old_version
    assert next_task(ls_sdk, project) == old_order[0]

    # rq retries the same job (10 s backoff) and it now succeeds.
    done = wait_job(jobs, job_id, until=("finished",), timeout=JOB_TIMEOUT)
    assert done.result["status"] == "synced"
    new_version = done.result["model_version"]
    assert ls_sdk.projects.get(id=project).model_version == new_version != old_version
    versions = ls_sdk._client_wrapper.httpx_client.request(f"api/projects/{project}/model-versions/", method="GET").json()
    assert [v for v in versions if v.startswith(SYNC_VERSION_PREFIX)] == [new_version]  # partial and old removed
    assert versions[new_version] == 30
