"""Embedding clusters for Label Studio's own Uncertainty sampling. Pure numpy.

LS serves, per annotator, tasks from the prediction clusters they have
labelled least first, lowest score first within them
(`projects/functions/next_task.py`: order by `cluster_num_solved`, then
`predictions__score`). A sync gives every prediction the id of its image's
cluster: k-means over the detector's image embeddings, fitted on a sample of
the pool (never the whole pool in memory) and kept with the served queue, so
that tasks added later are assigned to the same clusters.
"""

from __future__ import annotations

import numpy as np

#: Clusters per project by default: few enough that each holds many tasks, enough to spread a session.
DEFAULT_CLUSTERS = 8
#: Embeddings k-means is fitted on at most.
FIT_SAMPLE = 4096
KMEANS_ITERATIONS = 25
#: Rows assigned at a time.
ASSIGN_CHUNK = 4096


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """(n, D) -> (min(k, distinct n), D) centroids: k-means++ seeding, then Lloyd iterations.

    Deterministic for a seed. A cluster that loses all its members keeps its
    centroid (its id stays valid).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must have shape (n >= 1, D), got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors must be finite")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    centroids = [vectors[rng.integers(vectors.shape[0])]]
    nearest = ((vectors - centroids[0]) ** 2).sum(axis=1)
    while len(centroids) < k and nearest.max() > 0:
        pick = rng.choice(vectors.shape[0], p=nearest / nearest.sum())  # k-means++: far points likelier
        centroids.append(vectors[pick])
        nearest = np.minimum(nearest, ((vectors - vectors[pick]) ** 2).sum(axis=1))
    centroids = np.stack(centroids)
    for _ in range(iterations):
        labels = assign(vectors, centroids)
        moved = centroids.copy()
        for c in range(centroids.shape[0]):
            members = vectors[labels == c]
            if members.shape[0]:
                moved[c] = members.mean(axis=0)
        if np.allclose(moved, centroids):
            break
        centroids = moved
    return centroids


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(m, D), (k, D) -> (m,) index of each row's nearest centroid (ties: the lower index)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    if vectors.ndim != 2 or centroids.ndim != 2 or centroids.shape[0] == 0 or vectors.shape[1] != centroids.shape[1]:
        raise ValueError(f"vectors {vectors.shape} and centroids {centroids.shape} must be (m, D) and (k >= 1, D)")
    out = np.empty(vectors.shape[0], dtype=np.int64)
    squared_c = (centroids**2).sum(axis=1)
    for start in range(0, vectors.shape[0], ASSIGN_CHUNK):
        part = vectors[start : start + ASSIGN_CHUNK]
        out[start : start + ASSIGN_CHUNK] = np.argmin(squared_c[None, :] - 2.0 * part @ centroids.T, axis=1)
    return out


def fit_sample(task_ids: np.ndarray, size: int = FIT_SAMPLE, seed: int = 0) -> np.ndarray:
    """The task ids k-means is fitted on: all of them, or a seeded sample of `size`, ascending."""
    task_ids = np.asarray(task_ids, dtype=np.int64)
    if task_ids.size <= size:
        return np.sort(task_ids)
    return np.sort(np.random.default_rng(seed).choice(task_ids, size=size, replace=False))
