"""ADAPTER=tfod through Label Studio: Retrieve Predictions, the priority sync, and the /setup policy check.

Runs in the TensorFlow environment only (scripts/test runs it there); torch is never loaded beside TensorFlow.
"""

import io
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow", reason="the tfod tests run in the TensorFlow environment: scripts/test runs them there")

from label_studio_ale.jobs import sync_priorities  # noqa: E402
from label_studio_ale.ls_format import rectangle_to_xyxy  # noqa: E402
from label_studio_ale.runtime import Runtime  # noqa: E402
from label_studio_ale.settings import Settings  # noqa: E402
from tests.support.backend import run_backend  # noqa: E402
from tests.support.label_studio import upload_images  # noqa: E402
from tests.support.tf_models import BOXES, MULTICLASS, export_od_model  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="bird"/>
    <Label value="nest"/>
  </RectangleLabels>
</View>
"""
SIZES = [(160, 120), (90, 200), (128, 128)]


def png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 140, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def env(label_studio, tmp_path_factory):
    export = export_od_model(tmp_path_factory.mktemp("od-export"))
    return {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "ADAPTER": "tfod",
        "MODEL_WEIGHTS": str(export),
        "SCORE_THRESHOLD": "0.25",
        "MODEL_DIR": str(tmp_path_factory.mktemp("models")),
    }


def test_retrieve_predictions_and_the_sync_serve_a_tfod_savedmodel(ls_sdk, env, tmp_path):
    assert "torch" not in sys.modules
    project = ls_sdk.projects.create(title="tfod", label_config=LABEL_CONFIG)
    task_ids = upload_images(ls_sdk, project.id, [(f"img{i}.png", png(size)) for i, size in enumerate(SIZES)])
    with run_backend(env, tmp_path) as url:
        ls_sdk.ml.create(project=project.id, url=url, title="tfod")
        ls_sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []})
        for task_id, size in zip(task_ids, SIZES):
            (prediction,) = ls_sdk.predictions.list(task=task_id)
            assert prediction.model_version.startswith(f"{env['MODEL_WEIGHTS'].rsplit('/', 1)[-1]}-")
            regions = sorted(prediction.result, key=lambda r: r["value"]["x"], reverse=True)
            assert [r["value"]["rectanglelabels"][0] for r in regions] == ["bird", "nest"]
            width, height = size
            for region, box, probs in zip(regions, BOXES, MULTICLASS):
                xyxy, _ = rectangle_to_xyxy(region)
                expected = np.array([box[1] * width, box[0] * height, box[3] * width, box[2] * height])
                np.testing.assert_allclose(xyxy, expected, atol=0.05)
                assert region["score"] == pytest.approx(probs[1:].max(), abs=1e-5)

    # The priority sync ranks with the class vectors (ale-entropy-sum) and switches LS's queue to it.
    result = sync_priorities(project.id, runtime=Runtime(Settings.from_env(env)))
    assert result["status"] == "synced" and result["policy"] == "ale-entropy-sum" and result["tasks"] == len(SIZES)
    assert ls_sdk.projects.get(id=project.id).model_version == result["model_version"]
    for task_id in task_ids:
        versions = {p.model_version: p for p in ls_sdk.predictions.list(task=task_id)}
        assert len(versions[result["model_version"]].result) == 2
    assert "torch" not in sys.modules


def test_setup_refuses_an_uncertainty_policy_for_a_model_without_class_vectors(env, tmp_path):
    single = export_od_model(tmp_path / "single", multiclass=False)
    payload = {"project": "7", "schema": LABEL_CONFIG}
    with run_backend(env | {"MODEL_WEIGHTS": str(single), "POLICY": "ale-entropy-sum"}, tmp_path) as url:
        answer = httpx.post(f"{url}/setup", json=payload, timeout=30)
        assert answer.status_code == 400
        assert "POLICY=ale-entropy-sum needs every box's per-class scores" in answer.text
        assert "min-confidence" in answer.text
    with run_backend(env | {"MODEL_WEIGHTS": str(single), "POLICY": "min-confidence"}, tmp_path) as url:
        assert httpx.post(f"{url}/setup", json=payload, timeout=30).status_code == 200


def test_retrieve_predictions_serves_the_tiny_trained_detector(ls_sdk, env, trained_tf_detector, tmp_path):
    """The RetinaNet trained from config (tests/support/tf_models.py), exported, served to LS: it finds the objects."""
    from label_studio_ale.boxes import box_iou
    from label_studio_ale.synthetic import make_scene
    from tests.support.models import HELD_OUT_SEEDS

    scenes = [make_scene(seed) for seed in HELD_OUT_SEEDS[:6]]
    files = []
    for i, scene in enumerate(scenes):
        buffer = io.BytesIO()
        scene.image.save(buffer, format="PNG")
        files.append((f"held{i}.png", buffer.getvalue()))
    project = ls_sdk.projects.create(title="tfod trained", label_config=LABEL_CONFIG)
    task_ids = upload_images(ls_sdk, project.id, files)
    regions = recovered = 0
    with run_backend(env | {"MODEL_WEIGHTS": str(trained_tf_detector)}, tmp_path) as url:
        ls_sdk.ml.create(project=project.id, url=url, title="tfod trained")
        ls_sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []})
        for task_id, scene in zip(task_ids, scenes):
            (prediction,) = ls_sdk.predictions.list(task=task_id)
            assert prediction.model_version.startswith("detector-")
            boxes = {"bird": [], "nest": []}
            for region in prediction.result:
                xyxy, label = rectangle_to_xyxy(region)
                assert region["score"] >= 0.25
                boxes[label].append(xyxy)
                regions += 1
            for truth, label in zip(scene.xyxy, scene.labels):
                same = boxes[("bird", "nest")[label]]
                recovered += bool(same) and box_iou(truth[None], np.asarray(same)).max() >= 0.5
    # LS now holds a pre-annotation for most objects: the right label on a box with IoU >= 0.5
    truths = sum(len(scene.labels) for scene in scenes)
    assert recovered >= 0.7 * truths and regions <= 6 * truths, (recovered, truths, regions)
