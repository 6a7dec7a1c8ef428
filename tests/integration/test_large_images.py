"""Drone frames: small animals in a 6000x4000 frame are found through tiles, by a model that Start Training
fine-tuned on tiles of the project's own annotated frames (real LS 1.23.2, rq worker, gunicorn)."""

import io
import time

import httpx
import numpy as np
import pytest

from label_studio_ale.adapters import load_adapter
from label_studio_ale.boxes import box_iou
from label_studio_ale.ls_format import rectangle_to_xyxy
from label_studio_ale.model_store import ModelStore
from label_studio_ale.settings import Settings
from label_studio_ale.synthetic import make_large_scene
from label_studio_ale.training_set import is_validation
from tests.support.backend import backend_env, run_backend, run_worker
from tests.support.label_studio import upload_images
from tests.support.models import IMAGE_SIZE
from tests.support.projects import LABEL_CONFIG, annotate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Frames whose longer side is above this are tiled (in tiles of IMAGE_SIZE, 128 px here).
TILE_ABOVE = 1000
TRAIN_FRAME = (1200, 900)
BIG_FRAME = (6000, 4000)
SMALL_OBJECTS = 48


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    """Share of the (n, 4) true boxes matched by a found box with IoU >= 0.5."""
    if not len(found):
        return 0.0
    return float((box_iou(truth, found).max(axis=1) >= 0.5).mean())


def jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("large-image-models")


@pytest.fixture(scope="module")
def env(label_studio, redis_server, trained_weights, model_dir):
    return backend_env(
        label_studio,
        trained_weights,
        model_dir,
        redis_server,
        BASE_MODEL=str(trained_weights),  # a bird detector trained on 128 px scenes, never on a large frame
        TRAIN_BATCH="16",
        TILE_ABOVE=str(TILE_ABOVE),
        PREDICT_BATCH_SIZE="32",
    )


@pytest.fixture(scope="module")
def services(env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("large-image-services")
    with run_backend(env, workdir) as backend, run_worker(env, workdir, queues="train,predict,sync"):
        yield backend


def test_start_training_on_tiles_then_small_birds_in_a_6000x4000_frame_are_found_through_tiles(ls_sdk, services, env, model_dir):
    project = ls_sdk.projects.create(title="drone frames", label_config=LABEL_CONFIG).id
    # Annotated frames, uploaded until the training split has 3 and validation 1.
    frames, seed = {}, 900
    while sum(not is_validation(t) for t in frames) < 3 or sum(is_validation(t) for t in frames) < 1:
        scene = make_large_scene(seed, size=TRAIN_FRAME, objects=12)
        (task,) = upload_images(ls_sdk, project, [(f"frame{seed}.jpg", jpeg(scene.image))])
        frames[task] = scene
        seed += 1
    for task, scene in frames.items():
        annotate(ls_sdk, task, scene)
    big = make_large_scene(7, size=BIG_FRAME, objects=SMALL_OBJECTS)
    assert len(big.xyxy) == SMALL_OBJECTS and 16 <= (big.xyxy[:, 2] - big.xyxy[:, 0]).min() <= 32
    (big_task,) = upload_images(ls_sdk, project, [("big.jpg", jpeg(big.image))])

    ml = ls_sdk.ml.create(project=project, url=services, title="ale")
    ls_sdk.ml.train(id=ml.id)
    store = ModelStore(model_dir, project)
    deadline = time.monotonic() + 600
    while store.current() is None:
        assert time.monotonic() < deadline, "Start Training did not produce a version"
        time.sleep(1)
    version = store.current()
    manifest = version.manifest
    assert manifest["tiled_images"] == len(frames), "every annotated frame is larger than TILE_ABOVE"
    assert manifest["tiles"] > len(frames) * 6
    # evaluated on whole validation frames through sliced inference: the mAP a user gets
    assert version.metrics["images"] == sum(is_validation(t) for t in frames)
    assert version.metrics["map50"] >= 0.8

    # LS asks the backend for the big frame's pre-annotation (Retrieve Predictions sends the task as LS stores it).
    task = ls_sdk.tasks.get(id=big_task)
    response = httpx.post(
        f"{services}/predict",
        json={"tasks": [{"id": task.id, "data": task.data}], "project": f"{project}.1", "label_config": LABEL_CONFIG},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["results"]
    assert prediction["model_version"].startswith("v0001")
    regions = prediction["result"]
    # percent coordinates of the full frame: back to pixels with the frame's size
    assert all(r["original_width"] == BIG_FRAME[0] and r["original_height"] == BIG_FRAME[1] for r in regions)
    found = np.array([rectangle_to_xyxy(r, BIG_FRAME)[0] for r in regions]).reshape(-1, 4)
    tiled_recall = recall(big.xyxy, found)
    assert tiled_recall >= 0.8, f"tiled inference found {tiled_recall:.0%} of the birds"
    assert len(found) <= SMALL_OBJECTS * 1.2, "birds on tile seams are reported once, not twice"

    # The same version without tiles, the frame shrunk to the same model input: the birds are a pixel or two.
    settings = Settings(model_weights=str(version.weights), image_size=IMAGE_SIZE, tile_above=0)
    untiled = load_adapter(settings).predict([big.image])[0]
    untiled = untiled[untiled.scores >= settings.score_threshold]
    assert recall(big.xyxy, untiled.xyxy) < 0.2

    # The train job's re-sync ranked the frame with its tiled detections.
    served = ls_sdk.projects.get(id=project).model_version
    deadline = time.monotonic() + 300
    while not served.startswith("ale:v0001:"):
        assert time.monotonic() < deadline, "the queue was not re-synced after training"
        time.sleep(1)
        served = ls_sdk.projects.get(id=project).model_version
    (synced,) = [p for p in ls_sdk.predictions.list(task=big_task) if p.model_version == served]
    assert len(synced.result) >= 0.8 * SMALL_OBJECTS
