"""Syncs that cost what changed, against a real Label Studio 1.23.2, Redis and an `ale worker`, on both detection stores.

Nothing changed: nothing is written to LS. New tasks: only their predictions
are written, into the served version, at the scores their usefulness gives.
Tasks labelled since: nothing is written.
"""

import time

import numpy as np
import pytest
from redis import Redis

from label_studio_ale.detection_store import open_detection_store
from label_studio_ale.jobqueue import QUEUE_SYNC, RedisJobQueue
from label_studio_ale.jobs import sync_priorities
from label_studio_ale.ranking import rank
from tests.support.backend import backend_env, run_worker
from tests.support.projects import add_images, create_project, next_task, submit_box

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB_TIMEOUT = 240
NEW_TASKS = 50


def run_sync(jobs, project, **options):
    job_id = jobs.enqueue(QUEUE_SYNC, sync_priorities, project, retry=True, **options)
    deadline = time.monotonic() + JOB_TIMEOUT
    while (info := jobs.info(job_id)) is None or info.status not in ("finished", "failed"):
        assert time.monotonic() < deadline, f"sync {job_id} did not finish: {info}"
        time.sleep(0.2)
    assert info.status == "finished", info.error
    return info.result


def predictions(ls, project) -> dict[int, tuple[int, str, float]]:
    """Every prediction row of the project: id -> (task, version, score)."""
    return {p.id: (p.task, p.model_version, p.score) for p in ls.predictions.list(project=project)}


def test_a_sync_writes_only_what_changed(ls_sdk, label_studio, redis_server, trained_weights, store_url, tmp_path):
    env = backend_env(label_studio, trained_weights, tmp_path / "models", redis_server, SCORE_THRESHOLD="0.25", DETECTION_STORE_URL=store_url)
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    project, first_ids = create_project(ls_sdk, range(50_000, 50_012), "incremental sync", max_objects=5, min_side=14, max_side=30)
    with run_worker(env, tmp_path, queues="predict,sync"):
        first = run_sync(jobs, project)
        assert first["status"] == "synced" and first["written"] == 12
        served = first["model_version"]
        rows = predictions(ls_sdk, project)
        assert len(rows) == 12

        # Nothing changed: no prediction written or deleted, the same version served.
        idle = run_sync(jobs, project)
        assert idle["status"] == "unchanged" and idle["written"] == 0 and idle["deleted_versions"] == []
        assert predictions(ls_sdk, project) == rows
        assert ls_sdk.projects.get(id=project).model_version == served

        # 50 new tasks: 50 predictions, added to the served version; the old ones untouched.
        new_ids = add_images(ls_sdk, project, range(51_000, 51_000 + NEW_TASKS), max_objects=5, min_side=14, max_side=30)
        update = run_sync(jobs, project)
        assert update["status"] == "updated" and update["written"] == NEW_TASKS and sorted(update["added"]) == sorted(new_ids)
        assert update["model_version"] == served == ls_sdk.projects.get(id=project).model_version
        after = predictions(ls_sdk, project)
        assert len(after) == 12 + NEW_TASKS and {k: after[k] for k in rows} == rows
        assert all(version == served for _, version, _ in after.values())

        # The served order is the one a full ranking of all 62 tasks gives.
        usefulness = {**first["usefulness"], **update["usefulness"]}
        ids = np.array(sorted(usefulness))
        values = np.array([-np.inf if usefulness[t] is None else usefulness[t] for t in ids])
        expected = [int(ids[i]) for i in rank(values, ids)]
        by_score = sorted((score, task) for task, _, score in after.values())
        assert [task for _, task in by_score] == expected
        assert any(expected.index(t) < 12 for t in new_ids), "some new task should rank among the old ones"
        # "Label All Tasks" serves them in that order
        served_order = []
        for _ in range(15):
            task = next_task(ls_sdk, project)
            served_order.append(task)
            submit_box(ls_sdk, task)
        assert served_order == expected[:15]

        # Tasks labelled since: still nothing to write.
        labelled = run_sync(jobs, project)
        assert labelled["status"] == "unchanged" and labelled["written"] == 0 and labelled["new_tasks"] == 0
        assert predictions(ls_sdk, project) == after
        assert next_task(ls_sdk, project) == expected[15]

        # A full sync (new model, policy or settings, or asked for) rewrites and switches.
        full = run_sync(jobs, project, full=True)
        assert full["status"] == "synced" and full["written"] == 12 + NEW_TASKS - 15 and full["model_version"] != served
        assert served in full["deleted_versions"]

    # The store keeps the served record and only the current model's detections.
    store = open_detection_store(store_url, tmp_path / "models")
    assert store.served_queue(project).ls_version == full["model_version"]
    assert len(store.versions(project)) == 1 and sum(store.versions(project).values()) == 12 + NEW_TASKS


def dominant(result) -> str | None:
    """The most frequent label of a prediction's boxes (ties: the first class, as the ranking breaks them)."""
    labels = [r["value"]["rectanglelabels"][0] for r in result]
    if not labels:
        return None
    return max(("bird", "nest"), key=lambda name: (labels.count(name), name == "bird"))


def test_once_the_head_batch_is_labelled_the_extras_reshape_the_next_batch(ls_sdk, label_studio, redis_server, trained_weights, store_url, tmp_path):
    batch = 4
    env = backend_env(
        label_studio, trained_weights, tmp_path / "models", redis_server,
        SCORE_THRESHOLD="0.25", SYNC_BATCH_SIZE=str(batch), CLASS_BALANCE="nest=1", DETECTION_STORE_URL=store_url,
    )
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    project, task_ids = create_project(ls_sdk, range(52_000, 52_030), "reshaped head", max_objects=5, min_side=14, max_side=30)
    with run_worker(env, tmp_path, queues="predict,sync"):
        first = run_sync(jobs, project)
        served = first["model_version"]
        shown = {p.task: dominant(p.result) for p in ls_sdk.predictions.list(project=project)}
        assert [shown[t] for t in first["order"][:batch]] == ["nest"] * batch, "the extras put nest images in the head"
        past_head = [shown[t] for t in first["order"][batch : 2 * batch]]  # ranked by usefulness alone
        window = [shown[t] for t in first["order"][batch : 5 * batch]]  # the four batches the extras re-shape
        assert past_head.count("nest") < min(batch, window.count("nest")), "the scenes should mix classes past the head"

        for _ in range(batch):  # the head batch is labelled
            submit_box(ls_sdk, next_task(ls_sdk, project))
        before = predictions(ls_sdk, project)
        reshaped = run_sync(jobs, project)
        assert reshaped["status"] == "reshaped" and 0 < reshaped["written"] <= 4 * batch
        assert ls_sdk.projects.get(id=project).model_version == served
        after = predictions(ls_sdk, project)
        assert len(after) == len(before) and sum(before[k] != after[k] for k in before) == reshaped["written"]
        # the new head is not labelled yet: nothing to write
        idle = run_sync(jobs, project)
        assert idle["status"] == "unchanged" and idle["written"] == 0 and predictions(ls_sdk, project) == after

        nxt = []
        for _ in range(batch):
            task = next_task(ls_sdk, project)
            nxt.append(task)
            submit_box(ls_sdk, task)
        # the next batch served holds as many nest images as the window had to give, most useful first
        assert [shown[t] for t in nxt].count("nest") == min(batch, window.count("nest"))
