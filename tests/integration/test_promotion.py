"""Promotion and the queue: real Label Studio 1.23.2, real Redis, a real `ale worker` training, a real `ale serve`.

- a version promoted while a sync runs (between its prediction and its scoring) never mixes into it:
  the sync finishes with the model it started with, and the training's re-sync runs right after it;
- a worse model is not promoted under if-not-worse, and /versions says why.
"""

import time

import httpx
import numpy as np
import pytest
from redis import Redis

from label_studio_ale.detection_store import SqliteDetectionStore
from label_studio_ale.jobqueue import QUEUE_TRAIN, RedisJobQueue
from label_studio_ale.jobs import SYNC_VERSION_PREFIX, sync_priorities
from label_studio_ale.model_store import ModelStore
from label_studio_ale.runtime import Runtime
from label_studio_ale.serving import ServingFilters, raw_output_key, shown_detections
from label_studio_ale.settings import Settings
from label_studio_ale.training import train_project
from tests.support.backend import backend_env, run_backend, run_worker
from tests.support.projects import annotate, create_split_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENE = {"max_objects": 3}
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("promotion-models")


@pytest.fixture(scope="module")
def env(label_studio, redis_server, trained_weights, model_dir):
    # 8 epochs: enough for labels to change what the model predicts (3 change nothing yet: the warmup)
    return backend_env(label_studio, trained_weights, model_dir, redis_server, BASE_MODEL=str(trained_weights), TRAIN_EPOCHS="8", TRAIN_BATCH="8")


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    with run_worker(env, tmp_path_factory.mktemp("promotion-worker"), queues="train,predict,sync") as process:
        yield process


@pytest.fixture(scope="module")
def jobs(redis_server):
    return RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")


def wait_job(jobs, job_id, timeout=JOB_TIMEOUT):
    deadline = time.monotonic() + timeout
    while (info := jobs.info(job_id)) is None or info.status not in ("finished", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish in {timeout} s"
        time.sleep(0.5)
    return info


def test_a_promotion_between_prediction_and_scoring_waits_for_the_next_sync(ls_sdk, env, worker, jobs, model_dir):
    project, train, val, scenes = create_split_project(ls_sdk, "promotion mid-sync", 10, 2, 93_000, spare=6, **SCENE)
    labelled = set(train + val)
    for task_id in labelled:
        annotate(ls_sdk, task_id, scenes[task_id])
    unlabeled = sorted(set(scenes) - labelled)
    assert len(unlabeled) >= 5

    trainings = []

    def promote_in_the_middle(phase, done, total, metrics=None):
        """The sync's own progress hook: once its pool is predicted, Start Training runs to the end on the worker."""
        if phase == "predict" and done == total and not trainings:
            trainings.append(wait_job(jobs, jobs.enqueue(QUEUE_TRAIN, train_project, project)))

    result = sync_priorities(project, runtime=Runtime(Settings.from_env(env)), progress=promote_in_the_middle)

    # The training promoted v0001 while the sync held its lock: its own re-sync was remembered, not dropped.
    (training,) = trainings
    assert training.status == "finished", training.error
    assert training.result["version"] == "v0001" and training.result["promoted"]
    assert training.result["sync"]["status"] == "coalesced"
    assert ModelStore(model_dir, project).current().name == "v0001"

    # The sync ran twice: with the model it started with, then with v0001. Every task was usable both times.
    assert result["status"] == "synced" and result["runs"] == 2
    assert result["served_model"] == "v0001" and result["model_version"].startswith(f"{SYNC_VERSION_PREFIX}v0001:")
    assert result["tasks"] == len(unlabeled) and result["unusable"] == 0

    # LS serves one version, v0001's, over every unlabeled task, each pre-annotated, in the sync's order.
    stored = ls_sdk.projects.get(id=project)
    assert stored.model_version == result["model_version"] and stored.sampling == "Uncertainty sampling"
    predictions = [p for p in ls_sdk.predictions.list(project=project)]
    assert {p.model_version for p in predictions} == {result["model_version"]}
    assert sorted(p.task for p in predictions) == unlabeled
    assert [p.task for p in sorted(predictions, key=lambda p: p.score)] == result["order"]
    # each pre-annotation is what v0001 shows for that image (what it stored, through the serving filters)
    settings = Settings.from_env(env)
    stored = SqliteDetectionStore(model_dir / "detections.sqlite").get_many(project, raw_output_key("v0001", settings))
    filters = ServingFilters.from_settings(settings)
    shown = {t: len(shown_detections(stored[t].detections, np.ones(2, dtype=bool), filters)) for t in unlabeled}
    assert {p.task: len(p.result) for p in predictions} == shown and sum(shown.values()) > 0


def test_a_worse_model_is_not_promoted_and_versions_say_why(ls_sdk, env, worker, tmp_path):
    project, train, val, scenes = create_split_project(ls_sdk, "worse model", 30, 10, 94_000, spare=5, **SCENE)
    for task_id in train + val:
        annotate(ls_sdk, task_id, scenes[task_id])
    with run_backend(env, tmp_path) as url:
        first = press_and_wait(url, jobs_for(env), project)
        assert first["version"] == "v0001" and first["promoted"] and first["promotion_reason"] == "the project's first version"
        served = ls_sdk.projects.get(id=project).model_version
        assert served.startswith(f"{SYNC_VERSION_PREFIX}v0001:")

        # The training images are relabelled wrongly (every bird a nest, every nest a bird); validation stays right.
        for task_id in train:
            annotate(ls_sdk, task_id, scenes[task_id], names=("nest", "bird"))
        second = press_and_wait(url, jobs_for(env), project)
        assert second["version"] == "v0002" and not second["promoted"]
        assert second["metrics"]["map50"] < first["metrics"]["map50"]
        assert second["metrics"]["images"] == 10 and "sync" not in second
        assert ModelStore(env["MODEL_DIR"], project).current().name == "v0001"
        assert ls_sdk.projects.get(id=project).model_version == served  # the queue was not touched

        listed = httpx.get(f"{url}/versions", params={"project": project}, timeout=10).json()
    assert listed["versions"] == ["v0001", "v0002"] and listed["current"] == "v0001"
    v1, v2 = listed["details"]
    assert v1["served"] and v1["promotion"]["promoted"] and v1["promotion"]["reason"] == "the project's first version"
    assert not v2["served"] and not v2["promotion"]["promoted"] and v2["promotion"]["compared_with"] == "v0001"
    reason = v2["promotion"]["reason"]
    assert f"mAP50 {v2['metrics']['map50']:.3f} < v0001's" in reason and "10 validation images" in reason and "v0001 keeps serving" in reason
    assert v2["metrics"]["images"] == 10 and v2["metrics"]["boxes"] >= 10


def jobs_for(env):
    return RedisJobQueue(Redis.from_url(env["REDIS_URL"]), "yolov5")


def press_and_wait(url, jobs, project):
    response = httpx.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": project}}, timeout=10)
    assert response.status_code == 201, response.text
    info = wait_job(jobs, response.json()["job"])
    assert info.status == "finished", info.error
    return info.result
