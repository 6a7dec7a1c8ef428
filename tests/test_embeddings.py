"""k-center and novelty on hand-checked cases."""

import numpy as np
import pytest

from label_studio_ale.embeddings import k_center, nearest_distance, novelty, spacing


def test_k_center_starts_from_the_most_useful_and_then_goes_farthest_first():
    # candidates in usefulness order, on a line: 0, 0.1, 5, 5.1, 10
    line = np.array([[0.0], [0.1], [5.0], [5.1], [10.0]])
    # 0 first; 10 is farthest from it; then 5 (5 from both) beats 5.1 (4.9 from 10)
    assert k_center(line, 3).tolist() == [0, 4, 2]
    assert k_center(line, 1).tolist() == [0] and k_center(line, 9).tolist() == [0, 4, 2, 1, 3]
    assert k_center(np.zeros((0, 2)), 3).tolist() == []
    # equal distances: the more useful (lower index) wins
    assert k_center(np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), 2).tolist() == [0, 1]


def test_k_center_with_labelled_images_counts_them_as_picks_made_before():
    line = np.array([[0.0], [0.1], [5.0], [5.1], [10.0]])
    # labelled at 0 and 9.8: distances to them 0, 0.1, 5, 4.7, 0.2
    picks = k_center(line, 3, covered=np.array([[0.0], [9.8]]))
    assert picks[0] == 2, "the candidate farthest from the labelled set comes first"
    # then 10 (0.2 from 9.8), then 0.1 and 5.1 tie at 0.1 from their nearest: the more useful
    assert picks.tolist() == [2, 4, 1]
    # a candidate identical to a labelled image comes last, though it is the most useful
    assert k_center(np.array([[0.0], [3.0], [1.0]]), 3, covered=np.array([[0.0]])).tolist() == [1, 2, 0]
    # nothing labelled: the batch form, from the most useful
    assert k_center(line, 3, covered=np.zeros((0, 1))).tolist() == k_center(line, 3).tolist() == [0, 4, 2]
    with pytest.raises(ValueError, match="covered must be finite"):
        k_center(line, 2, covered=np.array([[np.nan]]))


def test_novelty_is_the_distance_to_the_nearest_labelled_image_in_units_of_their_spacing():
    labelled = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]])  # nearest-other distances 1, 1, 2: spacing 1
    pool = np.array([[3.0, 0.0], [0.5, 0.0], [1.0, 0.0], [np.nan, np.nan]])
    assert nearest_distance(pool[:3], labelled).tolist() == pytest.approx([2.0, 0.5, 0.0])
    assert novelty(pool, labelled).tolist() == pytest.approx([2.0, 0.5, 0.0, 1.0]), "no embedding: neutral 1"
    assert novelty(pool * 10, labelled * 10).tolist() == pytest.approx([2.0, 0.5, 0.0, 1.0]), "free of the feature scale"
    assert novelty(pool, np.zeros((0, 2))).tolist() == [1.0] * 4, "nothing labelled: every image equally novel"
    # one labelled image has no spacing of its own: the distance itself; a given scale overrides the spacing
    assert novelty(np.array([[2.0, 0.0], [4.0, 0.0]]), np.array([[0.0, 0.0]])).tolist() == pytest.approx([2.0, 4.0])
    assert novelty(pool[:2], labelled, scale=4.0).tolist() == pytest.approx([0.5, 0.125])
    assert spacing(labelled) == 1.0 and spacing(np.ones((3, 2))) == 1.0, "identical rows: no spacing, unit scale"


def test_bad_embeddings_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="reference is empty"):
        nearest_distance(np.zeros((1, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="vectors have 3 dimensions, reference 2"):
        nearest_distance(np.zeros((1, 3)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="vectors must be finite"):
        k_center(np.array([[np.inf]]), 1)


def test_distances_read_in_blocks_of_both_sides_equal_the_whole_matrix(monkeypatch):
    """A labelled set of tens of thousands is compared a block at a time; the nearest rows and the spacing do not change."""
    import label_studio_ale.embeddings as embeddings

    rng = np.random.default_rng(3)
    pool, labelled = rng.normal(size=(23, 6)), rng.normal(size=(19, 6))
    labelled[7] = labelled[16]  # a duplicate: its nearest other row is at 0
    whole = np.sqrt(((pool[:, None, :] - labelled[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    pairs = np.sqrt(((labelled[:, None, :] - labelled[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(pairs, np.inf)
    expected_spacing = float(np.median(pairs.min(axis=1)))
    for rows, columns in ((1024, 4096), (5, 7), (4, 1), (19, 19)):
        monkeypatch.setattr(embeddings, "DISTANCE_CHUNK", rows)
        monkeypatch.setattr(embeddings, "REFERENCE_CHUNK", columns)
        assert np.allclose(embeddings.nearest_distance(pool, labelled), whole, atol=1e-9)
        assert abs(embeddings.spacing(labelled) - expected_spacing) < 1e-9
