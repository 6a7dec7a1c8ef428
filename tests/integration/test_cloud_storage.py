"""Images in a bucket: real LS 1.23.2 with an S3 import storage on a local S3-compatible server (moto).

Tasks synced from the bucket are pre-annotated by /predict (LS's Retrieve
Predictions), ranked by the priority sync and trained on by Start Training,
once with LS proxying the bytes and once with LS redirecting to presigned URLs.
No image passes through LS's upload folder.
"""

import io
import time

import httpx
import pytest
from redis import Redis

from label_studio_ale.jobqueue import QUEUE_SYNC, RedisJobQueue
from label_studio_ale.jobs import sync_priorities
from label_studio_ale.ls_client import LabelStudioClient
from label_studio_ale.model_store import ModelStore
from label_studio_ale.synthetic import make_scene
from label_studio_ale.training_set import is_validation
from tests.support.backend import backend_env, run_backend, run_worker
from tests.support.projects import LABEL_CONFIG, annotate
from tests.support.s3_server import ACCESS_KEY, REGION, SECRET_KEY, start_s3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB_TIMEOUT = 300
PREFIX = "colony"


def png(scene) -> bytes:
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bucket-models")


@pytest.fixture(scope="module")
def env(label_studio, redis_server, trained_weights, model_dir):
    return backend_env(
        label_studio, trained_weights, model_dir, redis_server, BASE_MODEL=str(trained_weights), TRAIN_EPOCHS="1", TRAIN_BATCH="8"
    )


@pytest.fixture(scope="module")
def services(env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bucket-services")
    with run_backend(env, workdir) as backend, run_worker(env, workdir, queues="train,predict,sync"):
        yield backend


@pytest.fixture(scope="module")
def jobs(redis_server):
    return RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")


def wait_job(jobs, job_id):
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        info = jobs.info(job_id)
        if info is not None and info.status in ("finished", "failed"):
            return info
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not done: {jobs.info(job_id)}")


def sync_storage(ls, storage_id):
    ls.import_storage.s3.sync(id=storage_id)
    deadline = time.monotonic() + 120
    while (status := ls.import_storage.s3.get(id=storage_id).status) not in ("completed", "completed_with_errors", "failed"):
        assert time.monotonic() < deadline, f"storage sync stuck in {status}"
        time.sleep(0.5)
    assert status == "completed", status


def bucket_project(ls, s3, presign: bool, first_seed: int):
    """A project fed by an S3 import storage; objects are added until the training split has 2 train and 1 val task
    among the first tasks, and 4 more stay unlabeled. -> (project, storage id, {task id: (key, scene)})."""
    bucket = "birds-presigned" if presign else "birds-proxied"
    s3.create_bucket(bucket)
    project = ls.projects.create(title=f"bucket presign={presign}", label_config=LABEL_CONFIG).id
    scenes, seed, storage = {}, first_seed, None
    tasks: dict[int, tuple[str, object]] = {}
    while sum(is_validation(t) for t in tasks) < 1 or sum(not is_validation(t) for t in tasks) < 6:
        batch = {f"{PREFIX}/frame{seed + i:05d}.png": make_scene(seed + i, max_objects=4) for i in range(4)}
        s3.put(bucket, {key: png(scene) for key, scene in batch.items()})
        scenes |= batch
        seed += 4
        if storage is None:  # LS checks at creation that the prefix holds objects
            storage = ls.import_storage.s3.create(
                project=project,
                bucket=bucket,
                prefix=PREFIX,
                use_blob_urls=True,
                presign=presign,
                presign_ttl=15,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                s3endpoint=s3.url,
                region_name=REGION,
            )
        sync_storage(ls, storage.id)
        for task in ls.tasks.list(project=project, resolve_uri=False):
            uri = task.data["image"]
            assert uri.startswith(f"s3://{bucket}/{PREFIX}/"), uri
            key = uri.split(f"s3://{bucket}/", 1)[1]
            tasks[task.id] = (key, scenes[key])
    return project, storage.id, bucket, tasks


@pytest.mark.parametrize("presign", [False, True], ids=["proxied", "presigned"])
def test_bucket_images_are_pre_annotated_ranked_and_trained_on(ls_sdk, label_studio, s3, services, jobs, model_dir, presign):
    project, storage, bucket, tasks = bucket_project(ls_sdk, s3, presign, 60_000 if presign else 61_000)
    ml = ls_sdk.ml.create(project=project, url=services, title="ale")

    # Data Manager -> Retrieve Predictions: LS posts the tasks (s3:// URIs) to /predict; the backend reads them through LS.
    ls_sdk.actions.create(id="retrieve_tasks_predictions", project=project, selected_items={"all": True, "excluded": []})
    predictions = {p.task: p for p in ls_sdk.predictions.list(project=project)}
    assert set(predictions) == set(tasks)
    with_boxes = [t for t, p in predictions.items() if p.result]
    assert len(with_boxes) >= 0.8 * len(tasks), "the detector sees the birds of the bucket's images"

    requests = s3.requests()
    signed_gets = [line for line in requests if '"GET ' in line and "X-Amz-Signature" in line]
    if presign:
        # the backend followed LS's redirect to the presigned URL on the bucket's endpoint, one GET per image
        assert len(signed_gets) >= len(tasks)
    else:
        assert not signed_gets, "with presigning off LS proxies the bytes: nobody fetches a presigned URL"

    # A key that vanished from the bucket: a readable per-task error naming it, nothing else lost.
    unlabeled = sorted(t for t in tasks if not is_validation(t))[4:]
    gone = unlabeled[-1]
    s3.delete(bucket, tasks[gone][0])
    raw = ls_sdk.tasks.get(id=gone)
    response = httpx.post(
        f"{services}/predict",
        json={"tasks": [{"id": gone, "data": {"image": f"s3://{bucket}/{tasks[gone][0]}"}}, {"id": unlabeled[0], "data": {"image": f"s3://{bucket}/{tasks[unlabeled[0]][0]}"}}],
        "project": f"{project}.1", "label_config": LABEL_CONFIG},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["task"] for e in body["errors"]] == [gone] and tasks[gone][0] in body["errors"][0]["reason"]
    assert body["results"][1]["result"], "the other task of the batch is still predicted"
    assert raw.data["image"].startswith("/tasks/") or raw.data["image"].startswith("s3://")

    # Annotate two training tasks and the validation ones; the rest is ranked by the sync.
    annotated = [t for t in tasks if is_validation(t)] + sorted(t for t in tasks if not is_validation(t))[:4]
    for task in annotated:
        annotate(ls_sdk, task, tasks[task][1])
    info = wait_job(jobs, jobs.enqueue(QUEUE_SYNC, sync_priorities, project, retry=True))
    assert info.status == "finished", info
    result = info.result
    assert result["status"] == "synced" and result["tasks"] == len(tasks) - len(annotated)
    assert result["predicted"]["failed"] == 1 and tasks[gone][0] in result["predicted"]["errors"][gone]
    assert result["order"][-1] == gone, "the unreadable image goes to the end of the queue"
    assert result["unusable"] == 1
    served = ls_sdk.projects.get(id=project).model_version
    ranked = {p.task for p in ls_sdk.predictions.list(project=project) if p.model_version == served}
    assert ranked == set(tasks) - set(annotated)
    # The backend lists tasks with their bucket URIs as stored, not rewritten onto LS's own HOST
    # (which need not be the address the backend reaches LS at): media resolves them per task.
    client = LabelStudioClient(label_studio.url, label_studio.token)
    assert {t.data["image"].split("/", 3)[2] for t in client.unlabeled_tasks(project)} == {bucket}
    assert all(t.data["image"].startswith("s3://") for t in client.unlabeled_tasks(project))

    # Start Training reads the annotated images from the bucket too.
    ls_sdk.ml.train(id=ml.id)
    store = ModelStore(model_dir, project)
    deadline = time.monotonic() + JOB_TIMEOUT
    while store.current() is None:
        assert time.monotonic() < deadline, "Start Training did not produce a version"
        time.sleep(1)
    manifest = store.current().manifest
    assert manifest["train_images"] + manifest["val_images"] == len(annotated) and manifest["skipped_images"] == 0

    # Nothing went through LS's own upload folder.
    assert not (label_studio.data_dir / "media" / "upload" / str(project)).exists()
