import numpy as np
import pytest

from label_studio_ale.detection_store import ServedTasks
from label_studio_ale.queue_update import place_new_tasks, ranking_key
from label_studio_ale.ranking import ls_scores, rank


def served_queue(usefulness, task_ids=None):
    usefulness = np.asarray(usefulness, dtype=float)
    task_ids = np.arange(1, usefulness.size + 1) if task_ids is None else np.asarray(task_ids)
    order = rank(usefulness, task_ids)
    scores = ls_scores(order)
    by_score = np.argsort(scores)
    return ServedTasks(task_ids[by_score], usefulness[by_score], scores[by_score])


def test_new_tasks_land_where_a_full_ranking_would_put_them():
    rng = np.random.default_rng(0)
    old, new = rng.random(40), rng.random(15)
    served = served_queue(old)
    new_ids = np.arange(100, 115)
    scores = place_new_tasks(served, new_ids, new)
    assert ((scores > 0) & (scores < 1)).all()
    merged_ids = np.concatenate([served.task_ids, new_ids])
    merged_scores = np.concatenate([served.scores, scores])
    served_order = merged_ids[np.argsort(merged_scores, kind="stable")].tolist()
    all_ids = np.concatenate([np.arange(1, 41), new_ids])
    expected = all_ids[rank(np.concatenate([old, new]), all_ids)].tolist()
    assert served_order == expected


def test_ends_ties_and_unusable_images():
    served = served_queue([3.0, 2.0, 1.0])  # scores 0.25, 0.5, 0.75 for tasks 1, 2, 3
    scores = place_new_tasks(served, np.array([10, 11, 12, 13, 14]), np.array([9.0, 0.0, 2.0, -np.inf, 9.0]))
    assert 0 < scores[0] < scores[4] < 0.25  # both before the head, the lower task id first
    assert 0.75 < scores[1] < scores[3] < 1  # after the tail; an unusable image goes last
    assert 0.5 < scores[2] < 0.75  # a tie goes after the served task it ties with
    assert place_new_tasks(served, np.zeros(0, dtype=int), np.zeros(0)).size == 0
    empty = ServedTasks(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    assert place_new_tasks(empty, np.array([1, 2]), np.array([0.1, 0.9])).tolist() == [2 / 3, 1 / 3]


def test_in_a_reshaped_head_a_new_task_goes_after_the_last_as_useful_one():
    # the batch extras moved a less useful image (0.1) into the head, before a 0.8
    served = ServedTasks(np.array([1, 2, 3]), np.array([0.9, 0.1, 0.8]), np.array([0.25, 0.5, 0.75]))
    scores = place_new_tasks(served, np.array([7, 8, 9]), np.array([0.5, 0.95, 0.05]))
    assert 0.75 < scores[0] < scores[2]  # after the 0.8, not ahead of it into the head beside the 0.1
    assert scores[1] < 0.25
    assert 0.75 < scores[2]


def test_new_tasks_do_not_jump_into_a_head_batch_with_exploration_picks():
    """A head batch of 50 ends with five of the pool's least useful images (exploration); new tasks of middling
    usefulness go where a full ranking puts them, not before those picks."""
    rng = np.random.default_rng(1)
    tail = np.sort(rng.uniform(0.0, 0.9, 995))[::-1]
    head = np.concatenate([np.linspace(0.99, 0.95, 45), np.full(5, 0.001)])
    usefulness = np.concatenate([head, tail])
    served = ServedTasks(np.arange(1, 1046), usefulness, ls_scores(np.arange(1045)))
    new = np.full(10, 0.3)
    scores = place_new_tasks(served, np.arange(2000, 2010), new)
    positions = np.searchsorted(served.scores, scores)
    expected = 50 + int((tail >= 0.3).sum())
    assert (positions == expected).all(), positions


def test_a_full_gap_asks_for_a_rewrite():
    served = ServedTasks(np.array([1, 2]), np.array([2.0, 1.0]), np.array([0.5, 0.5 + 1e-13]))
    assert place_new_tasks(served, np.array([3]), np.array([1.5])) is None
    with pytest.raises(ValueError, match="NaN"):
        place_new_tasks(served, np.array([3]), np.array([np.nan]))


def test_ranking_key_is_stable_and_sensitive():
    assert ranking_key(policy="a", seed=1) == ranking_key(seed=1, policy="a") != ranking_key(policy="a", seed=2)


def test_a_few_new_tasks_are_placed_by_the_store_without_reading_the_queue_and_many_on_the_queue_read_once(tmp_path):
    from label_studio_ale.detection_store import ServedQueue, SqliteDetectionStore
    from label_studio_ale.queue_update import GAP_QUERIES_MAX, place_in_store

    rng = np.random.default_rng(2)
    served = served_queue(rng.random(200))
    store = SqliteDetectionStore(tmp_path / "d.sqlite")
    store.replace_served(1, ServedQueue("ale:m:1", "m", "rk"), served.task_ids, served.usefulness, served.scores)
    reads = []
    read = store.served_tasks
    store.served_tasks = lambda project, limit=None: reads.append(project) or read(project, limit)
    few = rng.random(GAP_QUERIES_MAX)
    ids = np.arange(500, 500 + few.size)
    np.testing.assert_array_equal(place_in_store(store, 1, ids, few), place_new_tasks(served, ids, few))
    assert reads == [], "a few new tasks: the store finds their gaps"
    many = np.concatenate([rng.random(30), [-np.inf]])
    np.testing.assert_array_equal(place_in_store(store, 1, np.arange(600, 631), many), place_new_tasks(served, np.arange(600, 631), many))
    assert reads == [1]
    with pytest.raises(ValueError, match="NaN"):
        place_in_store(store, 1, np.array([3]), np.array([np.nan]))


def test_adding_a_new_task_reads_the_served_record_once(tmp_path, monkeypatch):
    """What the queue was ranked with (reference, rarity, centroids) in one read, and no read of the whole queue."""
    from types import SimpleNamespace

    import label_studio_ale.queue_writes as queue_writes
    from label_studio_ale.detection_store import LabelledReference, ServedQueue, SqliteDetectionStore

    store = SqliteDetectionStore(tmp_path / "d.sqlite")
    centroids, reference = np.eye(2, dtype=np.float32), LabelledReference(np.array([2, 4]), 1.5)
    store.replace_served(1, ServedQueue("ale:m:1", "m", "rk"), [10, 11], [2.0, 1.0], [0.25, 0.75], centroids, reference, np.array([0.5, 1.5]))
    ranked = {"usefulness": np.array([1.5]), "policy": "p", "usable": np.array([True]), "detections": [None]}
    seen = {}
    monkeypatch.setattr(queue_writes, "rank_pool", lambda *a, reference, rarity, **k: seen.update(ref=reference, rarity=rarity) or ranked)
    monkeypatch.setattr(queue_writes, "cluster_ids", lambda *a: seen.update(centroids=a[-1]) or {12: 0})
    monkeypatch.setattr(queue_writes, "_import", lambda *a: None)
    monkeypatch.setattr(store, "served_tasks", lambda *a: pytest.fail("the whole served queue was read for one new task"))
    queries = []
    execute = store._exec
    monkeypatch.setattr(store, "_exec", lambda db, query, params=(): queries.append(query) or execute(db, query, params))
    rt = SimpleNamespace(store=store, settings=SimpleNamespace(ls_clusters=2), check_lock=lambda *a: None)
    monkeypatch.setattr(queue_writes, "raw_output_key", lambda version, settings: "m")
    adapter, fresh = SimpleNamespace(version="m"), [SimpleNamespace(id=12)]
    result = queue_writes.add_new_tasks(rt, 1, None, adapter, "ale:m:1", fresh, None, lambda phase: None)
    assert result["added"] == [12]
    assert seen["ref"].task_ids.tolist() == [2, 4] and seen["rarity"].tolist() == [0.5, 1.5] and np.array_equal(seen["centroids"], centroids)
    record_reads = [q for q in queries if "FROM served_queues" in q and q.startswith("SELECT") and "reference_ids" in q]
    assert len(record_reads) == 1, queries
    assert store.served_last_task(1) == 12
    monkeypatch.undo()
    placed = store.served_tasks(1)
    assert placed.task_ids.tolist() == [10, 12, 11] and placed.scores.tolist() == [0.25, 0.5, 0.75], "between its neighbours by usefulness"
