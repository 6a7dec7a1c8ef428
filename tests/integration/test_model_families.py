"""Checkpoints of every ultralytics detection family the adapter serves: YOLOv5u, YOLOv8 and YOLO11.

Each is built from its yaml and trained a little here (nothing downloaded), then: served with every kept box's
class vector equal to ultralytics' own scores, grown to a new label without changing the known classes'
outputs, and fine-tuned by Start Training against a real Label Studio 1.23.2 (embedded jobs).
"""

import time

import numpy as np
import pytest

from label_studio_ale.app import create_app
from label_studio_ale.model_store import ModelStore
from label_studio_ale.settings import Settings
from label_studio_ale.synthetic import make_scene
from label_studio_ale_plugins.yolov5 import YoloV5Adapter, grow_head
from tests.support.backend import backend_env
from tests.support.models import HELD_OUT_SEEDS, IMAGE_SIZE, assert_same_as_ultralytics, class_outputs, train_family_checkpoint
from tests.support.projects import annotate, create_split_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAMILIES = ["yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_checkpoint_serves_grows_and_trains(family, workdir, ls_sdk, label_studio, tmp_path):
    checkpoint = train_family_checkpoint(workdir, family)
    images = [make_scene(seed).image for seed in HELD_OUT_SEEDS[:6]]

    # Served: the kept boxes and their class vectors are ultralytics' own.
    adapter = YoloV5Adapter(checkpoint, image_size=IMAGE_SIZE, conf_floor=0.05)
    assert adapter.classes == ("bird", "nest") and adapter.trained
    assert assert_same_as_ultralytics(adapter, images) > 0

    # Grown to a new label: the known classes' outputs are unchanged (the head's rows moved, not retrained).
    grown = grow_head(checkpoint, ["nest", "bird", "egg"], tmp_path / "grown.pt")
    before, after = class_outputs(checkpoint, images), class_outputs(grown, images)
    np.testing.assert_allclose(after[:, 0], before[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[:, 1], before[:, 0], rtol=1e-5, atol=1e-6)

    # Start Training against real Label Studio, from this checkpoint.
    project, train, val, scenes = create_split_project(ls_sdk, f"family {family}", 8, 2, 97_000, max_objects=3)
    for task_id in train + val:
        annotate(ls_sdk, task_id, scenes[task_id])
    env = backend_env(label_studio, checkpoint, tmp_path / "models", BASE_MODEL=str(checkpoint), TRAIN_EPOCHS="2", TRAIN_BATCH="8")
    client = create_app(Settings.from_env(env)).test_client()
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert response.status_code == 201, response.get_json()
    deadline = time.monotonic() + 300
    while (status := client.get(f"/jobs/{response.get_json()['job']}").get_json())["status"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, "Start Training did not finish"
        time.sleep(0.5)
    assert status["status"] == "finished", status["error"]
    assert status["result"]["version"] == "v0001" and status["result"]["promoted"]
    version = ModelStore(tmp_path / "models", project).current()
    assert version.manifest["base"] == str(checkpoint)
    trained = YoloV5Adapter(version.weights, image_size=IMAGE_SIZE, conf_floor=0.05)
    assert trained.classes == ("bird", "nest")
    assert_same_as_ultralytics(trained, images)
