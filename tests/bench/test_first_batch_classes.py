"""benchmarks/first_batch_classes.py: objects counted by the class of the box that covers them, by hand on a small case."""

import pytest

from label_studio_ale.detections import Detections
from label_studio_ale.evaluation import GroundTruth
from tests.support.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def first_batch_classes():
    return load_benchmark("first_batch_classes")


def test_each_object_counts_under_the_class_of_the_box_covering_it_best_or_as_missed(first_batch_classes):
    truths = [
        GroundTruth([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [2, 2, 0], (64, 64)),
        GroundTruth([[0, 0, 10, 10]], [1], (64, 64)),
    ]
    detections = [
        # the first object is covered by a class-0 box (IoU 1) and, less, by a class-1 box; the second only at IoU 0.25
        Detections([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 25, 25]], [[0.9, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.7]], (64, 64)),
        Detections.empty(3, (64, 64)),  # nothing predicted: the object is missed
    ]
    counts = first_batch_classes.boxed_as(truths, detections, 3)
    assert counts.tolist() == [
        [0, 0, 0, 1],  # the class-0 object at (40, 40): no box there
        [0, 0, 0, 1],
        [1, 0, 0, 1],  # class 2: one boxed as class 0, one covered at IoU 0.25 only
    ]


def test_the_table_names_where_the_new_class_is_boxed_and_each_first_batch(first_batch_classes):
    seed = {
        "seed": 0, "first_model_map50": 0.6, "class_shares": [0.5, 0.5, 0.0], "rarity": [0.67, 0.67, 100.0],
        "highest_new_class_score": 3e-5, "objects_boxed_as": [[5, 0, 0, 1], [0, 4, 0, 0], [2, 7, 0, 1]],
        "first_batch": {"entropy-mean": {"new_class_boxes": 9, "boxes": 70}, "entropy-mean+rare": {"new_class_boxes": 3, "boxes": 60}},
    }  # fmt: skip
    table = first_batch_classes.markdown({"classes": ["a", "b", "c"], "new_class": "c", "seeds": [seed]})
    assert "| 0 | 0.600 | 0.50, 0.50, 0.00 | 0.67, 0.67, 100.00 | 2, 7, 0, 1 | 9 / 70 | 3 / 60 |" in table
    assert "highest c score on any pool box: 3.00e-05" in table
