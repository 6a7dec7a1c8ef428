"""Novelty and diversity through the real sync: Label Studio 1.23.2, Redis, an `ale worker`.

The sync predicts the labelled images for their embeddings, scores the pool
by usefulness x novelty, and chooses the head batch by k-center over the
candidates' embeddings (with "+coreset", counting the labelled images as
chosen); recomputed here from what the worker stored.
"""

import numpy as np
import pytest
from redis import Redis

from label_studio_ale.detection_store import SqliteDetectionStore
from label_studio_ale.embeddings import k_center, novelty, spacing
from label_studio_ale.jobqueue import RedisJobQueue
from label_studio_ale.novelty import image_novelty
from label_studio_ale.policies import get_policy
from label_studio_ale.ranking import rank
from label_studio_ale.serving import ServingFilters, raw_output_key, shown_detections
from label_studio_ale.settings import Settings
from tests.integration.test_incremental_sync import run_sync
from tests.support.backend import backend_env, run_worker
from tests.support.models import IMAGE_SIZE
from tests.support.projects import add_images, create_project, submit_box

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = "ale-entropy-sum+novelty+diverse"
BATCH = 3


def synced_with_three_labelled(policy, seeds, name, ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    """Sync a 14-image project with its first 3 tasks labelled under `policy`. -> (result, labelled embeddings (3, D),
    pool task ids, their shown detections, the stored detections by task id, the project, the backend's env)."""
    from label_studio_ale_plugins.yolov5 import YoloV5Adapter

    models = tmp_path / "models"
    env = backend_env(
        label_studio, trained_weights, models, redis_server, SCORE_THRESHOLD="0.25", POLICY=policy, SYNC_BATCH_SIZE=str(BATCH), DIVERSITY_POOL="3"
    )
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    project, ids = create_project(ls_sdk, seeds, name, max_objects=5, min_side=14, max_side=30)
    labelled = ids[:3]
    for task in labelled:
        submit_box(ls_sdk, task)
    with run_worker(env, tmp_path, queues="predict,sync"):
        result = run_sync(jobs, project)
    assert result["status"] == "synced" and result["policy"] == policy and result["tasks"] == len(ids) - 3

    settings = Settings.from_env(env)
    key = raw_output_key(YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE).version, settings)
    stored = SqliteDetectionStore(models / "detections.sqlite").get_many(project, key, embeddings=True)
    assert set(labelled) <= set(stored), "the labelled images were predicted for their embeddings"
    reference = np.stack([stored[t].detections.embedding for t in labelled])
    pool = np.array(sorted(set(ids) - set(labelled)))
    filters = ServingFilters.from_settings(settings)
    shown = [shown_detections(stored[int(t)].detections, np.ones(2, dtype=bool), filters) for t in pool]
    return result, reference, pool, shown, stored, project, env


def test_the_sync_ranks_by_novelty_against_the_labelled_images_and_picks_a_diverse_head(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    result, reference, pool, shown, stored, *_ = synced_with_three_labelled(
        POLICY, range(54_000, 54_014), "novelty and diversity", ls_sdk, label_studio, redis_server, trained_weights, tmp_path
    )
    usefulness = get_policy(POLICY).usefulness(shown, image_novelty(shown, reference))
    plain = get_policy("ale-entropy-sum").usefulness(shown)
    assert not np.allclose(usefulness, plain), "novelty changes the scores"
    np.testing.assert_allclose([result["usefulness"][int(t)] for t in pool], usefulness, rtol=1e-6)

    # the head: k-center over the DIVERSITY_POOL x batch most useful, then the other candidates, then the rest
    by_usefulness = [int(pool[i]) for i in rank(usefulness, pool)]
    candidates = by_usefulness[: 3 * BATCH]
    head = [candidates[i] for i in k_center(np.stack([stored[t].detections.embedding for t in candidates]), BATCH)]
    expected = head + [t for t in candidates if t not in head] + by_usefulness[3 * BATCH :]
    assert result["order"] == expected
    assert result["order"][:BATCH] != by_usefulness[:BATCH], "diversity changed the head batch here"


def test_a_coreset_sync_chooses_its_head_away_from_the_labelled_images(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    policy = "ale-entropy-sum+coreset"
    result, reference, pool, shown, stored, *_ = synced_with_three_labelled(
        policy, range(54_100, 54_114), "coreset", ls_sdk, label_studio, redis_server, trained_weights, tmp_path
    )
    usefulness = get_policy("ale-entropy-sum").usefulness(shown)
    np.testing.assert_allclose([result["usefulness"][int(t)] for t in pool], usefulness, rtol=1e-6)  # the policy's own usefulness

    # the head: k-center over the candidates with the labelled images counted as chosen, then the other candidates, then the rest
    by_usefulness = [int(pool[i]) for i in rank(usefulness, pool)]
    candidates = by_usefulness[: 3 * BATCH]
    vectors = np.stack([stored[t].detections.embedding for t in candidates])
    head = [candidates[i] for i in k_center(vectors, BATCH, covered=reference)]
    assert result["order"] == head + [t for t in candidates if t not in head] + by_usefulness[3 * BATCH :]
    assert head != [candidates[i] for i in k_center(vectors, BATCH)], "the labelled images changed the head batch here"


def test_tasks_added_later_are_measured_against_the_labelled_images_their_queue_was(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    """An incremental sync scores new tasks against the labelled images of the full sync, on its scale, so that they
    are placed among the queue's tasks by comparable usefulness: a task labelled since counts at the next full sync."""
    result, reference, pool, shown, stored, project, env = synced_with_three_labelled(
        "ale-entropy-sum+novelty", range(54_200, 54_214), "novelty, incremental", ls_sdk, label_studio, redis_server, trained_weights, tmp_path
    )
    submit_box(ls_sdk, result["order"][0])  # labelled since the full sync
    new_ids = add_images(ls_sdk, project, range(54_300, 54_304), max_objects=5, min_side=14, max_side=30)
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    with run_worker(env, tmp_path, queues="predict,sync"):
        update = run_sync(jobs, project)
    assert update["status"] == "updated" and sorted(update["added"]) == sorted(new_ids)

    settings = Settings.from_env(env)
    from label_studio_ale_plugins.yolov5 import YoloV5Adapter

    key = raw_output_key(YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE).version, settings)
    now = SqliteDetectionStore(tmp_path / "models" / "detections.sqlite").get_many(project, key, new_ids, embeddings=True)
    filters = ServingFilters.from_settings(settings)
    new_shown = [shown_detections(now[t].detections, np.ones(2, dtype=bool), filters) for t in new_ids]
    vectors = np.stack([now[t].detections.embedding for t in new_ids])
    expected = get_policy("ale-entropy-sum+novelty").usefulness(new_shown, novelty(vectors, reference, spacing(reference)))
    np.testing.assert_allclose([update["usefulness"][t] for t in new_ids], expected, rtol=1e-6)
