"""What became of the shown boxes: accepted, moved, relabelled, deleted, added."""

import pytest

from label_studio_ale.annotation_edits import EditCounts, compare_boxes, compare_results
from label_studio_ale.ls_format import rectangle_result


def test_each_kind_of_edit_is_counted_by_hand():
    shown = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]]
    labels = ["bird", "bird", "nest", "bird", "nest"]
    submitted = [
        [0, 0, 10, 10],  # kept as it was
        [20.2, 0, 30.2, 10],  # IoU 0.96: accepted
        [42, 0, 52, 10],  # IoU 8/12 = 0.67: moved
        [60, 0, 70, 10],  # same place, now a nest: relabelled
        [0, 50, 10, 60],  # drawn new
    ]  # the last shown box was deleted
    sub_labels = ["bird", "bird", "nest", "nest", "bird"]
    assert compare_boxes(shown, labels, submitted, sub_labels) == EditCounts(accepted=2, moved=1, relabelled=1, deleted=1, added=1)
    assert compare_boxes([], [], submitted, sub_labels) == EditCounts(added=5)
    assert compare_boxes(shown, labels, [], []) == EditCounts(deleted=5)
    # a box moved too far is the shown one deleted and a new one drawn
    assert compare_boxes([[0, 0, 10, 10]], ["bird"], [[6, 0, 16, 10]], ["bird"]) == EditCounts(deleted=1, added=1)
    total = EditCounts(accepted=2, deleted=1) + EditCounts(accepted=1, added=3)
    assert total == EditCounts(accepted=3, deleted=1, added=3) and total.shown == 4 and total.submitted == 6
    assert total.edited == 4  # all but the accepted boxes: one deleted, three drawn
    # mistakes at mAP50's standard: the relabelled, deleted and drawn boxes; a moved box still matches
    assert compare_boxes(shown, labels, submitted, sub_labels).mistakes == 3
    with pytest.raises(ValueError, match="matching lengths"):
        compare_boxes(shown, labels[:2], [], [])


def test_nearby_boxes_of_two_labels_match_their_own_label_first():
    """A bird on its nest, both nudged: by IoU alone each would pair with the other's box and count as relabelled."""
    shown = [[0, 0, 10, 10], [0, 0, 10, 13]]
    submitted = [[0, 0, 10, 12], [0, 0, 10, 10.5]]
    counts = compare_boxes(shown, ["bird", "nest"], submitted, ["bird", "nest"])
    assert counts == EditCounts(moved=2)
    # a label that really changed is still a relabel
    assert compare_boxes([[0, 0, 10, 10]], ["bird"], [[0, 0, 10, 10]], ["nest"]) == EditCounts(relabelled=1)


def test_ls_results_are_compared_in_percent_whatever_sizes_they_carry():
    shown = [rectangle_result([10, 10, 30, 30], "bird", (128, 128), "label", "image")]
    same_in_other_pixels = [rectangle_result([20, 20, 60, 60], "bird", (256, 256), "label", "image")]
    choice = {"type": "choices", "value": {"choices": ["blurry"]}}
    assert compare_results(shown, same_in_other_pixels + [choice]) == EditCounts(accepted=1)
    assert compare_results([], []) == EditCounts()


def test_a_box_the_annotator_turned_is_compared_by_its_bounds_not_refused():
    """A rotated rectangle used to make the whole task's record fail; it is now the box it covers."""
    shown = [rectangle_result([100, 40, 140, 80], "bird", (200, 100), "label", "image")]
    turned = [{**shown[0], "value": {**shown[0]["value"], "rotation": 1}}]  # a nudge: still the shown box
    assert compare_results(shown, turned) == EditCounts(accepted=1)
    upright = [{**shown[0], "value": {**shown[0]["value"], "rotation": 90}}]  # turned a quarter about its corner: elsewhere
    assert compare_results(shown, upright) == EditCounts(deleted=1, added=1)


@pytest.fixture
def store(store_url, tmp_path):
    from label_studio_ale.detection_store import open_detection_store

    return open_detection_store(store_url, tmp_path)


def _record(annotation: int, task: int, accepted: int = 1):
    from label_studio_ale.annotation_edits import EditRecord

    return EditRecord(annotation, task, "ale:v1:t", EditCounts(accepted=accepted), None)


def test_a_tasks_write_forgets_the_annotations_ls_no_longer_lists_and_keeps_those_it_does(store):
    store.put_edits(5, [_record(1, 10), _record(2, 10), _record(3, 10), _record(4, 11)])
    store.put_edits(6, [_record(1, 10)])
    # LS lists 2 (updated) and 3 (its shown prediction is gone: no record, the earlier one stays); 1 was deleted
    assert store.put_task_edits(5, 10, [_record(2, 10, accepted=5)], listed=[2, 3]) == 1
    assert store.edits(5) == [_record(2, 10, accepted=5), _record(3, 10), _record(4, 11)]
    assert store.edits(6) == [_record(1, 10)], "another project's annotation of the same ids stays"
    assert store.put_task_edits(5, 12, [], listed=[]) == 0


def test_a_tasks_write_that_fails_forgets_nothing(store):
    from label_studio_ale.annotation_edits import EditRecord

    store.put_edits(5, [_record(1, 10), _record(2, 10)])
    broken = EditRecord(2, 10, None, EditCounts(), None)  # ls_version NOT NULL: the insert fails after the delete
    with pytest.raises(Exception):
        store.put_task_edits(5, 10, [broken], listed=[2])
    assert store.edits(5) == [_record(1, 10), _record(2, 10)]


def test_deleted_annotations_and_tasks_are_forgotten_in_batches(store, monkeypatch):
    import label_studio_ale.annotation_edits as annotation_edits

    monkeypatch.setattr(annotation_edits, "DELETE_BATCH", 2)
    store.put_edits(5, [_record(a, 10 + a % 3) for a in range(1, 10)])
    store.put_edits(6, [_record(1, 11)])
    assert store.delete_edits(5, [1, 2, 3, 99, 3]) == 3
    assert [r.annotation_id for r in store.edits(5)] == [4, 5, 6, 7, 8, 9]
    assert store.delete_task_edits(5, [10, 11, 12345]) == 4  # annotations 4, 6, 7, 9
    assert [r.annotation_id for r in store.edits(5)] == [5, 8] and store.edits(6) == [_record(1, 11)]
    assert store.delete_edits(5, []) == 0 and store.delete_task_edits(5, []) == 0


def test_a_recompute_forgets_the_tasks_it_did_not_list_but_not_those_recorded_since_it_began(store, monkeypatch):
    import time

    import label_studio_ale.annotation_edits as annotation_edits

    monkeypatch.setattr(annotation_edits, "DELETE_BATCH", 2)
    store.put_edits(5, [_record(1, 10), _record(2, 11), _record(3, 12), _record(4, 13), _record(5, 14)])
    store.put_edits(6, [_record(1, 10)])
    began = time.time()
    time.sleep(0.01)
    store.put_edits(5, [_record(6, 15)])  # a webhook recorded a task annotated while LS was being listed
    assert store.keep_task_edits(5, {11, 13}, before=began) == 3
    assert [r.annotation_id for r in store.edits(5)] == [2, 4, 6] and store.edits(6) == [_record(1, 10)]
