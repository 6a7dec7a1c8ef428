"""Savings summed per model from the recorded annotations."""

import pytest

from label_studio_ale.annotation_edits import EditCounts, EditRecord
from label_studio_ale.detection_store import SqliteDetectionStore
from label_studio_ale.savings import model_of, savings_by_model


def test_annotations_are_summed_per_model_whatever_the_sync_version(tmp_path):
    assert model_of("ale:v0003-1a2b3c4d:20261202T101010.000001Z") == "v0003-1a2b3c4d" and model_of("my-import") == "my-import"
    store = SqliteDetectionStore(tmp_path / "d.sqlite")
    store.put_edits(
        1,
        [
            EditRecord(1, 10, "ale:v0001-aa:20261201T0Z", EditCounts(accepted=1, deleted=1), 10.0),
            EditRecord(2, 11, "ale:v0001-aa:20261202T0Z", EditCounts(accepted=2, added=2), None),  # a later sync of the same model
            EditRecord(3, 12, "ale:v0002-bb:20261203T0Z", EditCounts(moved=1, relabelled=1), 4.0),
        ],
    )
    first, second = savings_by_model(store, 1)
    assert (first.model, first.annotations, first.counts, first.mean_lead_time) == ("v0001-aa", 2, EditCounts(accepted=3, deleted=1, added=2), 10.0)
    assert first.accepted_share == 0.75 and first.as_dict()["accepted_share"] == 0.75
    assert (second.model, second.counts.shown, second.accepted_share) == ("v0002-bb", 2, 0.0)
    assert savings_by_model(store, 2) == []


def test_without_a_parent_prediction_only_one_that_existed_when_the_task_was_opened_counts_as_shown():
    """A sync that switched versions while the annotator worked wrote a prediction the annotator never saw."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from label_studio_ale.ls_format import rectangle_result
    from label_studio_ale.savings import task_records

    submit = datetime(2026, 12, 7, 9, 0, 0, tzinfo=timezone.utc)
    shown = [rectangle_result([10, 10, 30, 30], "bird", (128, 128), "label", "image")]
    old = SimpleNamespace(id=1, created_at=submit - timedelta(minutes=10), result=shown, model_version="ale:v0001-aa:1")
    new = SimpleNamespace(id=2, created_at=submit - timedelta(seconds=20), result=[], model_version="ale:v0002-bb:2")
    annotation = SimpleNamespace(id=9, task=4, was_cancelled=False, parent_prediction=None, created_at=submit, lead_time=60.0, result=shown)
    (record,) = task_records([annotation], [old, new])
    assert record.ls_version == "ale:v0001-aa:1" and record.counts.accepted == 1
    assert task_records([annotation], [new]) == [], "the only prediction left came after the task was opened: nothing recorded"
    quick = SimpleNamespace(**{**vars(annotation), "lead_time": 5.0})
    assert task_records([quick], [old, new])[0].ls_version == "ale:v0002-bb:2"


class FakeLabelStudio:
    """What LS answers the savings: one listing of tasks with their annotations and predictions (`task_annotations`)."""

    def __init__(self, annotations: dict, predictions: dict):
        self.annotations, self.predictions, self.fail_listing_after, self.listings = annotations, predictions, None, []

    def task_annotations(self, project, task_ids=None):
        from label_studio_ale.ls_client import TaskAnnotations

        self.listings.append(task_ids)
        tasks = set(self.annotations) | set(self.predictions)
        for n, task in enumerate(sorted(tasks if task_ids is None else tasks & set(task_ids))):
            if n == self.fail_listing_after:
                raise ConnectionError("Label Studio went away")
            annotations = self.annotations.get(task, [])
            if task_ids is not None or any(not a.was_cancelled for a in annotations):
                yield TaskAnnotations(task, list(annotations), list(self.predictions.get(task, [])))


def _shown_and_annotation():
    """A prediction of four boxes shown on a task, and a maker of annotations of it."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from label_studio_ale.ls_format import rectangle_result

    boxes = [rectangle_result([10 + 20 * i, 10, 25 + 20 * i, 25], "bird", (128, 128), "label", "image") for i in range(4)]
    opened = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def prediction(id, task):
        return SimpleNamespace(id=id, task=task, created_at=opened, result=boxes, model_version="ale:v0001-aa:20260101T0Z")

    def annotation(id, task, parent, result, cancelled=False):
        return SimpleNamespace(
            id=id, task=task, was_cancelled=cancelled, parent_prediction=parent, created_at=opened + timedelta(minutes=5), lead_time=30.0, result=result
        )

    return boxes, prediction, annotation


def test_a_deleted_annotation_leaves_the_savings_when_its_task_is_recorded_again(tmp_path):
    """A reviewer deletes a bad annotation and the image is labelled again: only the new one counts."""
    from types import SimpleNamespace

    from label_studio_ale.savings import record_task

    boxes, prediction, annotation = _shown_and_annotation()
    ls = FakeLabelStudio({10: [annotation(100, 10, 1, [])]}, {10: [prediction(1, 10)]})
    rt = SimpleNamespace(ls=ls, store=SqliteDetectionStore(tmp_path / "d.sqlite"))
    record_task(rt, 1, 10)
    ls.annotations[10] = [annotation(101, 10, 1, boxes)]
    record_task(rt, 1, 10)
    (saved,) = savings_by_model(rt.store, 1)
    assert (saved.annotations, saved.counts) == (1, EditCounts(accepted=4))
    ls.annotations[10] = [annotation(101, 10, 1, boxes, cancelled=True)]  # skipped since: no longer a submitted annotation
    record_task(rt, 1, 10)
    assert rt.store.edits(1) == []


def test_a_recompute_records_partly_annotated_tasks_and_forgets_what_ls_no_longer_has(tmp_path):
    """Overlap 2: a task one annotator of two has labelled counts; a task whose annotations were deleted does not."""
    from types import SimpleNamespace

    from label_studio_ale.savings import recompute

    boxes, prediction, annotation = _shown_and_annotation()
    ls = FakeLabelStudio(
        {10: [annotation(200, 10, 1, boxes), annotation(201, 10, 1, boxes)], 11: [annotation(202, 11, 2, [])]},
        {10: [prediction(1, 10)], 11: [prediction(2, 11)], 12: [prediction(3, 12)]},
    )
    rt = SimpleNamespace(ls=ls, store=SqliteDetectionStore(tmp_path / "d.sqlite"))
    rt.store.put_edits(1, [EditRecord(300, 12, "ale:v0001-aa:20260101T0Z", EditCounts(deleted=4), 9.0)])  # task 12, deleted in LS since
    rt.store.put_edits(2, [EditRecord(300, 12, "other", EditCounts(deleted=4), 9.0)])
    assert recompute(rt, 1) == {"tasks": 2, "annotations": 3, "forgotten": 1}
    assert [r.annotation_id for r in rt.store.edits(1)] == [200, 201, 202] and len(rt.store.edits(2)) == 1

    rt.store.put_edits(1, [EditRecord(300, 12, "ale:v0001-aa:20260101T0Z", EditCounts(deleted=4), 9.0)])
    ls.fail_listing_after = 1
    with pytest.raises(ConnectionError):
        recompute(rt, 1)
    assert [r.annotation_id for r in rt.store.edits(1)] == [200, 201, 202, 300], "a listing cut short forgets nothing"
    assert ls.listings == [None, None], "one listing of every annotated task each, not two requests a task"


def test_a_bulk_annotation_event_records_its_tasks_from_one_listing_and_forgets_a_deleted_one(tmp_path):
    """LS's "Create Annotations From Predictions" on thousands of tasks: one listing of them, not two requests a task."""
    from types import SimpleNamespace

    from label_studio_ale.savings import record_tasks

    boxes, prediction, annotation = _shown_and_annotation()
    ls = FakeLabelStudio({t: [annotation(100 + t, t, t, boxes)] for t in range(1, 4)}, {t: [prediction(t, t)] for t in range(1, 4)})
    rt = SimpleNamespace(ls=ls, store=SqliteDetectionStore(tmp_path / "d.sqlite"))
    rt.store.put_edits(1, [EditRecord(900, 9, "ale:v0001-aa:20260101T0Z", EditCounts(deleted=4), 9.0)])  # task 9: deleted in LS since
    assert record_tasks(1, [1, 2, 3, 9], runtime=rt) == {"tasks": 4, "annotations": 3}
    assert ls.listings == [[1, 2, 3, 9]]
    assert [(r.annotation_id, r.counts) for r in rt.store.edits(1)] == [(101, EditCounts(accepted=4)), (102, EditCounts(accepted=4)),
                                                                         (103, EditCounts(accepted=4))]  # fmt: skip
