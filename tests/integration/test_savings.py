"""What the pre-annotations saved, against a real Label Studio 1.23.2 and a real `ale serve`.

Annotations with known edits of the boxes shown: the recorded figures must
match exactly, and survive the deletion of the prediction version.
"""

import subprocess
import sys
import time

import httpx
import pytest

from label_studio_ale.annotation_edits import EditCounts
from label_studio_ale.detection_store import SqliteDetectionStore
from label_studio_ale.ls_format import rectangle_result
from tests.support.backend import backend_env, process_env, run_backend
from tests.support.projects import create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERSION = "ale:v0002-0a1b2c3d:20261202T120000.000000Z"
SIZE = (128, 128)


def box(xyxy, label):
    return rectangle_result(xyxy, label, SIZE, "label", "image")


SHOWN = [box([10, 10, 30, 30], "bird"), box([50, 10, 70, 30], "bird"), box([90, 10, 110, 30], "nest"), box([10, 60, 30, 80], "nest")]
SUBMITTED = [
    box([10, 10, 30, 30], "bird"),  # kept
    box([50.5, 10, 70.5, 30], "bird"),  # kept (IoU 0.95)
    box([94, 10, 114, 30], "nest"),  # moved: IoU 16/24 = 0.67
    box([60, 90, 80, 110], "bird"),  # drawn new
]  # the fourth shown box is deleted
EXPECTED = EditCounts(accepted=2, moved=1, relabelled=0, deleted=1, added=1)


def wait_for_records(store, project, count, timeout=60):
    deadline = time.monotonic() + timeout
    while len(records := store.edits(project)) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} annotations recorded"
        time.sleep(0.2)
    return records


def test_the_recorded_edits_match_what_the_annotator_did_and_outlive_the_version(ls_sdk, label_studio, trained_weights, tmp_path):
    models = tmp_path / "models"
    env = backend_env(label_studio, trained_weights, models)  # no Redis: the backend runs the job on its own thread
    project, (first, second) = create_project(ls_sdk, [56_000, 56_001], "pre-annotation savings")
    ls_sdk.projects.import_predictions(id=project, request=[{"task": t, "result": SHOWN, "score": 0.5, "model_version": VERSION} for t in (first, second)])
    imported = time.monotonic()
    shown = {p.task: p.id for p in ls_sdk.predictions.list(project=project)}
    annotation = ls_sdk.annotations.create(id=first, result=SUBMITTED, lead_time=42.5, parent_prediction=shown[first])
    store = SqliteDetectionStore(models / "detections.sqlite")
    with run_backend(env, tmp_path) as url:
        event = {"action": "ANNOTATION_CREATED", "project": {"id": project}, "task": {"id": first}, "annotation": {"id": annotation.id, "task": first}}
        answer = httpx.post(f"{url}/webhook", json=event, timeout=30).json()
        assert answer["status"] == "recording" and answer["savings"]
        (record,) = wait_for_records(store, project, 1)
    assert record.counts == EXPECTED and record.lead_time == 42.5 and record.ls_version == VERSION and record.task_id == first

    # The version is cleaned up; the second task is annotated without LS knowing what it was shown (no parent_prediction),
    # keeping everything but relabelling the first box. Recomputing from LS keeps the first record and adds the second.
    # its 7 s of work began after the predictions were written (else they were not what it was shown)
    time.sleep(max(0.0, imported + 8 - time.monotonic()))
    later = ls_sdk.annotations.create(id=second, result=[box([10, 10, 30, 30], "nest")] + SHOWN[1:], lead_time=7.0)
    cli = [sys.executable, "-m", "label_studio_ale.cli", "savings", "--project", str(project), "--recompute"]
    done = subprocess.run(cli, env=process_env(env), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = {r.annotation_id: r for r in store.edits(project)}
    assert records[later.id].counts == EditCounts(accepted=3, relabelled=1) and records[later.id].lead_time == 7.0
    ls_sdk._client_wrapper.httpx_client.request(f"api/projects/{project}/model-versions/", method="DELETE", json={"model_version": VERSION})
    assert not list(ls_sdk.predictions.list(project=project)), "the shown predictions are gone from LS"
    done = subprocess.run(cli, env=process_env(env), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = {r.annotation_id: r for r in store.edits(project)}
    assert records[annotation.id].counts == EXPECTED and records[later.id].counts == EditCounts(accepted=3, relabelled=1)
    # per model: 2 annotations, 8 boxes shown, 5 kept as they were; the mean lead time of the two
    row = [line for line in done.stdout.splitlines() if line.startswith("v0002-0a1b2c3d")]
    assert row and row[0].split()[1:] == ["2", "5", "1", "1", "1", "1", "62%", "24.8"], done.stdout


def test_annotations_created_from_predictions_in_bulk_are_recorded(ls_sdk, label_studio, trained_weights, tmp_path):
    """LS's "Create Annotations From Predictions" sends one ANNOTATIONS_CREATED with a list: each task is recorded."""
    models = tmp_path / "models"
    env = backend_env(label_studio, trained_weights, models)
    project, tasks = create_project(ls_sdk, [56_100, 56_101], "bulk annotations")
    ls_sdk.projects.import_predictions(id=project, request=[{"task": t, "result": SHOWN, "score": 0.5, "model_version": VERSION} for t in tasks])
    shown = {p.task: p.id for p in ls_sdk.predictions.list(project=project)}
    made = [ls_sdk.annotations.create(id=t, result=SHOWN, parent_prediction=shown[t]) for t in tasks]  # accepted as shown
    store = SqliteDetectionStore(models / "detections.sqlite")
    with run_backend(env, tmp_path) as url:
        event = {"action": "ANNOTATIONS_CREATED", "project": {"id": project}, "annotation": [{"id": a.id, "task": t} for a, t in zip(made, tasks)]}
        answer = httpx.post(f"{url}/webhook", json=event, timeout=30).json()
        assert answer["status"] == "recording" and answer["savings"]
        records = wait_for_records(store, project, 2)
    assert sorted(r.task_id for r in records) == sorted(tasks)
    assert all(r.counts == EditCounts(accepted=4) and r.ls_version == VERSION for r in records)


def test_deleted_annotations_and_tasks_leave_the_savings_and_partly_annotated_tasks_count(ls_sdk, label_studio, trained_weights, tmp_path):
    """Two annotations asked per task. LS's own ANNOTATIONS_DELETED and TASKS_DELETED webhooks forget what they name;
    `ale savings --recompute` records a task with one annotation of two and forgets what LS no longer has."""
    from label_studio_ale.annotation_edits import EditRecord

    models = tmp_path / "models"
    env = backend_env(label_studio, trained_weights, models)
    project, (first, second, third) = create_project(ls_sdk, [56_200, 56_201, 56_202], "savings: deletions and overlap")
    ls_sdk.projects.update(id=project, maximum_annotations=2)
    ls_sdk.projects.import_predictions(id=project, request=[{"task": t, "result": SHOWN, "score": 0.5, "model_version": VERSION} for t in (first, second, third)])
    shown = {p.task: p.id for p in ls_sdk.predictions.list(project=project)}
    store = SqliteDetectionStore(models / "detections.sqlite")
    cli = [sys.executable, "-m", "label_studio_ale.cli", "savings", "--project", str(project), "--recompute"]

    def recorded():
        return {r.annotation_id: r for r in store.edits(project)}

    def wait_until(condition, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"still recorded: {sorted(recorded())}"
            time.sleep(0.2)

    with run_backend(env, tmp_path) as url:
        ls_sdk.webhooks.create(
            url=f"{url}/webhook", project=project, send_payload=True, send_for_all_actions=False, actions=["ANNOTATIONS_DELETED", "TASKS_DELETED"]
        )
        bad = ls_sdk.annotations.create(id=first, result=[], parent_prediction=shown[first])  # every shown box deleted
        partial = ls_sdk.annotations.create(id=second, result=SHOWN, parent_prediction=shown[second])
        doomed = ls_sdk.annotations.create(id=third, result=SHOWN, parent_prediction=shown[third])
        assert not ls_sdk.tasks.get(id=str(second)).is_labeled, "one annotation of the two asked for"
        done = subprocess.run(cli, env=process_env(env), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert set(recorded()) == {bad.id, partial.id, doomed.id} and recorded()[partial.id].counts == EditCounts(accepted=4)

        ls_sdk.annotations.delete(id=bad.id)  # a reviewer deletes the bad annotation
        wait_until(lambda: bad.id not in recorded())
        ls_sdk.tasks.delete(id=str(third))
        wait_until(lambda: doomed.id not in recorded())
        again = ls_sdk.annotations.create(id=first, result=SHOWN, parent_prediction=shown[first])  # the image is labelled again
    assert set(recorded()) == {partial.id}

    # A deletion no webhook reported (the backend was down): the recompute forgets it
    store.put_edits(project, [EditRecord(doomed.id, third, VERSION, EditCounts(accepted=4), None)])
    ls_sdk.annotations.delete(id=partial.id)
    done = subprocess.run(cli, env=process_env(env), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(recorded()) == {again.id} and recorded()[again.id].counts == EditCounts(accepted=4)
    row = [line for line in done.stdout.splitlines() if line.startswith("v0002-0a1b2c3d")]
    assert row and row[0].split()[1:3] == ["1", "4"], done.stdout
