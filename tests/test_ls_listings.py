"""LabelStudioClient's task listings at the SDK's seam: a fake of LS 1.23's task list API (no server)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

import label_studio_ale.ls_client as ls_client
from label_studio_ale.ls_client import LabelStudioClient, LabelStudioError


def annotation(id, who=1, result=None, cancelled=False, **fields):
    return {"id": id, "completed_by": who, "result": result or [{"id": f"r{id}"}], "was_cancelled": cancelled,
            "created_at": "2026-01-02T03:04:05.000006Z", "updated_at": f"2026-01-02T03:04:{id % 60:02d}Z", **fields}  # fmt: skip


def prediction(id, version, score=0.5):
    return {"id": id, "model_version": version, "score": score, "result": [], "created_at": "2026-01-01T00:00:00Z"}


class FakeTasks:
    """LS's GET /api/tasks as the SDK answers it: the id and total_annotations filters, selectedItems, the id
    ordering, pages (at most `cap` a page, LS's TASK_API_PAGE_SIZE_MAX), and `include`; annotations and predictions
    only with fields=all. `meanwhile(n)` runs after the n-th answer: what LS's users change during a listing."""

    def __init__(self, tasks: dict[int, dict], cap: int | None = None):
        self.tasks = tasks  # id -> {"data", "annotations", "predictions"}
        self.cap, self.requests, self.pages, self.meanwhile = cap, [], [], None

    def submitted(self, task: int) -> int:
        return sum(not a["was_cancelled"] for a in self.tasks[task].get("annotations", []))

    def list(self, project, page, page_size, query=None, fields="task_only", include=None, resolve_uri=None):
        from label_studio_sdk.core.unchecked_base_model import construct_type
        from label_studio_sdk.types import LseTask

        assert resolve_uri is False
        asked = json.loads(query or "{}")
        self.requests.append({"fields": fields, "include": include, **asked})
        ids = sorted(self.tasks)
        for item in asked.get("filters", {}).get("items", []):
            field = {"filter:tasks:id": lambda t: t, "filter:tasks:total_annotations": self.submitted}[item["filter"]]
            assert item["operator"] == "greater"
            ids = [t for t in ids if field(t) > item["value"]]
        if "selectedItems" in asked:
            ids = [t for t in ids if t in asked["selectedItems"]["included"]]
        size = page_size if self.cap is None else min(page_size, self.cap)
        shown = ids[(page - 1) * size : page * size]
        self.pages.append(shown)
        items = []
        for t in shown:
            task = {"id": t, "data": self.tasks[t].get("data", {}), "is_labeled": self.submitted(t) > 0}
            wanted = set(include.split(",")) if include else None
            if fields == "all":
                # LS filters each annotation's fields by `include` too; predictions come whole
                annotations = [{k: v for k, v in a.items() if wanted is None or k in wanted} for a in self.tasks[t].get("annotations", [])]
                task |= {"annotations": annotations, "predictions": self.tasks[t].get("predictions", [])}
            wanted = wanted or set(task)
            items.append(construct_type(type_=LseTask, object_={k: v for k, v in task.items() if k in wanted}))
        answer = type("Pager", (), {"items": items, "response": type("Page", (), {"total": len(ids)})()})()
        if self.meanwhile is not None:
            self.meanwhile(len(self.requests))
        return answer


class FakePredictions:
    def __init__(self):
        self.updated = []

    def update(self, id, score):
        self.updated.append((id, score))

    def list(self, **params):
        raise AssertionError("predictions are read from the task listing, not listed per task")


def client_over(tasks: FakeTasks) -> LabelStudioClient:
    client = LabelStudioClient.__new__(LabelStudioClient)
    client.sdk = type("Sdk", (), {"tasks": tasks, "predictions": FakePredictions(), "annotations": None})()
    return client


def test_an_annotation_removed_or_added_during_the_export_shifts_no_task_out_of_it_nor_one_in_twice(monkeypatch):
    """By page number, the annotation of task 1 deleted after the first page moved task 4 onto page 1: never exported;
    task 0 annotated meanwhile moved task 5 back onto page 3: exported twice."""
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 3)
    tasks = FakeTasks({t: {"data": {"image": f"{t}.png"}, "annotations": [annotation(100 + t)] if t else []} for t in range(0, 10)})

    def meanwhile(answered):
        if answered == 1:
            tasks.tasks[1]["annotations"] = []  # deleted (or turned back into a draft)
        if answered == 2:
            tasks.tasks[0]["annotations"] = [annotation(100)]

    tasks.meanwhile = meanwhile
    exported = [task.id for task, _ in client_over(tasks).annotated_tasks(7)]
    assert exported == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert tasks.requests[0]["ordering"] == ["tasks:id"] and tasks.requests[0]["include"].startswith("id,data,annotations,")


def test_the_export_keeps_each_annotators_latest_result_and_whether_it_is_ground_truth():
    tasks = FakeTasks({
        1: {"data": {"image": "1.png"}, "annotations": [
            annotation(10, who=1, result=[{"id": "old"}]), annotation(11, who=1, result=[{"id": "new"}], ground_truth=True),
            annotation(12, who={"id": 2}, result=[{"id": "other"}]), annotation(13, who=3, cancelled=True),
        ]},
        2: {"annotations": [annotation(20, cancelled=True)]},
    })  # fmt: skip
    ((task, annotations),) = list(client_over(tasks).annotated_tasks(7))
    assert task.id == 1 and task.data == {"image": "1.png"}
    assert annotations == [{"result": [{"id": "new"}], "ground_truth": True}, {"result": [{"id": "other"}], "ground_truth": False}]


def test_the_annotated_tasks_are_every_one_with_an_annotation_paged_by_id(monkeypatch):
    """Overlap 2: a task with one of its two annotations is listed (LS's is_labeled says no), one with none is not."""
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 2)
    counts = {1: 0, 2: 1, 3: 2, 4: 0, 5: 1, 6: 1, 7: 3}
    tasks = FakeTasks({t: {"annotations": [annotation(10 * t + i) for i in range(n)]} for t, n in counts.items()})
    tasks.meanwhile = lambda answered: answered == 1 and tasks.tasks.pop(2)  # a listed task deleted meanwhile
    assert [task.id for task in client_over(tasks).task_annotations(7)] == [2, 3, 5, 6, 7]
    assert tasks.pages == [[2, 3], [5, 6], [7]], "LS's total of the rest ends the listing: no request for an empty page"


def test_the_annotated_tasks_are_all_listed_when_ls_caps_its_pages(monkeypatch):
    """LS answers at most TASK_API_PAGE_SIZE_MAX a page: a short page is not the last (the recompute forgets what is not listed)."""
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 3)
    tasks = FakeTasks({t: {"annotations": [annotation(t)]} for t in range(1, 8)}, cap=2)
    assert [task.id for task in client_over(tasks).task_annotations(7)] == [1, 2, 3, 4, 5, 6, 7]
    assert [task.id for task, _ in client_over(tasks).annotated_tasks(7)] == [1, 2, 3, 4, 5, 6, 7]
    assert [task.id for task in client_over(tasks).labelled_tasks(7)] == [1, 2, 3, 4, 5, 6, 7]


def test_scores_are_moved_with_one_listing_and_one_patch_per_prediction():
    tasks = FakeTasks({t: {"predictions": [prediction(10 * t, "ale:old"), prediction(10 * t + 1, "ale:v")]} for t in range(1, 6)})
    client = client_over(tasks)
    assert client.set_prediction_scores(7, "ale:v", {2: 0.25, 4: 0.75, 5: 0.5}) == 3
    assert client.sdk.predictions.updated == [(21, 0.25), (41, 0.75), (51, 0.5)]
    ((request,),) = [tasks.requests]
    assert request["selectedItems"]["included"] == [2, 4, 5] and request["fields"] == "all" and request["include"] == "id,predictions"
    assert client.set_prediction_scores(7, "ale:v", {}) == 0 and len(tasks.requests) == 1


def test_a_task_without_a_prediction_of_the_served_version_is_refused_before_any_score_moves():
    tasks = FakeTasks({1: {"predictions": [prediction(10, "ale:v")]}, 2: {"predictions": [prediction(20, "ale:old")]}})
    client = client_over(tasks)
    with pytest.raises(LabelStudioError, match=r"2 of the 3 tasks to re-score in project 7 have no prediction of version ale:v in Label "
                                               r"Studio \(tasks \[2, 3\]; deleted there meanwhile\): no score was changed"):  # fmt: skip
        client.set_prediction_scores(7, "ale:v", {1: 0.1, 2: 0.2, 3: 0.3})
    assert client.sdk.predictions.updated == []


def test_the_savings_listing_gives_every_annotation_and_prediction_as_sdk_objects(monkeypatch):
    """`ale savings --recompute` and the bulk annotation webhook: one listing, not an annotation and a prediction list per task."""
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 2)
    monkeypatch.setattr(ls_client, "SELECTED_IDS_PER_REQUEST", 2)
    tasks = FakeTasks({
        t: {"annotations": [annotation(10 * t, parent_prediction=10 * t + 1, lead_time=4.5, task=t), annotation(10 * t + 2, cancelled=True, task=t)],
            "predictions": [prediction(10 * t + 1, "ale:v")]} for t in range(1, 6)
    })  # fmt: skip
    tasks.tasks[3]["annotations"] = []
    client = client_over(tasks)
    listed = list(client.task_annotations(7))
    assert [t.id for t in listed] == [1, 2, 4, 5] and len(tasks.requests) == 2
    first = listed[0]
    assert [(a.id, a.was_cancelled, a.task) for a in first.annotations] == [(10, False, 1), (12, True, 1)]
    assert first.annotations[0].created_at == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc) and first.annotations[0].lead_time == 4.5
    assert first.annotations[0].parent_prediction == 11
    assert [(p.id, p.model_version, p.created_at.year) for p in first.predictions] == [(11, "ale:v", 2026)]
    tasks.requests.clear()
    assert [t.id for t in client.task_annotations(7, [5, 1, 3, 99, 2])] == [1, 2, 3, 5], "chosen tasks, annotated or not; 99 is gone"
    assert [r["selectedItems"]["included"] for r in tasks.requests] == [[1, 2], [3, 5], [99]], "SELECTED_IDS_PER_REQUEST ids a request"


def test_a_task_deleted_during_the_listing_of_unlabelled_tasks_shifts_no_other_out_of_it(monkeypatch):
    """By page number, task 2 deleted after the first page moved task 4 onto page 1: never listed, and below the
    served queue's last task, so no later listing of new tasks would list it either."""
    monkeypatch.setattr(ls_client, "TASK_PAGE_SIZE", 3)
    tasks = FakeTasks({t: {"data": {"image": f"{t}.png"}, "annotations": [annotation(t)] if t == 5 else []} for t in range(1, 10)})
    tasks.meanwhile = lambda answered: answered == 1 and tasks.tasks.pop(2, None)
    listed = list(client_over(tasks).unlabeled_tasks(7))
    assert [t.id for t in listed] == [1, 2, 3, 4, 6, 7, 8, 9] and listed[3].data == {"image": "4.png"}
    assert tasks.requests[0]["ordering"] == ["tasks:id"] and tasks.requests[0]["include"] == "id,data,is_labeled"
    tasks.requests.clear()
    assert [t.id for t in client_over(tasks).unlabeled_tasks(7, after_id=6)] == [7, 8, 9]
    assert tasks.requests[0]["filters"]["items"] == [{"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": 6}]


class FakeProjects:
    """LS's GET /api/projects as the SDK answers it: the `ids` filter, pages of at most `cap`, and `count`."""

    def __init__(self, projects, cap=None, error=None):
        self.projects, self.cap, self.error, self.requests = sorted(projects), cap, error, []

    def list(self, ids=None, page=1, page_size=30):
        self.requests.append({"ids": ids, "page": page, "page_size": page_size})
        if self.error is not None:
            raise self.error
        shown = [p for p in self.projects if ids is None or str(p) in ids.split(",")]
        size = min(page_size, self.cap or page_size)
        items = [type("Project", (), {"id": p})() for p in shown[(page - 1) * size : page * size]]
        return type("Pager", (), {"items": items, "response": type("Page", (), {"count": len(shown)})()})()


def projects_client(projects: FakeProjects) -> LabelStudioClient:
    client = LabelStudioClient.__new__(LabelStudioClient)
    client.url, client.sdk = "http://admin:s3cret@ls:8080/ls", type("Sdk", (), {"projects": projects})()
    return client


def test_the_projects_label_studio_lists_are_asked_for_by_id_a_page_at_a_time(monkeypatch):
    monkeypatch.setattr(ls_client, "PROJECT_IDS_PER_REQUEST", 3)
    projects = FakeProjects(range(1, 20, 2), cap=2)  # LS may answer fewer than the page asked for
    assert projects_client(projects).project_ids([9, 1, 2, 3, 5, 7, 40]) == {1, 3, 5, 7, 9}
    assert [(r["ids"], r["page"]) for r in projects.requests] == [("1,2,3", 1), ("5,7,9", 1), ("5,7,9", 2), ("40", 1)]


def test_a_project_listing_label_studio_refuses_says_what_to_fix():
    from label_studio_sdk.core.api_error import ApiError

    wrong_path = projects_client(FakeProjects([], error=ApiError(status_code=404, body="<html>Not Found</html>")))
    with pytest.raises(LabelStudioError, match=r"^http://admin:\*\*\*@ls:8080/ls/api/projects/ answered 404: LABEL_STUDIO_URL must be the address"):
        wrong_path.project_ids([1])
    refused = projects_client(FakeProjects([], error=ApiError(status_code=401, body={"detail": "Invalid token."})))
    with pytest.raises(LabelStudioError, match=r"refused LABEL_STUDIO_API_KEY \(401\) when listing its projects: .*said: Invalid token.\)$"):
        refused.project_ids([1])
    down = projects_client(FakeProjects([], error=ConnectionRefusedError(111, "Connection refused")))
    with pytest.raises(LabelStudioError, match=r"^Label Studio at http://admin:\*\*\*@ls:8080/ls could not list its projects \(ConnectionRefusedError: "
                                               r"\[Errno 111\] Connection refused\): check that LABEL_STUDIO_URL is the address"):  # fmt: skip
        down.project_ids([1])
