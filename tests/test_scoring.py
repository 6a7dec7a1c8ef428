import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from label_studio_ale import scoring

# Hand-worked boxes (raw sigmoid scores for two classes):
#   A = [0.6, 0.2]: background 0.4, total 1.2 -> p = [1/2, 1/6, 1/3]
#   B = [0.9, 0.0]: background 0.1, total 1.0 -> p = [0.9, 0, 0.1]
A, B = [0.6, 0.2], [0.9, 0.0]
H_A = -(0.5 * math.log(0.5) + 1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3))  # 1.011404
H_B = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325083
LC_A, LC_B = 1 - (0.5 - 1 / 3), 1 - (0.9 - 0.1)  # 0.8333, 0.2


def test_box_distribution_by_hand():
    p = scoring.box_distribution(np.array([A, B]))
    assert p == pytest.approx(np.array([[0.5, 1 / 6, 1 / 3], [0.9, 0.0, 0.1]]))
    assert scoring.box_distribution(np.zeros((0, 2))).shape == (0, 3)


def test_least_confidence_and_entropy_by_hand():
    p = scoring.box_distribution(np.array([A, B]))
    assert scoring.least_confidence(p) == pytest.approx([LC_A, LC_B])
    assert scoring.entropy(p) == pytest.approx([H_A, H_B])
    assert H_A == pytest.approx(1.011404, abs=1e-6) and H_B == pytest.approx(0.325083, abs=1e-6)
    assert scoring.entropy(p, normalised=True) == pytest.approx([H_A / math.log(3), H_B / math.log(3)])
    assert scoring.box_confidence(np.array([A, B])) == pytest.approx([0.6, 0.9])


def test_the_most_uncertain_box_is_the_largest_normalised_entropy_and_an_empty_image_is_certain():
    assert scoring.most_uncertain_box(np.array([A, B])) == pytest.approx(H_A / math.log(3))
    assert scoring.most_uncertain_box(np.array([B])) == pytest.approx(H_B / math.log(3))
    # a real background column (softmax heads): [0.5, 0.5] with background 0 is two even classes, log 2 of log 3
    assert scoring.most_uncertain_box(np.array([[0.5, 0.5]]), np.array([0.0])) == pytest.approx(math.log(2) / math.log(3))
    assert scoring.most_uncertain_box(np.zeros((0, 2))) == 0.0
    with pytest.raises(ValueError, match="class_probs"):
        scoring.most_uncertain_box(np.zeros(3))


def test_certain_and_uniform_extremes():
    one_hot = np.array([[1.0, 0.0, 0.0]])
    uniform = np.full((1, 4), 0.25)
    assert scoring.least_confidence(one_hot) == pytest.approx([0.0])
    assert scoring.least_confidence(uniform) == pytest.approx([1.0])
    assert scoring.entropy(one_hot) == pytest.approx([0.0])
    assert scoring.entropy(uniform, normalised=True) == pytest.approx([1.0])


@pytest.mark.parametrize(
    "how, expected",
    [("sum", H_A + H_B), ("max", H_A), ("mean", (H_A + H_B) / 2), ("min", H_B)],
)
def test_aggregations_and_ale_by_hand(how, expected):
    values = np.array([H_A, H_B])
    assert scoring.aggregate(values, how) == pytest.approx(expected)
    assert scoring.ale(values, how) == pytest.approx(expected * math.sqrt(2))
    # one box: sqrt(1) changes nothing
    assert scoring.ale(values[:1], how) == pytest.approx(H_A)


def test_ale_on_many_boxes_by_hand():
    values = np.full(9, 0.5)
    assert scoring.ale(values, "sum") == pytest.approx(4.5 * 3)
    assert scoring.ale(values, "max") == pytest.approx(0.5 * 3)


@pytest.mark.parametrize("how", scoring.AGGREGATIONS)
def test_empty_image_scores_zero(how):
    assert scoring.aggregate(np.zeros(0), how) == 0.0
    assert scoring.ale(np.zeros(0), how) == 0.0


def test_segments_match_per_image_and_handle_empty_images():
    values = np.array([H_A, H_B, 0.7, 0.1, 0.2, 0.3])
    counts = np.array([2, 0, 1, 3, 0])
    for how in scoring.AGGREGATIONS:
        expected = []
        start = 0
        for c in counts:
            expected.append(scoring.aggregate(values[start : start + c], how))
            start += c
        assert scoring.aggregate_segments(values, counts, how) == pytest.approx(expected)
        assert scoring.ale_segments(values, counts, how) == pytest.approx(np.array(expected) * np.sqrt(counts))
    with pytest.raises(ValueError, match="sum to"):
        scoring.aggregate_segments(values, np.array([1, 1]), "sum")


def test_bad_aggregation_and_shapes_are_named():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        scoring.aggregate(np.ones(2), "median")
    with pytest.raises(ValueError, match="K >= 2"):
        scoring.least_confidence(np.ones((2, 1)))


def test_min_confidence_is_lowest_box_score_and_empty_is_served_last():
    assert scoring.min_confidence(np.array([0.9, 0.4, 0.7])) == 0.4
    assert scoring.min_confidence(np.zeros(0)) == 1.0


box_scores = arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 5)), elements=st.floats(0, 1))


@settings(max_examples=200, deadline=None)
@given(box_scores, st.sampled_from(scoring.AGGREGATIONS), st.randoms(use_true_random=False))
def test_properties_of_metrics_and_aggregation(scores, how, rnd):
    p = scoring.box_distribution(scores)
    assert np.allclose(p.sum(axis=1), 1.0)
    lc = scoring.least_confidence(p)
    h = scoring.entropy(p, normalised=True)
    assert ((lc >= -1e-12) & (lc <= 1 + 1e-12)).all()
    assert ((h >= -1e-12) & (h <= 1 + 1e-9)).all()
    for values in (lc, h):
        shuffled = values.copy()
        rnd.shuffle(shuffled)
        # permutation invariance
        assert scoring.aggregate(shuffled, how) == pytest.approx(scoring.aggregate(values, how))
        assert scoring.ale(shuffled, how) == pytest.approx(scoring.ale(values, how))
        # ALE >= aggregate for N >= 1 on non-negative scores
        assert scoring.ale(values, how) >= scoring.aggregate(values, how) - 1e-12
    # box order does not change per-box metrics either
    perm = np.array(rnd.sample(range(len(scores)), len(scores)))
    assert np.allclose(scoring.entropy(scoring.box_distribution(scores[perm])), scoring.entropy(p)[perm])


def test_a_real_background_column_is_used_as_given():
    """A softmax head's row (background + classes sums to 1) is the distribution itself."""
    probs = np.array([[0.5, 0.2], [0.9, 0.0]])
    p = scoring.box_distribution(probs, background=np.array([0.3, 0.1]))
    np.testing.assert_allclose(p, [[0.5, 0.2, 0.3], [0.9, 0.0, 0.1]])
    np.testing.assert_allclose(scoring.box_distribution(probs), scoring.box_distribution(probs, 1 - probs.max(axis=1)))
    with pytest.raises(ValueError, match="background must have shape"):
        scoring.box_distribution(probs, background=np.array([0.3]))


def test_class_rarity_by_hand_and_its_edges():
    from label_studio_ale.scoring import MAX_RARITY, class_rarity, class_shares, rarity_weights

    scores = np.array([[0.6, 0.2], [0.9, 0.0], [0.0, 0.0]])  # the last box has no class score: uniform over the classes
    # per box (0.75, 0.25), (1, 0), (0.5, 0.5) -> shares (0.75, 0.25) -> rarity (0.5 / 0.75, 0.5 / 0.25)
    np.testing.assert_allclose(class_shares(scores), [0.75, 0.25])
    rarity = class_rarity(scores)
    np.testing.assert_allclose(rarity, [2 / 3, 2.0])
    np.testing.assert_allclose(rarity_weights(scores, rarity), [0.75 * 2 / 3 + 0.25 * 2, 2 / 3, 0.5 * 2 / 3 + 0.5 * 2])
    np.testing.assert_allclose(class_rarity(np.array([[0.5, 0.5], [0.2, 0.2]])), [1.0, 1.0]), "a balanced pool weighs every class 1"
    assert class_rarity(np.array([[0.7, 0.0, 0.0]])).tolist() == [1 / 3, MAX_RARITY, MAX_RARITY], "a class predicted nowhere is capped"
    assert class_rarity(np.zeros((0, 4))).tolist() == [1.0] * 4
    # a class the project does not show (its scores zeroed before ranking) neither counts in C nor weighs
    hidden = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.0]])
    np.testing.assert_allclose(class_rarity(hidden, np.array([True, True, False])), [1.0, 1.0, 0.0])
    assert class_rarity(np.zeros((0, 3)), np.array([True, False, True])).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="at least one class shown"):
        class_rarity(hidden, np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match=r"class_probs must have shape \(n, C\)"):
        class_rarity(np.zeros(3))
    with pytest.raises(ValueError, match="must agree"):
        rarity_weights(scores, np.ones(3))
