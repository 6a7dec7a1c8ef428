"""The ground-truth reference selection of the benchmark."""

import numpy as np
import pytest

from label_studio_ale.bench.oracle import (
    ORACLE_ERRORS,
    ORACLE_ERRORS_PER_BOX,
    ORACLE_NEW_CLASS,
    ORACLE_NEW_CLASS_PER_BOX,
    is_reference,
    most_mistakes_first,
    most_mistakes_per_box_first,
    new_class_first,
    new_class_per_box_first,
    reads_mistakes,
    reference_picks,
)


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


def test_only_the_oracles_are_references():
    assert is_reference(ORACLE_NEW_CLASS) and is_reference(ORACLE_NEW_CLASS_PER_BOX)
    assert is_reference(ORACLE_ERRORS) and is_reference(ORACLE_ERRORS_PER_BOX)
    assert reads_mistakes(ORACLE_ERRORS) and not reads_mistakes(ORACLE_NEW_CLASS)
    assert not is_reference("random") and not is_reference("ale-entropy-sum")


def test_per_box_the_images_with_most_new_class_boxes_per_cost_come_first_then_the_emptier_ones():
    new = 3
    labels = [
        np.array([0, 1]),  # no new-class box: 0
        np.array([3]),  # 1 / (1 + 2) = 0.333
        np.array([3, 3]),  # 2 / (2 + 2) = 0.5
        np.array([3, 0, 1]),  # 1 / (3 + 2) = 0.2: after the lone one, which the image oracle puts first
        np.array([], dtype=int),  # empty: 0, and the fewest boxes of the zeros
        np.array([3, 3, 3, 3, 3, 3, 0, 0]),  # 6 / (8 + 2) = 0.6
        np.array([0]),  # 0, one box
    ]
    assert new_class_per_box_first(labels, new, 4, 2.0).tolist() == [5, 2, 1, 3]
    assert new_class_per_box_first(labels, new, 10, 2.0).tolist() == [5, 2, 1, 3, 4, 6, 0]
    # the cost of an image besides its boxes decides between many boxes and few: with none, all-new images tie at 1
    assert new_class_per_box_first(labels, new, 3, 0.0).tolist() == [1, 2, 5]
    # ties on both keys keep the pool order
    assert new_class_per_box_first([np.array([3]), np.array([3]), np.array([3])], new, 2, 2.0).tolist() == [0, 1]


def test_per_box_a_batch_buys_at_least_as_many_new_class_boxes_per_cost_as_any_single_image_of_another():
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 4, size=rng.integers(0, 6)) for _ in range(60)]
    picked = new_class_per_box_first(labels, 3, 8, 2.0)

    def per_cost(i):
        return (labels[i] == 3).sum() / (len(labels[i]) + 2.0)

    worst_picked = min(per_cost(i) for i in picked)
    assert all(per_cost(i) <= worst_picked for i in set(range(60)) - set(picked.tolist()))


def test_per_box_the_budget_and_the_cost_must_make_sense():
    with pytest.raises(ValueError, match="budget must be a positive number of images, got 0"):
        new_class_per_box_first([np.array([3])], 3, 0, 2.0)
    with pytest.raises(ValueError, match="cost_per_image must be a finite number of boxes >= 0, got -1"):
        new_class_per_box_first([np.array([3])], 3, 1, -1.0)


def test_each_reference_picks_by_its_own_measure():
    labels = [np.array([3, 3, 3, 0, 0, 0, 0]), np.array([3])]
    assert reference_picks(ORACLE_NEW_CLASS, labels, 3, 1, 2.0).tolist() == [0]  # three new-class boxes
    assert reference_picks(ORACLE_NEW_CLASS_PER_BOX, labels, 3, 1, 2.0).tolist() == [1]  # 1/3 against 3/9
    with pytest.raises(ValueError, match="'random' is not a reference selection; the references are oracle-new-class, oracle-new-class-per-box"):
        reference_picks("random", labels, 3, 1, 2.0)


# Per image: its true class ids, and the served model's mistakes on it.
MISTAKE_POOL = [
    (np.array([0, 1]), 0),  # right everywhere: 0, 0 per cost
    (np.array([0]), 1),  # 1 / (1 + 2) = 0.333
    (np.array([0, 1, 2, 2, 1, 0]), 3),  # 3 / (6 + 2) = 0.375
    (np.array([], dtype=int), 1),  # a false box on an empty image: 1 / (0 + 2) = 0.5
    (np.array([2, 2, 2]), 3),  # 3 / (3 + 2) = 0.6
    (np.array([1, 1]), 1),  # 1 / (2 + 2) = 0.25
]


def test_the_images_the_model_is_most_wrong_on_come_first_then_the_fuller_ones():
    labels, mistakes = [p[0] for p in MISTAKE_POOL], np.array([p[1] for p in MISTAKE_POOL])
    # 3 mistakes twice: the six-box image first; 1 mistake three times: two boxes, one, none
    assert most_mistakes_first(labels, mistakes, 6).tolist() == [2, 4, 5, 1, 3, 0]
    assert reference_picks(ORACLE_ERRORS, labels, None, 2, 2.0, mistakes).tolist() == [2, 4]


def test_per_box_the_most_mistakes_per_cost_come_first_and_a_false_box_on_an_empty_image_is_cheap():
    labels, mistakes = [p[0] for p in MISTAKE_POOL], np.array([p[1] for p in MISTAKE_POOL])
    assert most_mistakes_per_box_first(labels, mistakes, 6, 2.0).tolist() == [4, 3, 2, 1, 5, 0]
    # a dearer image weighs its boxes less: the crowded image moves ahead of the empty one (3/14 > 1/8 > 1/9 > 1/10)
    assert most_mistakes_per_box_first(labels, mistakes, 6, 8.0).tolist() == [4, 2, 3, 1, 5, 0]
    # equal value per cost: the image with fewer boxes first
    assert most_mistakes_per_box_first([np.array([0, 0]), np.array([0])], np.array([2, 1]), 2, 0.0).tolist() == [1, 0]
    assert reference_picks(ORACLE_ERRORS_PER_BOX, labels, None, 3, 2.0, mistakes).tolist() == [4, 3, 2]


def test_the_mistake_references_need_one_count_per_image():
    labels = [np.array([0]), np.array([1])]
    with pytest.raises(ValueError, match="oracle-errors ranks by the served model's mistakes: give one count per unlabeled image"):
        reference_picks(ORACLE_ERRORS, labels, None, 1, 2.0)
    with pytest.raises(ValueError, match="oracle-errors-per-box ranks by the served model's mistakes"):
        reference_picks(ORACLE_ERRORS_PER_BOX, labels, None, 1, 2.0, np.array([1]))
    with pytest.raises(ValueError, match=r"mistakes must be \(2,\) counts >= 0"):
        most_mistakes_first(labels, np.array([1, -1]), 1)
    with pytest.raises(ValueError, match="budget must be a positive number of images, got 0"):
        most_mistakes_per_box_first(labels, np.array([1, 1]), 0, 2.0)
    # the new-class references still need a new class; these do not
    with pytest.raises(ValueError, match="oracle-new-class picks images of the new class"):
        reference_picks(ORACLE_NEW_CLASS, labels, None, 1, 2.0)
