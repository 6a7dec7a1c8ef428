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
