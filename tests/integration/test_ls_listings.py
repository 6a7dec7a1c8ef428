"""LabelStudioClient's task listings against a real Label Studio 1.23.2: the annotated export, the savings listing, the
re-scoring of a served version. No backend, no model."""

import datetime

import pytest

from label_studio_ale.ls_client import LabelStudioClient, LabelStudioError
from tests.support.projects import create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOX = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 128, "original_height": 128,
       "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["bird"]}}  # fmt: skip


def counting(client: LabelStudioClient) -> list[dict]:
    """Every task listing `client` asks LS for, and every prediction PATCH, in order."""
    requests = []
    listing, update = client.sdk.tasks.list, client.sdk.predictions.update
    client.sdk.tasks.list = lambda **params: requests.append({"list": params}) or listing(**params)
    client.sdk.predictions.update = lambda **params: requests.append({"update": params}) or update(**params)
    return requests


def test_the_export_is_paged_by_id_and_keeps_ground_truth(ls_sdk, label_studio, monkeypatch):
    import label_studio_ale.ls_client as ls_client

    project, tasks = create_project(ls_sdk, range(57_000, 57_007), "export paged by id")
    for task in tasks[1:]:
        ls_sdk.annotations.create(id=task, result=[BOX])
    truth = ls_sdk.annotations.create(id=tasks[3], result=[BOX], ground_truth=True)
    assert ls_sdk.annotations.get(id=truth.id).ground_truth
    client = LabelStudioClient(label_studio.url, label_studio.token)
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 2)
    export = client.annotated_tasks(project)
    first = [next(export), next(export)]
    # meanwhile: the annotations of both exported tasks go, and an earlier task is annotated; by page number the next
    # page would start one task later, and that task would never be exported
    for task in tasks[1:3]:
        ls_sdk.annotations.delete(id=ls_sdk.annotations.list(id=task)[0].id)
    ls_sdk.annotations.create(id=tasks[0], result=[BOX])
    exported = first + list(export)
    assert [task.id for task, _ in exported] == tasks[1:]
    by_task = {task.id: annotations for task, annotations in exported}
    # one annotator: their latest annotation, the one marked as ground truth
    assert [(a["ground_truth"], a["result"][0]["value"]) for a in by_task[tasks[3]]] == [(True, BOX["value"])]
    assert [(a["ground_truth"], a["result"][0]["value"]) for a in by_task[tasks[4]]] == [(False, BOX["value"])]
    assert exported[0][0].data["image"].startswith("/data/upload/")


def test_the_savings_listing_gives_sdk_annotations_and_predictions_in_one_request(ls_sdk, label_studio):
    project, tasks = create_project(ls_sdk, range(57_100, 57_104), "savings listing")
    ls_sdk.projects.import_predictions(id=project, request=[{"task": t, "result": [BOX], "score": 0.5, "model_version": "ale:v1"} for t in tasks])
    shown = {p.task: p.id for p in ls_sdk.predictions.list(project=project)}
    made = ls_sdk.annotations.create(id=tasks[0], result=[BOX], lead_time=4.5, parent_prediction=shown[tasks[0]])
    ls_sdk.annotations.create(id=tasks[1], result=[], was_cancelled=True)
    ls_sdk.annotations.create(id=tasks[2], result=[BOX])
    client = LabelStudioClient(label_studio.url, label_studio.token)
    requests = counting(client)
    listed = list(client.task_annotations(project))
    assert [t.id for t in listed] == [tasks[0], tasks[2]] and len(requests) == 1, "one listing of the annotated tasks"
    (annotation,) = listed[0].annotations
    assert (annotation.id, annotation.task, annotation.was_cancelled, annotation.lead_time) == (made.id, tasks[0], False, 4.5)
    assert annotation.parent_prediction == shown[tasks[0]] and isinstance(annotation.created_at, datetime.datetime)
    (prediction,) = listed[0].predictions
    assert (prediction.id, prediction.model_version, prediction.result[0]["value"]) == (shown[tasks[0]], "ale:v1", BOX["value"])
    assert isinstance(prediction.created_at, datetime.datetime)
    chosen = {t.id: t for t in client.task_annotations(project, [tasks[1], tasks[3], 10**9])}
    assert sorted(chosen) == [tasks[1], tasks[3]], "the tasks chosen, annotated or not; one that does not exist is left out"
    assert [a.was_cancelled for a in chosen[tasks[1]].annotations] == [True], "a skipped annotation is listed as such"


def test_a_served_version_is_rescored_with_one_listing_and_a_patch_each(ls_sdk, label_studio):
    project, tasks = create_project(ls_sdk, range(57_200, 57_205), "re-score")
    for version in ("ale:old", "ale:v2"):
        ls_sdk.projects.import_predictions(id=project, request=[{"task": t, "result": [], "score": 0.5, "model_version": version} for t in tasks])
    client = LabelStudioClient(label_studio.url, label_studio.token)
    requests = counting(client)
    assert client.set_prediction_scores(project, "ale:v2", {tasks[0]: 0.125, tasks[3]: 0.875}) == 2
    assert [next(iter(r)) for r in requests] == ["list", "update", "update"]
    scores = {(p.task, p.model_version): p.score for p in ls_sdk.predictions.list(project=project)}
    assert scores[(tasks[0], "ale:v2")] == 0.125 and scores[(tasks[3], "ale:v2")] == 0.875
    assert scores[(tasks[0], "ale:old")] == 0.5 and scores[(tasks[1], "ale:v2")] == 0.5, "other versions and tasks keep theirs"

    ls_sdk.predictions.delete(id=next(p.id for p in ls_sdk.predictions.list(task=tasks[4]) if p.model_version == "ale:v2"))
    requests.clear()
    with pytest.raises(LabelStudioError, match=rf"1 of the 2 tasks to re-score in project {project} have no prediction of version ale:v2"):
        client.set_prediction_scores(project, "ale:v2", {tasks[1]: 0.25, tasks[4]: 0.75})
    assert [next(iter(r)) for r in requests] == ["list"], "nothing written"


def test_the_unlabelled_tasks_are_paged_by_id_past_a_task_deleted_mid_listing(ls_sdk, label_studio, monkeypatch):
    import label_studio_ale.ls_client as ls_client

    project, tasks = create_project(ls_sdk, range(57_300, 57_308), "unlabelled paged by id")
    ls_sdk.annotations.create(id=tasks[5], result=[BOX])
    client = LabelStudioClient(label_studio.url, label_studio.token)
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 3)
    listing = client.unlabeled_tasks(project)
    first = [next(listing) for _ in range(3)]
    # meanwhile: a listed task is deleted; by page number the next page would start one task later, and that task,
    # below the served queue's last task id, would be left out of every later listing of new tasks
    ls_sdk.tasks.delete(id=tasks[1])
    listed = first + list(listing)
    assert [task.id for task in listed] == tasks[:5] + tasks[6:]
    assert listed[3].data["image"].startswith("/data/upload/")
    assert [task.id for task in client.unlabeled_tasks(project, after_id=tasks[3])] == [tasks[4], *tasks[6:]]


def test_the_projects_label_studio_lists_are_those_that_exist(ls_sdk, label_studio, monkeypatch):
    import label_studio_ale.ls_client as ls_client

    kept, deleted = (ls_sdk.projects.create(title=f"listed {n}").id for n in range(2))
    ls_sdk.projects.delete(id=deleted)
    monkeypatch.setattr(ls_client, "PROJECT_IDS_PER_REQUEST", 1)  # one request each, each answered in one page
    client = LabelStudioClient(label_studio.url, label_studio.token)
    assert client.project_ids([kept, deleted, 10**6]) == {kept}
    behind_a_proxy = LabelStudioClient(f"{label_studio.url}/label-studio", label_studio.token)  # a path LS does not serve
    # LS answers 404 there: to the listing, or first to the exchange of the personal access token
    with pytest.raises(LabelStudioError, match=r"/label-studio.*(answered 404: |check that )LABEL_STUDIO_URL .*the address"):
        behind_a_proxy.project_ids([kept])
