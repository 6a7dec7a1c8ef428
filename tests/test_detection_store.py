"""The detection store on both back ends: SQLite (the default) and a real PostgreSQL server."""

import threading

import numpy as np
import pytest

from label_studio_ale.detection_store import (
    ID_BATCH,
    LabelledReference,
    ServedQueue,
    SqliteDetectionStore,
    StoredDetections,
    open_detection_store,
)
from label_studio_ale.detections import Detections
from label_studio_ale.errors import ConfigError


@pytest.fixture
def store(store_url, tmp_path):
    return open_detection_store(store_url, tmp_path)


def test_round_trip_by_project_version_and_task(store):
    det = Detections([[1, 2, 30, 40], [5, 5, 9, 9]], [[0.25, 0.5], [0.75, 0.125]], (64, 48))
    store.put_many(
        1,
        "v1",
        [
            StoredDetections(10, det, 2**64 - 1, None),
            StoredDetections(11, Detections.empty(2, (8, 8)), 2**63, None),
            StoredDetections(12, None, None, "image is corrupt"),
        ],
    )
    store.put_many(2, "v1", [StoredDetections(10, Detections.empty(2, (8, 8)), 5, None)])
    got = store.get_many(1, "v1")
    assert set(got) == {10, 11, 12}
    assert np.allclose(got[10].detections.xyxy, det.xyxy) and np.allclose(got[10].detections.class_probs, det.class_probs)
    assert got[10].detections.image_size == (64, 48) and got[10].image_hash == 2**64 - 1
    assert len(got[11].detections) == 0 and got[11].detections.num_classes == 2 and got[11].image_hash == 2**63
    assert got[12].detections is None and got[12].error == "image is corrupt"
    assert set(store.get_many(1, "v1", [11, 99])) == {11}
    assert store.usable_ids(1, "v1").tolist() == [10, 11] and store.usable_ids(1, "v1", [11, 12]).tolist() == [11]
    assert store.get_many(1, "v2") == {}
    # a later put replaces: the failed image is predicted after all
    store.put_many(1, "v1", [StoredDetections(12, det, 7, None)])
    assert store.get_many(1, "v1", [12])[12].image_hash == 7 and store.usable_ids(1, "v1").tolist() == [10, 11, 12]
    assert store.usable_ids(1, "v1", [12, 10, 99]).tolist() == [10, 12] and store.usable_ids(1, "v1", []).tolist() == []
    assert store.delete_version(1, "v1") == 3 and store.get_many(1, "v1") == {}
    assert set(store.get_many(2, "v1")) == {10}


def test_image_embeddings_are_stored_and_read_only_where_asked_and_box_instability_always(store):
    vector = np.linspace(-1, 1, 448).astype(np.float32)
    vector /= np.linalg.norm(vector)
    det = Detections([[1, 2, 30, 40]], [[0.25, 0.5]], (64, 48), embedding=vector, instability=[0.25])
    store.put_many(
        4,
        "v1",
        [
            StoredDetections(10, det, 1, None),
            StoredDetections(11, Detections.empty(2, (8, 8)).with_embedding(-vector), 2, None),
            StoredDetections(12, Detections.empty(2, (8, 8)), 3, None),  # a model that gives none
            StoredDetections(13, None, None, "image is corrupt"),
        ],
    )
    plain = store.get_many(4, "v1")
    assert all(item.detections is None or item.detections.embedding is None for item in plain.values())
    assert plain[10].detections.instability.tolist() == [0.25] and plain[11].detections.instability is None
    full = store.get_many(4, "v1", [10, 12], embeddings=True)
    assert np.allclose(full[10].detections.embedding, vector, atol=1e-3) and full[12].detections.embedding is None
    got = store.embeddings(4, "v1", [10, 11, 12, 13, 99])
    assert sorted(got) == [10, 11] and got[11].dtype == np.float32 and got[11].shape == (448,)
    assert abs(float(got[10] @ got[11]) + 1) < 1e-3, "half precision keeps the cosine"
    chunks = list(store.embedding_chunks(4, "v1", [12, 10, 13, 11, 99], chunk=2))
    assert [rows.tolist() for rows, _ in chunks] == [[1], [3]], "positions in the list given, per chunk of 2; none in the last"
    assert np.allclose(chunks[0][1], got[10][None]) and np.allclose(chunks[1][1], got[11][None])


def test_reads_by_id_cross_the_query_batch(store):
    ids = list(range(1, ID_BATCH * 2 + 7))
    store.put_many(3, "v1", [StoredDetections(i, Detections.empty(1, (4, 4)), i, None) for i in ids])
    wanted = ids[::3] + [10**9]
    assert sorted(store.get_many(3, "v1", wanted)) == ids[::3]


def test_old_versions_are_pruned_per_project(store):
    item = [StoredDetections(1, Detections.empty(1, (4, 4)), 1, None)]
    for key in ("v1", "v2", "v3"):
        store.put_many(5, key, item)
    store.put_many(6, "v1", item)
    assert store.prune(5, {"v3", "v2"}) == 1
    assert store.versions(5) == {"v2": 1, "v3": 1} and store.versions(6) == {"v1": 1}
    with pytest.raises(ValueError, match="at least one key"):
        store.prune(5, set())


def test_the_served_queue_is_replaced_whole_and_added_to_only_while_current(store):
    assert store.served_queue(1) is None and len(store.served_tasks(1)) == 0
    queue = ServedQueue("ale:m:1", "m", "rk")
    store.replace_served(1, queue, [30, 10, 20], [0.5, 2.0, -np.inf], [0.5, 0.25, 0.75])
    store.replace_served(2, ServedQueue("ale:m:2", "m", "rk"), [1], [0.0], [0.5])
    assert store.served_queue(1) == queue
    served = store.served_tasks(1)
    assert served.task_ids.tolist() == [10, 30, 20] and served.scores.tolist() == [0.25, 0.5, 0.75]
    assert served.usefulness.tolist() == [2.0, 0.5, -np.inf]
    assert store.add_served(1, "ale:m:1", [40], [1.0], [0.375])
    assert store.served_tasks(1).task_ids.tolist() == [10, 40, 30, 20]
    assert not store.add_served(1, "ale:m:0", [50], [1.0], [0.1]), "a replaced version takes no additions"
    assert 50 not in store.served_tasks(1).task_ids
    assert store.served_centroids(1, "ale:m:1") is None, "written without clusters"
    centroids = np.array([[0.5, 0.25, 0.0], [1.0, 0.0, -1.0]], dtype=np.float32)
    store.replace_served(1, ServedQueue("ale:m:3", "m", "rk"), [10], [1.0], [0.5], centroids)
    assert store.served_tasks(1).task_ids.tolist() == [10] and store.served_tasks(2).task_ids.tolist() == [1]
    assert np.array_equal(store.served_centroids(1, "ale:m:3"), centroids) and store.served_centroids(1, "ale:m:1") is None
    store.forget_served(1)
    assert store.served_queue(1) is None and len(store.served_tasks(1)) == 0
    with pytest.raises(ValueError, match="must match"):
        store.replace_served(1, queue, [1, 2], [0.0], [0.5])


def test_the_class_rarity_a_queue_was_weighted_by_is_recorded_with_it(store):
    store.replace_served(1, ServedQueue("ale:m:1", "m", "rk"), [30, 10], [0.5, 2.0], [0.5, 0.25], rarity=np.array([0.6, 2.5]))
    assert store.served_rarity(1, "ale:m:1").tolist() == [0.6, 2.5]
    assert store.served_rarity(1, "ale:m:0") is None, "another version's"
    store.replace_served(1, ServedQueue("ale:m:2", "m", "rk"), [30], [0.5], [0.5])
    assert store.served_rarity(1, "ale:m:2") is None, "ranked without +rare"


def test_the_unusable_tasks_of_a_served_queue_are_read_in_turn(store):
    """served_unusable goes on after the last id it gave, then from the lowest: none waits behind a hundred for good."""
    ids = [3, 5, 8, 9, 12]
    usefulness = [-np.inf, 1.0, -np.inf, -np.inf, -np.inf]
    store.replace_served(1, ServedQueue("ale:m:1", "m", "rk"), ids, usefulness, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert store.served_unusable(1, 2) == [3, 8]
    assert store.served_unusable(1, 2, after=8) == [9, 12]
    assert store.served_unusable(1, 2, after=12) == [3, 8], "round again from the lowest"
    assert store.served_unusable(1, 3, after=9) == [12, 3, 8]
    assert store.served_unusable(1, 10, after=8) == [9, 12, 3, 8], "each once"


def test_a_served_queue_being_written_into_is_not_current_until_recorded(store):
    """begin_served_write: a sync that dies before recording what it wrote leaves a record that matches no queue."""
    queue = ServedQueue("ale:m:1", "m", "rk")
    store.replace_served(1, queue, [30, 10], [0.5, 2.0], [0.5, 0.25])
    assert not store.begin_served_write(1, "ale:m:0"), "another version: nothing marked"
    assert store.served_queue(1) == queue
    assert store.begin_served_write(1, "ale:m:1") and store.begin_served_write(1, "ale:m:1")
    assert store.served_queue(1) != queue and store.served_queue(1).ls_version == "ale:m:1"
    assert store.add_served(1, "ale:m:1", [40], [1.0], [0.375])
    assert store.served_queue(1) == queue, "recorded: current again (marked twice, cleared once)"
    assert store.begin_served_write(1, "ale:m:1")
    assert store.rescore_served(1, "ale:m:1", [10], [30], [0.1])
    assert store.served_queue(1) == queue


def test_the_labelled_reference_is_recorded_with_its_queue_and_grows_with_a_rescore(store):
    """The labelled tasks a full sync ranked against; a re-shape of its head adds the head's labelled tasks."""
    queue = ServedQueue("ale:m:1", "m", "rk")
    store.replace_served(1, queue, [30, 10, 20], [0.5, 2.0, 1.0], [0.5, 0.25, 0.75])
    assert store.served_reference(1, "ale:m:1") is None, "ranked without labelled images"
    store.replace_served(1, queue, [30, 10, 20], [0.5, 2.0, 1.0], [0.5, 0.25, 0.75], reference=LabelledReference([7, 3, 5], 0.25))
    recorded = store.served_reference(1, "ale:m:1")
    assert recorded.task_ids.tolist() == [3, 5, 7] and recorded.scale == 0.25
    assert store.served_reference(1, "ale:m:0") is None, "another version's reference is not this queue's"
    assert store.rescore_served(1, "ale:m:1", [10], [30], [0.1], recorded.with_tasks([10]))
    grown = store.served_reference(1, "ale:m:1")
    assert grown.task_ids.tolist() == [3, 5, 7, 10] and grown.scale == 0.25
    assert store.served_tasks(1).task_ids.tolist() == [30, 20]
    assert store.rescore_served(1, "ale:m:1", [], [30], [0.2]), "a rescore without a reference keeps the recorded one"
    assert store.served_reference(1, "ale:m:1").task_ids.tolist() == [3, 5, 7, 10]
    store.replace_served(2, ServedQueue("ale:m:2", "m", "rk"), [1], [0.0], [0.5], reference=LabelledReference([], None))
    empty = store.served_reference(2, "ale:m:2")
    assert empty is not None and empty.task_ids.size == 0 and empty.scale is None, "nothing labelled is recorded as such"
    with pytest.raises(ValueError, match="scale"):
        LabelledReference([1], 0.0)


def test_an_upgrade_from_schema_4_keeps_the_stored_detections_and_makes_the_next_sync_full(store_url, tmp_path):
    """Schemas 5 and 6 changed the served queue only: a store of 4 keeps its detections (no model re-runs); older ones drop them."""
    store = open_detection_store(store_url, tmp_path)
    found = Detections([[0, 0, 9, 9]], [[0.9, 0.1]], (64, 64))
    store.put_many(1, "m", [StoredDetections(1, found, 1, None)])
    with store._tx() as db:  # the served queue table as schema 4 had it
        store._exec(db, "DROP TABLE served_queues")
        store._exec(
            db,
            "CREATE TABLE served_queues (project BIGINT PRIMARY KEY, ls_version TEXT NOT NULL, raw_key TEXT NOT NULL, "
            "ranking_key TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL, centroids BYTEA, centroid_dims INTEGER)".replace(
                "BYTEA", store.blob_type
            ),
        )
        store._exec(db, "INSERT INTO served_queues VALUES (1, 'ale:m:1', 'm', 'rk', 0, NULL, NULL)")
        store._exec(db, "UPDATE store_meta SET value = 4 WHERE name = 'schema'")
    upgraded = open_detection_store(store_url, tmp_path)
    assert upgraded.served_queue(1) is None, "the next sync is full"
    assert list(upgraded.get_many(1, "m")) == [1], "the detections stay"
    upgraded.replace_served(1, ServedQueue("ale:m:2", "m", "rk"), [2], [1.0], [0.5], reference=LabelledReference([1], 1.0))
    assert upgraded.served_reference(1, "ale:m:2").task_ids.tolist() == [1]
    with upgraded._tx() as db:
        upgraded._exec(db, "UPDATE store_meta SET value = 3 WHERE name = 'schema'")
    assert open_detection_store(store_url, tmp_path).get_many(1, "m") == {}, "an older store drops them too"


def test_a_failed_write_leaves_nothing_half_written(store):
    store.replace_served(1, ServedQueue("ale:a", "m", "rk"), [1, 2], [1.0, 0.5], [0.3, 0.6])
    with pytest.raises(Exception):
        store.replace_served(1, ServedQueue("ale:b", "m", "rk"), [3, 3], [1.0, 0.5], [0.3, 0.6])  # duplicate task: refused
    assert store.served_queue(1).ls_version == "ale:a" and store.served_tasks(1).task_ids.tolist() == [1, 2]


def test_a_full_disk_is_reported_as_such_and_keeps_what_was_stored(tmp_path):
    """SQLite rolls a full-disk write back itself; the store's own rollback must not replace that error with its own."""
    import sqlite3

    store = SqliteDetectionStore(tmp_path / "detections.sqlite")
    found = Detections([[0, 0, 9, 9]], [[0.9, 0.1]], (64, 64), embedding=np.ones(64, dtype=np.float32))
    store.put_many(1, "m", [StoredDetections(1, found, 1, None)])
    pages = store._connect().execute("PRAGMA page_count").fetchone()[0]
    store._connect().execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk fills after two more pages
    many = [StoredDetections(t, found, t, None) for t in range(2, 2000)]
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        store.put_many(1, "m", many)
    assert sorted(store.get_many(1, "m")) == [1]


def test_threads_and_a_second_opener_share_one_store(store_url, tmp_path):
    first, second = open_detection_store(store_url, tmp_path), open_detection_store(store_url, tmp_path)
    errors = []

    def write(offset):
        try:
            for i in range(20):
                first.put_many(9, "v", [StoredDetections(offset + i, Detections.empty(1, (4, 4)), i, None)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(second.get_many(9, "v")) == 60


def test_an_older_sqlite_table_is_dropped_as_a_cache(tmp_path):
    import sqlite3

    path = tmp_path / "d.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE detections (project INTEGER, model_version TEXT, task_id INTEGER)")
    db.execute("INSERT INTO detections VALUES (1, 'v', 1)")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = SqliteDetectionStore(path)
    assert store.get_many(1, "v") == {}


def test_store_urls_are_checked_and_passwords_never_shown(tmp_path):
    assert isinstance(open_detection_store("", tmp_path), SqliteDetectionStore)
    with pytest.raises(ConfigError, match="DETECTION_STORE_URL.*postgresql://") as bad:
        open_detection_store("mysql://root:hunter2@db/x", tmp_path)
    assert "hunter2" not in str(bad.value)
    with pytest.raises(ConfigError, match="cannot connect") as down:
        open_detection_store("postgresql://ale:hunter2@127.0.0.1:9/none?connect_timeout=2", tmp_path)
    assert "hunter2" not in str(down.value)


def test_a_missing_postgres_database_is_created_on_first_use(postgres_server):
    url = postgres_server.url(f"ale_new_{threading.get_ident()}")
    store = open_detection_store(url, "/nonexistent")
    store.put_many(1, "v", [StoredDetections(1, Detections.empty(1, (4, 4)), 1, None)])
    assert open_detection_store(url, "/nonexistent").usable_ids(1, "v").tolist() == [1]


def test_annotation_edits_are_kept_per_annotation_and_replaced_when_it_changes(store):
    from label_studio_ale.annotation_edits import EditCounts, EditRecord

    store.put_edits(5, [EditRecord(1, 10, "ale:v1:t", EditCounts(accepted=2, added=1), 12.5), EditRecord(2, 11, "ale:v1:t", EditCounts(deleted=1), None)])
    store.put_edits(6, [EditRecord(1, 10, "other", EditCounts(moved=1), 3.0)])
    store.put_edits(5, [EditRecord(1, 10, "ale:v1:t", EditCounts(accepted=3), 14.0)])  # the annotation was updated
    assert store.edits(5) == [EditRecord(1, 10, "ale:v1:t", EditCounts(accepted=3), 14.0), EditRecord(2, 11, "ale:v1:t", EditCounts(deleted=1), None)]
    assert store.edits(6) == [EditRecord(1, 10, "other", EditCounts(moved=1), 3.0)] and store.edits(7) == []


def test_annotation_edits_are_summed_per_version_by_the_database(store):
    from label_studio_ale.annotation_edits import EditCounts, EditRecord, VersionEdits

    store.put_edits(
        5,
        [
            EditRecord(4, 10, "ale:v2:t", EditCounts(moved=1), None),
            EditRecord(2, 11, "ale:v1:t", EditCounts(accepted=2, added=1), 12.5),
            EditRecord(3, 12, "ale:v1:t", EditCounts(accepted=1, deleted=2), 7.5),
            EditRecord(6, 13, "ale:v1:t", EditCounts(relabelled=1), None),
            EditRecord(5, 14, "ale:v2:t", EditCounts(added=4), 3.0),
        ],
    )
    store.put_edits(6, [EditRecord(1, 10, "other", EditCounts(moved=1), 3.0)])
    assert store.edit_totals(5) == [
        VersionEdits("ale:v1:t", 2, 3, EditCounts(accepted=3, relabelled=1, deleted=2, added=1), 20.0, 2),
        VersionEdits("ale:v2:t", 4, 2, EditCounts(moved=1, added=4), 3.0, 1),
    ]
    store.put_edits(7, [EditRecord(1, 10, "ale:v3:t", EditCounts(), None)])
    assert store.edit_totals(7) == [VersionEdits("ale:v3:t", 1, 1, EditCounts(), 0.0, 0)] and store.edit_totals(8) == []


def test_each_row_records_which_image_it_is_of_and_usable_refs_read_it_by_class_count(store):
    two = Detections([[0, 0, 9, 9]], [[0.9, 0.1]], (64, 64))
    three = Detections([[0, 0, 9, 9]], [[0.9, 0.1, 0.0]], (64, 64))
    store.put_many(
        1,
        "m",
        [
            StoredDetections(1, two, 1, None, "ref-1"),
            StoredDetections(2, three, 2, None, "ref-2"),
            StoredDetections(3, None, None, "404", "ref-3"),
            StoredDetections(4, two, 4, None),
        ],
    )
    assert store.get_many(1, "m", [1])[1].image_ref == "ref-1" and store.get_many(1, "m", [4])[4].image_ref is None
    assert store.usable_refs(1, "m") == {1: "ref-1", 2: "ref-2", 4: None}, "an error row is not usable"
    assert store.usable_refs(1, "m", [2, 3, 4], num_classes=2) == {4: None}, "rows of another class count are not"
    store.put_many(1, "m", [StoredDetections(1, two, 1, None, "ref-1b")])  # the task's image changed: the row follows
    assert store.usable_refs(1, "m", [1]) == {1: "ref-1b"}


def test_a_store_of_the_previous_release_gains_the_image_reference_and_keeps_its_detections(store_url, tmp_path):
    store = open_detection_store(store_url, tmp_path)
    found = Detections([[0, 0, 9, 9]], [[0.9, 0.1]], (64, 64))
    store.put_many(1, "m", [StoredDetections(1, found, 1, None, "ref")])
    with store._tx() as db:  # the detections table as the previous release made it: no image_ref
        store._exec(db, "DROP TABLE detections")
        store._exec(db, "CREATE TABLE detections (project BIGINT NOT NULL, model_version TEXT NOT NULL, task_id BIGINT NOT NULL, "
                    "width INTEGER, height INTEGER, num_classes INTEGER, xyxy BLOB, class_probs BLOB, labels BLOB, scores BLOB, "
                    "background BLOB, image_hash BIGINT, error TEXT, created DOUBLE PRECISION NOT NULL, embedding BLOB, instability BLOB, "
                    "PRIMARY KEY (project, model_version, task_id))".replace("BLOB", store.blob_type))
    with store._tx() as db:
        store._exec(db, "INSERT INTO detections (project, model_version, task_id, width, height, num_classes, created, error) "
                    "VALUES (1, 'm', 2, 64, 64, 2, 0, 'gone')")
    upgraded = open_detection_store(store_url, tmp_path)
    assert upgraded.get_many(1, "m")[2].image_ref is None, "rows kept, with no reference"
    upgraded.put_many(1, "m", [StoredDetections(1, found, 1, None, "ref")])
    assert upgraded.usable_refs(1, "m") == {1: "ref"}
    assert open_detection_store(store_url, tmp_path).usable_refs(1, "m") == {1: "ref"}, "a second opening adds nothing twice"


def test_a_password_with_a_hash_question_mark_slash_or_at_sign_is_never_shown():
    """libpq takes a raw '#' or '?' in a password (urllib reads either as the end of the host); a raw '/' or '@' it
    misreads, and would quote part of the password as the host: refused before connecting, saying how to write it."""
    from label_studio_ale.detection_store import PostgresDetectionStore

    for password in ("Xy#9secret", "Xy?9secret"):
        with pytest.raises(ConfigError, match="cannot connect") as down:
            open_detection_store(f"postgresql://ale:{password}@127.0.0.1:9/none?connect_timeout=2", "/nonexistent")
        assert "Xy" not in str(down.value) and "9secret" not in str(down.value) and "postgresql://ale:***@127.0.0.1:9/" in str(down.value)
    for password in ("Xy/9secret", "Xy@9secret"):
        with pytest.raises(ConfigError, match="percent-encode") as refused:
            open_detection_store(f"postgresql://ale:{password}@127.0.0.1:9/none?connect_timeout=2", "/nonexistent")
        assert "Xy" not in str(refused.value) and "9secret" not in str(refused.value)
    unconnected = PostgresDetectionStore.__new__(PostgresDetectionStore)
    unconnected.url = "postgresql://ale:Xy#9secret@db/ale"
    assert repr(unconnected) == "PostgresDetectionStore('postgresql://ale:***@db/ale')"
