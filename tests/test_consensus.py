"""Majority-vote consensus of several annotators' boxes, by hand."""

import numpy as np
import pytest

from label_studio_ale.consensus import consensus


def test_boxes_a_majority_drew_are_kept_averaged_and_the_rest_counted_as_disagreements():
    a = ([[10, 10, 30, 30], [50, 50, 70, 70]], [0, 1])
    b = ([[12, 10, 32, 30], [80, 80, 90, 90]], [0, 0])
    c = ([[11, 10, 31, 30], [50, 52, 70, 72]], [0, 1])
    three = consensus([a, b, c])
    # the bird all three drew (averaged); the nest two of three drew (averaged); b's extra bird: one vote, dropped
    assert three.labels.tolist() == [0, 1] and three.votes.tolist() == [3, 2]
    np.testing.assert_allclose(three.xyxy, [[11, 10, 31, 30], [50, 51, 70, 71]])
    assert three.disagreements == 2, "the nest b missed and the bird only b drew"
    two = consensus([a, b])
    assert two.labels.tolist() == [0] and two.votes.tolist() == [2] and two.disagreements == 2
    np.testing.assert_allclose(two.xyxy, [[11, 10, 31, 30]])
    # the same place, two labels: no majority for either
    split = consensus([([[0, 0, 10, 10]], [0]), ([[0, 0, 10, 10]], [1])])
    assert len(split.labels) == 0 and split.disagreements == 2
    alone = consensus([a])
    assert alone.labels.tolist() == [0, 1] and alone.disagreements == 0, "one annotator is its own majority"
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        consensus([([[0, 0, 1, 1], [0, 0, 2, 2]], [0])])


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_the_order_an_annotator_drew_the_boxes_in_does_not_change_the_consensus(order):
    """B's first box overlaps both of A's, the second A box most; drawn first, it must not take that group from
    B's other box, which is that box exactly."""
    a = ([[4, 0, 14, 10], [0, 0, 10, 10]], [0, 0])
    b_boxes, b_labels = [[1, 0, 11, 10], [0, 0, 10, 10]], [0, 0]
    b = ([b_boxes[i] for i in order], [b_labels[i] for i in order])
    for annotations in ([a, b], [b, a]):
        agreed = consensus(annotations)
        assert agreed.votes.tolist() == [2, 2] and agreed.disagreements == 0
        np.testing.assert_allclose(sorted(agreed.xyxy.tolist()), [[0, 0, 10, 10], [2.5, 0, 12.5, 10]])


def test_a_box_does_not_join_a_group_of_another_label_however_well_it_overlaps():
    agreed = consensus([([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 1]), ([[0, 0, 10, 10]], [1])])
    assert agreed.labels.tolist() == [1] and agreed.votes.tolist() == [2] and agreed.disagreements == 1
