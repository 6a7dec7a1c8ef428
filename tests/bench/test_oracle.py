"""The ground-truth reference selection of the benchmark."""

import numpy as np
import pytest

from label_studio_ale.bench.oracle import ORACLE_NEW_CLASS, is_reference, new_class_first


def test_the_images_with_most_new_class_boxes_come_first_then_the_fuller_ones():
    new = 3
    labels = [
        np.array([0, 1]),  # no new-class box
        np.array([3]),  # one, alone
        np.array([3, 3]),  # two
        np.array([3, 0, 1]),  # one, with two others: before the lone one
        np.array([], dtype=int),  # empty
        np.array([0, 1, 2, 2]),  # no new-class box, but fuller than the first
    ]
    assert new_class_first(labels, new, 4).tolist() == [2, 3, 1, 5]
    # ties on both keys keep the pool order
    assert new_class_first([np.array([3]), np.array([3]), np.array([3])], new, 2).tolist() == [0, 1]
    # a budget beyond the pool returns the whole pool, ranked
    assert new_class_first(labels, new, 10).tolist() == [2, 3, 1, 5, 0, 4]


def test_a_batch_of_the_most_new_class_boxes_holds_at_least_as_many_as_any_other():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, size=rng.integers(0, 6)) for _ in range(50)]
    picked = new_class_first(labels, 3, 8)
    best = sum(int((labels[i] == 3).sum()) for i in picked)
    for _ in range(200):
        other = rng.choice(50, size=8, replace=False)
        assert sum(int((labels[i] == 3).sum()) for i in other) <= best


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="budget must be a positive number of images, got 0"):
        new_class_first([np.array([3])], 3, 0)


def test_only_the_oracle_is_a_reference():
    assert is_reference(ORACLE_NEW_CLASS)
    assert not is_reference("random") and not is_reference("ale-entropy-sum")
