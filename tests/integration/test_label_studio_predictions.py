"""Label Studio's own "Retrieve Predictions" action against the running backend. No mocks."""

import io
import time

import numpy as np
import pytest

from label_studio_ale.boxes import box_iou
from label_studio_ale.ls_format import rectangle_to_xyxy
from label_studio_ale.synthetic import make_scene
from tests.support.backend import run_backend
from tests.support.label_studio import upload_images
from tests.support.models import IMAGE_SIZE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Bird" predicted_values="bird"/>
    <Label value="Nest" predicted_values="nest"/>
  </RectangleLabels>
</View>
"""
SEEDS = list(range(20_000, 20_006))
AUTH = ("label-studio", "backend-basic-pw")


def png(scene) -> bytes:
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def backend(label_studio, trained_weights, tmp_path_factory):
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "MODEL_WEIGHTS": str(trained_weights),
        "IMAGE_SIZE": str(IMAGE_SIZE),
        "SCORE_THRESHOLD": "0.25",
        "BASIC_AUTH_USER": AUTH[0],
        "BASIC_AUTH_PASS": AUTH[1],
    }
    with run_backend(env, tmp_path_factory.mktemp("backend")) as url:
        yield url


def test_retrieve_predictions_stores_boxes_labels_and_scores(ls_sdk, backend):
    project = ls_sdk.projects.create(title="birds", label_config=LABEL_CONFIG)
    scenes = {f"scene{seed}.png": make_scene(seed) for seed in SEEDS}
    task_ids = upload_images(ls_sdk, project.id, [(name, png(scene)) for name, scene in scenes.items()])
    assert len(task_ids) == len(SEEDS)

    # Settings -> Model -> Connect: LS calls /health and /setup with Basic Auth.
    ml = ls_sdk.ml.create(
        project=project.id,
        url=backend,
        title="ale",
        auth_method="BASIC_AUTH",
        basic_auth_user=AUTH[0],
        basic_auth_pass=AUTH[1],
    )
    assert ml.id

    # Data Manager -> select all -> Actions -> Retrieve Predictions.
    ls_sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []})

    versions = set()
    matched = total = 0
    for task_id in task_ids:
        task = ls_sdk.tasks.get(id=task_id)
        predictions = ls_sdk.predictions.list(task=task_id)
        assert len(predictions) == 1, f"task {task_id} has {len(predictions)} predictions"
        prediction = predictions[0]
        versions.add(prediction.model_version)
        assert 0.0 <= prediction.score <= 1.0
        assert prediction.result, f"task {task_id}: no boxes"
        scene = scenes[task.data["image"].rsplit("-", 1)[-1]]  # LS prefixes uploads with a random id
        boxes, labels = [], []
        for region in prediction.result:
            assert region["type"] == "rectanglelabels" and region["from_name"] == "label" and region["to_name"] == "image"
            assert region["value"]["rectanglelabels"][0] in ("Bird", "Nest")
            assert 0.25 <= region["score"] <= 1.0
            box, label = rectangle_to_xyxy(region)
            boxes.append(box)
            labels.append(label)
        # The task score is the lowest region score (least confident box first).
        assert prediction.score == pytest.approx(min(r["score"] for r in prediction.result))
        # The boxes LS stored are where the generated objects are.
        for gt_box, gt_label in zip(scene.xyxy, scene.labels):
            total += 1
            overlap = box_iou(gt_box[None], np.array(boxes))[0]
            best = int(overlap.argmax())
            expected = ("Bird", "Nest")[gt_label]
            matched += bool(overlap[best] >= 0.5 and labels[best] == expected)
    assert len(versions) == 1 and versions.pop().startswith("last-")
    assert matched / total >= 0.8, f"{matched}/{total} ground-truth boxes found in LS's predictions"


def test_backend_answers_ls_only_with_credentials(backend):
    import httpx

    assert httpx.get(f"{backend}/health").status_code == 200
    assert httpx.get(f"{backend}/versions").status_code == 401
    assert httpx.get(f"{backend}/versions", auth=AUTH).json()["versions"][0].startswith("last-")


def test_a_file_missing_from_label_studio_is_named_as_missing(ls_sdk, label_studio, backend):
    """LS 1.23 answers a deleted upload with 500; the task's error says the file is missing, and which."""
    import httpx

    project = ls_sdk.projects.create(title="missing file", label_config=LABEL_CONFIG)
    kept, gone = upload_images(ls_sdk, project.id, [("kept.png", png(make_scene(1))), ("gone.png", png(make_scene(2)))])
    path = ls_sdk.tasks.get(id=gone).data["image"]
    stored = label_studio.data_dir / "media" / path.removeprefix("/data/")
    content = stored.read_bytes()
    stored.unlink()
    tasks = [{"id": t, "data": ls_sdk.tasks.get(id=t).data} for t in (kept, gone)]
    answer = httpx.post(f"{backend}/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG}, auth=AUTH, timeout=60).json()
    assert answer["results"][0]["result"] and answer["results"][1] == [], "no prediction for the task that failed"
    (error,) = answer["errors"]
    assert error["task"] == gone and f"the file {path} is missing from Label Studio's upload folder" in error["reason"]

    # LS stores nothing for it, so once the file is back "Retrieve Predictions" predicts it (LS skips a task that
    # has a prediction of the model's version: an empty one stored for the failure would stay for good)
    ls_sdk.ml.create(project=project.id, url=backend, title="ale", auth_method="BASIC_AUTH", basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])
    everything = {"all": True, "excluded": []}
    ls_sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items=everything)
    assert len(ls_sdk.predictions.list(task=kept)) == 1 and ls_sdk.predictions.list(task=gone) == []
    stored.write_bytes(content)
    ls_sdk.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items=everything)
    (prediction,) = ls_sdk.predictions.list(task=gone)
    assert prediction.result and len(ls_sdk.predictions.list(task=kept)) == 1


def test_listing_tasks_never_asks_label_studio_for_a_page_past_the_end(ls_sdk, label_studio):
    """The SDK's pager asks for one page too many, and LS logs a NotFound traceback for it each time."""
    from label_studio_ale import ls_client
    from label_studio_ale.ls_client import LabelStudioClient

    project = ls_sdk.projects.create(title="paging", label_config=LABEL_CONFIG)
    task_ids = upload_images(ls_sdk, project.id, [(f"p{i}.png", png(make_scene(i))) for i in range(5)])
    client = LabelStudioClient(label_studio.url, label_studio.token)
    before = label_studio.log.read_text(errors="replace").count("Invalid page")
    page_size = ls_client.TASK_PAGE_SIZE
    try:
        for size in (2, 5, 1000):  # a last page that is partial, exactly full, and the only one
            ls_client.TASK_PAGE_SIZE = size
            assert [t.id for t in client.unlabeled_tasks(project.id)] == task_ids
    finally:
        ls_client.TASK_PAGE_SIZE = page_size
    assert label_studio.log.read_text(errors="replace").count("Invalid page") == before
    # the SDK's own pager does ask (the log is where LS says so)
    assert len(list(ls_sdk.tasks.list(project=project.id, page_size=2))) == 5
    deadline = time.monotonic() + 10
    while label_studio.log.read_text(errors="replace").count("Invalid page") == before:
        assert time.monotonic() < deadline, "LS logged nothing for a page past the end: this test cannot see the difference"
        time.sleep(0.2)


def test_the_annotated_tasks_are_filtered_by_label_studio_not_listed_whole(ls_sdk, label_studio):
    """LS 1.23 reads no `only_annotated`: the listing for training and for labelled tasks filters on total_annotations."""
    from label_studio_ale.ls_client import LabelStudioClient

    project = ls_sdk.projects.create(title="annotated listing", label_config=LABEL_CONFIG)
    task_ids = upload_images(ls_sdk, project.id, [(f"a{i}.png", png(make_scene(i))) for i in range(6)])
    box = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 128, "original_height": 128,
           "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["Bird"]}}  # fmt: skip
    ls_sdk.annotations.create(id=task_ids[1], result=[box])
    ls_sdk.annotations.create(id=task_ids[4], result=[box])
    ls_sdk.annotations.create(id=task_ids[5], result=[], was_cancelled=True)  # skipped: not annotated
    client = LabelStudioClient(label_studio.url, label_studio.token)
    listed = []
    plain_list = client.sdk.tasks.list

    def counting_list(**params):
        pager = plain_list(**params)
        listed.extend(t.id for t in pager.items or [])
        return pager

    client.sdk.tasks.list = counting_list
    assert [task.id for task, _ in client.annotated_tasks(project.id)] == [task_ids[1], task_ids[4]]
    assert sorted(listed) == [task_ids[1], task_ids[4]], "LS sent only the annotated tasks"
    listed.clear()
    assert [t.id for t in client.labelled_tasks(project.id)] == [task_ids[1], task_ids[4]]
    assert sorted(listed) == [task_ids[1], task_ids[4]]
