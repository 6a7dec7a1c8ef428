"""k-means for Label Studio's cluster field, by hand."""

import numpy as np
import pytest

from label_studio_ale.clusters import assign, fit_sample, kmeans


def test_kmeans_finds_well_separated_groups_and_assigns_new_rows_to_them():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.3, size=(30, 2)) for c in centres])
    centroids = kmeans(points, 3, seed=1)
    assert centroids.shape == (3, 2)
    # each true centre has exactly one centroid near it
    assert sorted(int(np.argmin(np.linalg.norm(centroids - c, axis=1))) for c in centres) == [0, 1, 2]
    labels = assign(points, centroids)
    assert [len(set(labels[i * 30 : (i + 1) * 30])) for i in range(3)] == [1, 1, 1] and len(set(labels)) == 3
    assert assign(np.array([[9.5, 0.2]]), centroids)[0] == labels[30]
    assert np.array_equal(kmeans(points, 3, seed=1), centroids), "the same seed, the same clusters"


def test_kmeans_edge_cases_and_the_fit_sample():
    assert kmeans(np.ones((5, 3)), 4).shape == (1, 3), "identical rows: one cluster"
    assert assign(np.array([[0.0], [1.0]]), np.array([[0.0], [1.0]])).tolist() == [0, 1]
    with pytest.raises(ValueError, match="must have shape"):
        kmeans(np.zeros((0, 2)), 2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match="centroids"):
        assign(np.zeros((2, 3)), np.zeros((1, 2)))
    assert fit_sample(np.array([5, 3, 9])).tolist() == [3, 5, 9]
    sample = fit_sample(np.arange(10_000), size=100, seed=2)
    assert sample.size == 100 and np.all(np.diff(sample) > 0) and np.array_equal(sample, fit_sample(np.arange(10_000), size=100, seed=2))
