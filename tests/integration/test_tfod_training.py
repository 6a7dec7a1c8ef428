"""Start Training with ADAPTER=tfod: real LS 1.23.2 presses the button, a real rq worker in the TensorFlow
environment fine-tunes the RetinaNet, exports it in the OD API format, versions it and re-syncs the queue.

Runs in the TensorFlow environment only (scripts/test runs it there); torch is never loaded beside TensorFlow.
"""

import sys
import time

import httpx
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the tfod tests run in the TensorFlow environment: scripts/test runs them there")

from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402

from label_studio_ale.jobqueue import QUEUE_TRAIN, RedisJobQueue, queue_name  # noqa: E402
from label_studio_ale.media import MediaFetcher  # noqa: E402
from label_studio_ale.model_store import ModelStore  # noqa: E402
from label_studio_ale.policies import get_policy  # noqa: E402
from label_studio_ale.predictor import Predictor  # noqa: E402
from label_studio_ale.settings import Settings  # noqa: E402
from label_studio_ale_plugins.tfod import TfodAdapter  # noqa: E402
from tests.support.backend import backend_env, run_backend, run_worker  # noqa: E402
from tests.support.projects import annotate, create_split_project  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(label_studio, redis_server, trained_tf_detector, tmp_path_factory):
    return backend_env(
        label_studio,
        trained_tf_detector,  # served until a project has its own version
        tmp_path_factory.mktemp("tfod-models"),
        redis_server,
        ADAPTER="tfod",
        BASE_MODEL=str(trained_tf_detector),  # first versions fine-tune the tiny trained RetinaNet
        TRAIN_EPOCHS="3",
        TRAIN_BATCH="8",
        SCORE_THRESHOLD="0.25",
    )


def test_start_training_fine_tunes_exports_versions_and_ranks_with_class_vectors(ls_sdk, env, redis_server, tmp_path):
    assert "torch" not in sys.modules
    project, train, val, scenes = create_split_project(ls_sdk, "tfod training", 12, 3, 60_000, max_objects=3)
    annotated = train[:10] + val
    for task_id in annotated:
        annotate(ls_sdk, task_id, scenes[task_id])
    # A job a yolov5 stack queued on the same Redis: the tfod worker must leave it alone.
    redis = Redis.from_url(redis_server.url)
    torch_job = RedisJobQueue(redis, "yolov5").enqueue(QUEUE_TRAIN, print, "a yolov5 job")

    with run_backend(env, tmp_path) as url, run_worker(env, tmp_path, queues="train,predict,sync"):
        ml = ls_sdk.ml.create(project=project, url=url, title="ale tfod")
        ls_sdk.ml.train(id=ml.id)
        queue = Queue(queue_name("tfod", QUEUE_TRAIN), connection=redis)
        deadline = time.monotonic() + 300
        while not (ids := queue.finished_job_registry.get_job_ids() + queue.failed_job_registry.get_job_ids()):
            assert time.monotonic() < deadline, "the tfod train job did not finish"
            time.sleep(1)
        job = queue.fetch_job(ids[0])
        assert job.get_status() == "finished", job.latest_result().exc_string if job.latest_result() else "failed"
        result = job.return_value()

        # A new version: the OD API export plus what the next training starts from, with metrics.
        store = ModelStore(env["MODEL_DIR"], project)
        version = store.current()
        assert result["version"] == version.name == "v0001" and version.classes == ("bird", "nest")
        assert (version.weights / "saved_model.pb").is_file() and (version.weights / "detector.weights.h5").is_file()
        assert version.manifest["base"] == env["BASE_MODEL"] and version.manifest["train_images"] + version.manifest["val_images"] == len(annotated)
        for key in ("map", "map50", "map75", "voc07_map50", "voc12_map50", "per_class"):
            assert key in version.metrics
        assert 0.0 <= version.metrics["map"] <= version.metrics["map50"] <= 1.0
        assert job.meta["training"]["epoch"] == job.meta["training"]["epochs"] == 3
        # and the manifest says what the fine-tune got: 3 epochs of a step per batch of 8 training images
        assert version.manifest["plan"] == {"epochs": 3, "repeat": 1, "steps": 3 * -(-version.manifest["train_images"] // 8)}

        # The job re-synced LS's queue with the new version, ranked by ALE entropy-sum over class vectors.
        sync = result["sync"]
        assert sync["status"] == "synced"
        served = ls_sdk.projects.get(id=project).model_version
        assert served.startswith("ale:v0001:")
        unlabeled = sorted(set(scenes) - set(annotated))  # every uploaded task that has no annotation
        assert sorted(p.task for p in ls_sdk.predictions.list(project=project) if p.model_version == served) == unlabeled
        assert httpx.get(f"{url}/versions", params={"project": project}, timeout=10).json()["current"] == "v0001"

    # The usefulness LS ranks by is ALE entropy-sum of the exported model's class vectors.
    settings = Settings.from_env(env)
    adapter = TfodAdapter(version.weights, score_floor=settings.score_threshold)
    predictor = Predictor(settings, adapter, MediaFetcher(settings, None))
    images = [scenes[t].image for t in unlabeled]
    detections = predictor.detect(images)
    assert all(d.class_probs.shape[1] == 2 for d in detections) and any(len(d) for d in detections)
    expected = get_policy("ale-entropy-sum").usefulness(detections)
    ranked = {int(k): v for k, v in sync_usefulness(redis_server, project, settings).items()}
    np.testing.assert_allclose([ranked[t] for t in unlabeled], expected, rtol=1e-4, atol=1e-6)

    # The yolov5 stack's job is still waiting in its own queue.
    assert RedisJobQueue(redis, "yolov5").info(torch_job).status == "queued"
    assert "torch" not in sys.modules


def sync_usefulness(redis_server, project, settings):
    from label_studio_ale.jobs import preview_ranking
    from label_studio_ale.runtime import Runtime

    return {row["task"]: row["usefulness"] for row in preview_ranking(project, runtime=Runtime(settings))["rows"]}
