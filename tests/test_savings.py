"""Savings summed per model from the recorded annotations."""

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
