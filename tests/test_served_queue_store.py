"""The served-queue record of the detection store, on both back ends: its high-water task id, its write transactions, its reads."""

import threading
import time

import numpy as np
import pytest

from label_studio_ale.detection_store import LabelledReference, ServedQueue, SqliteDetectionStore, StoredDetections, open_detection_store
from label_studio_ale.detections import Detections
from label_studio_ale.queue_update import gaps_of

QUEUE = ServedQueue("ale:m:1", "m", "rk")


@pytest.fixture
def store(store_url, tmp_path):
    return open_detection_store(store_url, tmp_path)


def test_the_tasks_created_since_a_queue_are_those_above_the_greatest_ever_written_into_it(store):
    """Re-shapes of the head drop its labelled tasks: the served record may lose its greatest task id, or every task."""
    assert store.served_last_task(1) is None
    store.replace_served(1, QUEUE, [30, 10, 20], [0.5, 2.0, 1.0], [0.5, 0.25, 0.75])
    assert store.served_last_task(1) == 30
    assert store.rescore_served(1, QUEUE.ls_version, [30, 20], [10], [0.5])
    assert store.served_last_task(1) == 30, "labelled since, but not created since"
    assert store.rescore_served(1, QUEUE.ls_version, [10], [], [])
    assert len(store.served_tasks(1)) == 0 and store.served_last_task(1) == 30, "the pool labelled: still not the whole project"
    assert store.add_served(1, QUEUE.ls_version, [41, 40], [1.0, 1.0], [0.5, 0.6]) and store.served_last_task(1) == 41
    assert store.add_served(1, QUEUE.ls_version, [5], [1.0], [0.7]) and store.served_last_task(1) == 41, "never lowered"
    assert not store.add_served(1, "ale:m:0", [99], [1.0], [0.1]) and store.served_last_task(1) == 41
    store.replace_served(1, ServedQueue("ale:m:2", "m", "rk"), [7, 12], [1.0, 1.0], [0.3, 0.6])
    assert store.served_last_task(1) == 41, "a full sync listed none above 12 unlabeled: those up to 41 are labelled"
    store.replace_served(2, QUEUE, [3], [1.0], [0.5])
    assert store.served_last_task(2) == 3 and store.served_last_task(1) == 41
    store.forget_served(1)
    assert store.served_last_task(1) is None, "the next sync lists the whole project"


def test_a_store_made_before_the_high_water_mark_gets_it_from_its_served_tasks(store_url, tmp_path):
    store = open_detection_store(store_url, tmp_path)
    with store._exclusive() as db:  # the served queue as an older release left it
        store._exec(db, "INSERT INTO served_queues (project, ls_version, raw_key, ranking_key, updated) VALUES (1, 'ale:m:1', 'm', 'rk', 0)")
        store._exec(db, "INSERT INTO served_queues (project, ls_version, raw_key, ranking_key, updated) VALUES (2, 'ale:m:1', 'm', 'rk', 0)")
        store._execmany(db, "INSERT INTO served_tasks (project, task_id, usefulness, score) VALUES (?, ?, ?, ?)", [(1, 8, 1.0, 0.5), (1, 3, 1.0, 0.6)])
    upgraded, again = open_detection_store(store_url, tmp_path), open_detection_store(store_url, tmp_path)
    assert upgraded.served_last_task(1) == 8 and upgraded.served_last_task(2) is None
    assert again.served_last_task(1) == 8, "added once"
    assert upgraded.rescore_served(1, "ale:m:1", [8], [3], [0.5]) and upgraded.served_last_task(1) == 8
    assert upgraded.served_queue(1) == QUEUE


def test_a_record_an_older_release_wrote_after_the_migration_falls_back_to_its_served_tasks(store):
    """During an upgrade an old process sharing the store writes records without the high-water id: never None for
    a queue with tasks, which would list the whole project as new."""
    store.replace_served(1, QUEUE, [30, 10], [0.5, 2.0], [0.5, 0.25])
    with store._exclusive() as db:
        store._exec(db, "UPDATE served_queues SET last_task = NULL WHERE project = 1")
    assert store.served_last_task(1) == 30


@pytest.mark.parametrize("write", ["begin", "rescore", "add", "replace"])
def test_a_served_write_waits_for_another_writer_instead_of_failing_with_database_is_locked(tmp_path, write):
    """SQLite in WAL mode: a transaction that read first cannot write once another connection committed meanwhile."""
    path = tmp_path / "d.sqlite"
    store = SqliteDetectionStore(path)
    store.replace_served(1, QUEUE, [1, 2], [0.5, 0.4], [0.3, 0.6])
    other = SqliteDetectionStore(path)  # a predict worker in another process
    written = []

    def other_writes():
        other.put_many(2, "k", [StoredDetections(9, Detections.empty(1, (4, 4)), 0, None)])
        written.append(time.monotonic())

    execute = store._exec

    def read_while_another_writes(db, query, params=()):
        found = execute(db, query, params)
        if query.startswith(("SELECT ls_version FROM served_queues", "SELECT last_task FROM served_queues")) and not written:
            writer = threading.Thread(target=other_writes)
            writer.start()
            writer.join(0.5)  # it commits here unless this transaction holds the write lock
        return found

    store._exec = read_while_another_writes
    done = {
        "begin": lambda: store.begin_served_write(1, QUEUE.ls_version),
        "rescore": lambda: store.rescore_served(1, QUEUE.ls_version, [1], [2], [0.5]),
        "add": lambda: store.add_served(1, QUEUE.ls_version, [3], [0.1], [0.9]),
        "replace": lambda: store.replace_served(1, QUEUE, [4], [0.1], [0.5]) is None,
    }[write]()
    ended = time.monotonic()
    deadline = ended + 10
    while not written and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done and written and written[0] >= ended, "the other writer waited for this one, then wrote"
    assert other.get_many(2, "k").keys() == {9}


def test_what_a_served_queue_was_ranked_with_is_read_at_once(store):
    centroids = np.array([[0.5, 0.25], [1.0, 0.0]], dtype=np.float32)
    reference = LabelledReference(np.array([3, 5]), 2.0)
    store.replace_served(1, QUEUE, [30, 10], [0.5, 2.0], [0.5, 0.25], centroids, reference, np.array([0.6, 2.5]))
    store.replace_served(2, ServedQueue("ale:m:2", "m", "rk"), [1], [0.0], [0.5])
    queries = []
    execute = store._exec
    store._exec = lambda db, query, params=(): queries.append(query) or execute(db, query, params)
    record = store.served_record(1, QUEUE.ls_version)
    assert len(queries) == 1
    assert np.array_equal(record.centroids, centroids) and record.rarity.tolist() == [0.6, 2.5]
    assert record.reference.task_ids.tolist() == [3, 5] and record.reference.scale == 2.0
    assert store.served_record(1, "ale:m:0") is None, "another version's"
    bare = store.served_record(2, "ale:m:2")
    assert (bare.reference, bare.rarity, bare.centroids) == (None, None, None)


def test_the_store_finds_the_same_gaps_for_new_tasks_as_the_queue_read_whole(store):
    rng = np.random.default_rng(3)
    usefulness = np.concatenate([rng.random(60), [-np.inf] * 5])
    rng.shuffle(usefulness)
    scores = np.sort(rng.choice(np.linspace(0.01, 0.99, 500), usefulness.size, replace=False))
    store.replace_served(1, QUEUE, np.arange(1, usefulness.size + 1), usefulness, scores)
    new = np.concatenate([rng.random(30), [-np.inf, 2.0, -1.0], usefulness[:5]])
    low, high = store.served_gaps(1, new)
    expected = gaps_of(store.served_tasks(1), new)
    np.testing.assert_array_equal(low, expected[0])
    np.testing.assert_array_equal(high, expected[1])
    assert store.served_gaps(2, np.array([0.5, -np.inf]))[0].tolist() == [0.0, 0.0], "no queue: the whole (0, 1)"
    assert store.served_gaps(2, np.array([0.5, -np.inf]))[1].tolist() == [1.0, 1.0]
