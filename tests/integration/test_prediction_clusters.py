"""Embedding clusters in Label Studio's `cluster` field, against a real Label Studio 1.23.2, Redis and an `ale worker`.

LS's Uncertainty sampling serves an annotator tasks from the clusters they
have labelled least first, by score within them; it reads a labelled task's
cluster from that task's predictions, which must survive a new version.
"""

import numpy as np
import pytest
from redis import Redis

from label_studio_ale.jobqueue import RedisJobQueue
from tests.integration.test_incremental_sync import run_sync
from tests.support.backend import backend_env, run_worker
from tests.support.projects import add_images, create_project, next_task, submit_box

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENES = {"max_objects": 5, "min_side": 14, "max_side": 30}


def served_rows(ls, project, version) -> dict[int, tuple[int | None, float]]:
    """task -> (cluster, score) of the predictions of `version`."""
    return {p.task: (p.cluster, p.score) for p in ls.predictions.list(project=project) if p.model_version == version}


def test_predictions_carry_clusters_and_ls_spreads_an_annotator_over_them(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    env = backend_env(label_studio, trained_weights, tmp_path / "models", redis_server, SCORE_THRESHOLD="0.25", LS_CLUSTERS="3",
                      POLICY="ale-entropy-sum+novelty")  # novelty reads the labelled tasks the clusters are written for
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    project, ids = create_project(ls_sdk, range(53_000, 53_008), "clusters", site=0, **SCENES)
    ids += add_images(ls_sdk, project, range(53_100, 53_108), site=1, **SCENES)
    ids += add_images(ls_sdk, project, range(53_200, 53_208), site=3, **SCENES)
    with run_worker(env, tmp_path, queues="predict,sync"):
        first = run_sync(jobs, project)
        assert first["status"] == "synced" and first["written"] == len(ids)
        assert first["clusters"] == 3 and first["labelled_predictions"] == 0
        rows = served_rows(ls_sdk, project, first["model_version"])
        assert sorted(rows) == sorted(ids) and {cluster for cluster, _ in rows.values()} == {0, 1, 2}

        def lowest(tasks):
            return min(tasks, key=lambda t: (rows[t][1], t))

        # One annotator: the lowest score first; then, each time, the lowest score of a cluster they have labelled least.
        solved: dict[int, int] = {}
        for _ in range(4):
            task = next_task(ls_sdk, project)
            least = min(solved_count(solved, rows, c) for c in range(3))
            open_tasks = [t for t in rows if t not in solved and solved_count(solved, rows, rows[t][0]) == least]
            assert task == lowest(open_tasks), "next: the lowest score among the clusters labelled least"
            submit_box(ls_sdk, task)
            solved[task] = rows[task][0]
        assert len(set(solved.values())) == 3, "four tasks labelled: every cluster visited before any twice"

        # A new version (here: a full rewrite) gives the labelled tasks a prediction carrying their cluster under
        # the new centroids; the old version goes, and LS still knows which clusters this annotator has labelled.
        again = run_sync(jobs, project, full=True)
        assert again["status"] == "synced" and again["labelled_predictions"] == 4
        assert again["deleted_versions"] == [first["model_version"]]
        after = served_rows(ls_sdk, project, again["model_version"])
        assert set(after) == set(ids) and all(cluster is not None for cluster, _ in after.values())
        assert all(after[t][1] == 1.0 for t in solved), "a labelled task's prediction is never served: score 1"
        counts = np.bincount([after[t][0] for t in solved], minlength=3)
        rows = {t: after[t] for t in after if t not in solved}
        task = next_task(ls_sdk, project)
        assert after[task][0] in np.flatnonzero(counts == counts.min()) and task == lowest(
            [t for t in rows if counts[rows[t][0]] == counts.min()]
        )

        # Tasks added later join the served version with the cluster of their nearest centroid.
        new_ids = add_images(ls_sdk, project, range(53_300, 53_303), site=1, **SCENES)
        updated = run_sync(jobs, project)
        assert updated["status"] == "updated" and updated["model_version"] == again["model_version"]
        latest = served_rows(ls_sdk, project, again["model_version"])
        assert all(latest[t][0] in (0, 1, 2) for t in new_ids)


def solved_count(solved: dict[int, int], rows, cluster) -> int:
    return sum(1 for c in solved.values() if c == cluster)
