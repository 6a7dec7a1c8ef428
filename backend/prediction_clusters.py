"""The `cluster` of every prediction a sync writes (LS_CLUSTERS): LS spreads each annotator over clusters.

Label Studio's Uncertainty sampling orders an annotator's next tasks by how
many tasks of the same prediction cluster they have labelled, then by score
(`projects/functions/next_task.py`), reading the cluster of a labelled task
from its predictions. So a full sync fits k-means on the pool's embeddings
(`clusters.kmeans`, on a sample), gives every unlabeled task's prediction its
cluster, and writes a prediction of the new version for every labelled task
too, with that task's cluster under the new centroids: the old versions are
deleted after the switch, and with them the clusters LS knew the labelled
tasks by. The centroids are kept with the served queue; tasks added later go
to their nearest centroid.

LS's bulk prediction import drops the `cluster` field, so a clustered sync
creates its predictions one request each: O(tasks) requests on a full sync,
O(new tasks) on an incremental one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .adapters import is_trained
from .clusters import ASSIGN_CHUNK, assign, fit_sample, kmeans
from .serving import ServingFilters, raw_output_key, shown_classes, shown_detections


def fit_centroids(store, project: int, key: str, task_ids: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """(k', D) float32 centroids of the embeddings stored under `key` for a sample of `task_ids`; None without embeddings."""
    found = store.embeddings(project, key, fit_sample(task_ids, seed=seed).tolist())
    if not found:
        return None
    return kmeans(np.stack([found[t] for t in sorted(found)]), k, seed=seed).astype(np.float32)


def cluster_ids(store, project: int, key: str, task_ids, centroids: np.ndarray) -> dict[int, int]:
    """Task id -> index of the nearest centroid, for the tasks with a stored embedding; read chunk by chunk."""
    task_ids = [int(t) for t in task_ids]
    out: dict[int, int] = {}
    for rows, vectors in store.embedding_chunks(project, key, task_ids, ASSIGN_CHUNK):
        out.update(zip((task_ids[i] for i in rows), assign(vectors, centroids).tolist()))
    return out


@dataclass(frozen=True)
class Clustering:
    """A full sync's clusters: (k, D) centroids and each pool task's cluster."""

    centroids: np.ndarray
    ids: dict[int, int]


def cluster_pool(rt, project: int, adapter, task_ids: np.ndarray) -> Clustering | None:
    """Fit LS_CLUSTERS clusters on the pool's embeddings and assign every task; None when off or without embeddings."""
    k = rt.settings.ls_clusters
    if not k or not is_trained(adapter):
        return None  # an untrained model's features say little, and its order is spread on image hashes already
    key = raw_output_key(adapter.version, rt.settings)
    centroids = fit_centroids(rt.store, project, key, task_ids, k, rt.settings.policy_seed)
    if centroids is None:
        return None
    return Clustering(centroids, cluster_ids(rt.store, project, key, task_ids, centroids))


def labelled_predictions(rt, project: int, config, adapter, centroids: np.ndarray, version: str, tasks) -> Iterator[list[dict]]:
    """Chunks of one `version` prediction per task of `tasks`, the labelled ones, with its cluster.

    Score 1: LS never serves a labelled task. `tasks` must have detections stored
    by `adapter` (`pool.predicted_labelled_tasks`).
    """
    from .ls_format import detections_to_results, match_labels

    key = raw_output_key(adapter.version, rt.settings)
    label_map = match_labels(adapter.classes, config)
    shown, filters = shown_classes(label_map), ServingFilters.from_settings(rt.settings)
    chunk = rt.settings.import_chunk_size
    for start in range(0, len(tasks), chunk):
        ids = [t.id for t in tasks[start : start + chunk]]
        stored = rt.store.get_many(project, key, ids)
        clusters = cluster_ids(rt.store, project, key, ids, centroids)
        items = []
        for task_id in ids:
            item = stored.get(task_id)
            # a row of a model rebuilt with other classes under the same name is no prediction of this one
            ok = item is not None and item.detections is not None and item.detections.num_classes == len(shown)
            result = detections_to_results(shown_detections(item.detections, shown, filters), label_map, config) if ok else []
            items.append({"task": task_id, "result": result, "score": 1.0, "model_version": version, "cluster": clusters.get(task_id)})
        yield items
