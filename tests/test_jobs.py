"""Job logic at the unit seam: ranking the stored pool, coalescing sync requests, job progress lines.

The jobs against a real Label Studio, Redis and workers are in tests/integration/.
"""

import threading

import numpy as np
import pytest

from label_studio_ale import jobs, queue_writes
from label_studio_ale.detection_store import ServedQueue, StoredDetections
from label_studio_ale.detections import Detections
from label_studio_ale.ls_client import TaskRef
from label_studio_ale.ls_format import parse_label_config
from label_studio_ale.runtime import Runtime
from label_studio_ale.serving import raw_output_key
from label_studio_ale.settings import Settings

CONFIG_XML = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels></View>'
)
CONFIG = parse_label_config(CONFIG_XML)


class Model:
    classes = ("bird", "car")
    version = "m-1"


def test_rank_pool_keeps_unfetched_images_out_of_the_head_batch(tmp_path):
    settings = Settings(model_dir=tmp_path, sync_batch_size=4, exploration_fraction=0.5, empty_quota=0.5, policy="entropy-sum")
    rt = Runtime(settings)
    tasks = [TaskRef(i, {"image": f"/data/upload/1/{i}.png"}) for i in range(1, 13)]
    items = []
    for task in tasks:
        if task.id % 3 == 0:
            items.append(StoredDetections(task.id, None, None, "the file is missing"))
        elif task.id % 3 == 1:
            items.append(StoredDetections(task.id, Detections.empty(2, (64, 64)), 1, None))
        else:
            items.append(StoredDetections(task.id, Detections([[0, 0, 9, 9]], [[0.3 + task.id / 100, 0.0]], (64, 64)), 2, None))
    rt.store.put_many(1, raw_output_key(Model.version, settings), items)
    ranked = jobs.rank_pool(rt, 1, [t.id for t in tasks], Model(), CONFIG)
    head = [tasks[i].id for i in ranked["order"][:4]]
    tail = [tasks[i].id for i in ranked["order"][-4:]]
    assert not [t for t in head if t % 3 == 0], head
    assert tail == [3, 6, 9, 12]
    assert ranked["usable"].tolist() == [t.id % 3 != 0 for t in tasks]


def test_rank_pool_scores_only_what_the_label_config_shows(tmp_path):
    """A car box (no label for it) neither makes an image useful nor is imported."""
    rt = Runtime(Settings(model_dir=tmp_path, policy="ale-entropy-sum"))
    tasks = [TaskRef(1, {}), TaskRef(2, {})]
    cars = Detections([[0, 0, 9, 9], [10, 10, 19, 19], [20, 20, 29, 29]], [[0.1, 0.5]] * 3, (64, 64))
    bird = Detections([[0, 0, 9, 9]], [[0.6, 0.0]], (64, 64))
    rt.store.put_many(1, "m-1", [StoredDetections(1, cars, 1, None), StoredDetections(2, bird, 2, None)])
    ranked = jobs.rank_pool(rt, 1, [t.id for t in tasks], Model(), CONFIG)
    assert [tasks[i].id for i in ranked["order"]] == [2, 1]
    assert len(ranked["detections"][0]) == 0 and ranked["usefulness"][0] == 0.0


def test_a_sync_requested_while_one_runs_runs_after_it(tmp_path, monkeypatch):
    """Requests during a sync are coalesced into one more run by the holder, never dropped."""
    rt = Runtime(Settings(model_dir=tmp_path))
    runs, answers = [], []

    def fake_sync(runtime, project, progress, **options):
        runs.append(project)
        if len(runs) == 1:  # two requests arrive while the first sync runs
            for _ in range(2):
                thread = threading.Thread(target=lambda: answers.append(jobs.sync_priorities(7, runtime=rt)))
                thread.start()
                thread.join()
        return {"status": "synced", "stale_versions": [], "phases": {}}

    monkeypatch.setattr(jobs, "_sync", fake_sync)
    result = jobs.sync_priorities(7, runtime=rt)
    assert [a["status"] for a in answers] == ["coalesced", "coalesced"]
    assert runs == [7, 7] and result["runs"] == 2
    assert not rt.flag_raised("sync-pending:7")
    # nothing pending: the next request runs once
    assert jobs.sync_priorities(7, runtime=rt)["runs"] == 1 and runs == [7, 7, 7]


def test_a_full_sync_requested_while_one_runs_is_a_full_rerun(tmp_path, monkeypatch):
    """`ale sync --full` during another sync is coalesced; the holder's rerun is then a full rewrite."""
    rt = Runtime(Settings(model_dir=tmp_path))
    runs, answers = [], []

    def fake_sync(runtime, project, progress, full=False, **options):
        runs.append(full)
        if len(runs) == 1:
            thread = threading.Thread(target=lambda: answers.append(jobs.sync_priorities(7, runtime=rt, full=True)))
            thread.start()
            thread.join()
        return {"status": "synced", "stale_versions": [], "phases": {}}

    monkeypatch.setattr(jobs, "_sync", fake_sync)
    jobs.sync_priorities(7, runtime=rt)
    assert answers[0]["status"] == "coalesced" and runs == [False, True]
    assert jobs.sync_priorities(7, runtime=rt)["runs"] == 1 and runs == [False, True, False], "taken once"


def test_a_failed_sync_leaves_later_requests_pending_for_the_retry(tmp_path, monkeypatch):
    rt = Runtime(Settings(model_dir=tmp_path))

    def failing(runtime, project, progress, **options):
        rt.raise_flag(f"sync-pending:{project}")  # a request came in meanwhile
        raise RuntimeError("LS is down")

    monkeypatch.setattr(jobs, "_sync", failing)
    with pytest.raises(RuntimeError, match="LS is down"):
        jobs.sync_priorities(3, runtime=rt)
    assert rt.flag_raised("sync-pending:3")


def test_progress_lines_keep_the_training_visible_after_its_sync():
    assert jobs.describe_progress({}) == ""
    assert jobs.describe_progress({"progress": {"phase": "import", "done": 5, "total": 110}}) == "import 5/110"
    training = {"epoch": 50, "epochs": 50}
    assert jobs.describe_progress({"progress": {"phase": "train", "done": 50, "total": 50}, "training": training}) == "epoch 50/50"
    evaluation = {"version": "v0002", "map50": 0.09, "images": 12, "boxes": 30, "promoted": False}
    line = jobs.describe_progress({"progress": {"phase": "import", "done": 110, "total": 110}, "training": training, "evaluation": evaluation})
    assert line == "trained v0002: mAP50 0.090 on 12 validation images (30 boxes), not promoted; then import 110/110"


class RecordingQueue:
    def __init__(self):
        self.enqueued = []

    def enqueue(self, kind, func, *args, retry=False, job_id=None, **kwargs):
        self.enqueued.append((kind, func.__name__, args, job_id))
        return job_id


@pytest.fixture(params=["embedded", "redis"])
def runtime(request, tmp_path):
    if request.param == "embedded":
        return Runtime(Settings(model_dir=tmp_path))
    from tests.support.redis_server import start_redis

    server = start_redis()
    request.addfinalizer(server.stop)
    return Runtime(Settings(model_dir=tmp_path, redis_url=server.url))


def test_a_burst_of_sync_requests_queues_one_sync_until_it_starts(runtime, monkeypatch):
    queue = RecordingQueue()
    first = [jobs.request_sync(queue, runtime, 7) for _ in range(20)]
    assert len(queue.enqueued) == 1 and queue.enqueued[0][:3] == ("sync", "queued_sync", (7,))
    assert first[0][1] is True and all(job == first[0][0] and not new for job, new in first[1:])
    assert jobs.request_sync(queue, runtime, 8)[1] is True, "another project queues its own"
    # The queued sync starts: from now on a request queues one more, which covers the rest.
    monkeypatch.setattr(jobs, "sync_priorities", lambda project, runtime, progress, **options: {"status": "synced"})
    assert jobs.queued_sync(7, runtime=runtime)["status"] == "synced"
    later = [jobs.request_sync(queue, runtime, 7) for _ in range(5)]
    assert len({job for job, _ in later}) == 1 and later[0][0] != first[0][0]
    assert [kind for kind, name, args, _ in queue.enqueued if args == (7,)] == ["sync", "sync"]


def test_a_sync_that_could_not_be_queued_does_not_hold_back_the_next(runtime):
    class Down:
        def enqueue(self, *args, **kwargs):
            raise ConnectionError("Redis is away")

    with pytest.raises(ConnectionError):
        jobs.request_sync(Down(), runtime, 9)
    queue = RecordingQueue()
    assert jobs.request_sync(queue, runtime, 9)[1] is True and len(queue.enqueued) == 1


class CountingLS:
    """The Label Studio calls a full rewrite makes, recorded; the labelled tasks listing counted."""

    def __init__(self, labelled):
        self.labelled, self.listings, self.created, self.switched = labelled, 0, [], None

    def labelled_tasks(self, project):
        self.listings += 1
        yield from self.labelled

    def model_versions(self, project):
        """Predictions per version, as LS counts them: what this fake was given."""
        from collections import Counter

        return Counter(item["model_version"] for item in self.created + getattr(self, "imported", []))

    def create_predictions(self, project, items):
        self.created += items
        return len(items)

    def switch_queue(self, project, version):
        self.switched = version


class TrainedModel(Model):
    trained = True


def test_rank_pool_weighs_rarely_predicted_classes_up_among_the_classes_the_config_shows(tmp_path):
    """+rare: a car box outranks a more uncertain bird box when cars are rarely predicted, unless cars have no label."""
    both = parse_label_config(
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="bird"/><Label value="car"/></RectangleLabels></View>'
    )
    rt = Runtime(Settings(model_dir=tmp_path, policy="entropy-mean+rare"))
    birds = Detections(np.tile([[0, 0, 9, 9]], (6, 1)), np.tile([[0.9, 0.0]], (6, 1)), (64, 64))
    unsure_bird = Detections([[0, 0, 9, 9]], [[0.5, 0.0]], (64, 64))
    car_or_bird = Detections([[0, 0, 9, 9]], [[0.05, 0.9]], (64, 64))  # less uncertain: a car
    bird_with_car_score = Detections([[0, 0, 9, 9]], [[0.6, 0.4]], (64, 64))  # a bird a little less uncertain, some car in it
    pool = [birds, unsure_bird, car_or_bird, bird_with_car_score]
    rt.store.put_many(1, "m-1", [StoredDetections(i, d, i, None) for i, d in enumerate(pool, 1)])
    ranked = jobs.rank_pool(rt, 1, [1, 2, 3], Model(), both)
    assert ranked["policy"] == "entropy-mean+rare" and ranked["order"].tolist()[0] == 2  # task 3, the rare car
    plain = jobs.rank_pool(Runtime(Settings(model_dir=tmp_path, policy="entropy-mean")), 1, [1, 2, 3], Model(), both)
    assert plain["order"].tolist()[0] == 1  # uncertainty alone: the bird
    # car has no label in CONFIG: the car box is not shown, and the car column of task 4 is zeroed before the
    # weights read it, so it cannot make that bird rare: the order is uncertainty's, the unsure bird first
    shown_only = jobs.rank_pool(rt, 1, [1, 2, 4], Model(), CONFIG)
    bird_only = jobs.rank_pool(Runtime(Settings(model_dir=tmp_path, policy="entropy-mean")), 1, [1, 2, 4], Model(), CONFIG)
    assert shown_only["order"].tolist() == bird_only["order"].tolist() and shown_only["order"].tolist()[0] == 1


def test_a_coreset_head_keeps_away_from_the_labelled_tasks_which_only_the_head_reads(tmp_path):
    """+coreset: the more useful task 1 looks like labelled task 9, so the head batch of one is task 2."""

    def image(bird_score, embedding):
        return Detections([[0, 0, 9, 9]], [[bird_score, 0.0]], (64, 64), embedding=np.asarray(embedding, dtype=np.float32))

    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum+coreset", sync_batch_size=1, diversity_pool=2)
    rt = Runtime(settings)
    pool = {1: image(0.5, [1.0, 0.0]), 2: image(0.7, [0.0, 1.0]), 9: image(0.9, [0.98, 0.2])}
    rt.store.put_many(1, raw_output_key(Model.version, settings), [StoredDetections(t, d, t, None) for t, d in pool.items()])
    listings = []

    def labelled():
        listings.append(1)
        return [TaskRef(9, {})]

    ranked = jobs.rank_pool(rt, 1, [1, 2], Model(), CONFIG, labelled=labelled)
    assert ranked["policy"] == "ale-entropy-sum+coreset" and ranked["order"].tolist() == [1, 0] and listings == [1]
    assert ranked["usefulness"][0] > ranked["usefulness"][1], "task 1 is the more useful: the labelled image moved it"
    diverse = Runtime(settings.replace(policy="ale-entropy-sum+diverse"))
    diverse.store.put_many(1, raw_output_key(Model.version, settings), [StoredDetections(t, d, t, None) for t, d in pool.items()])
    assert jobs.rank_pool(diverse, 1, [1, 2], Model(), CONFIG)["order"].tolist() == [0, 1], "+diverse starts from the most useful"
    jobs.rank_pool(rt, 1, [1, 2], Model(), CONFIG, extras=False, labelled=labelled)
    assert listings == [1], "without the batch extras nothing reads the labelled tasks"


def test_a_clustered_novelty_rewrite_lists_the_labelled_tasks_once(tmp_path):
    """Novelty scores the pool against the labelled tasks and clusters are written for them: one listing serves both."""
    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum+novelty", ls_clusters=2)
    labelled = [TaskRef(i, {"image": f"/data/upload/1/{i}.png"}) for i in (1, 2)]
    ls = CountingLS(labelled)
    rt = Runtime(settings, ls=ls)
    key = raw_output_key(Model.version, settings)
    rng = np.random.default_rng(0)
    items = []
    for task_id in range(1, 11):
        vector = rng.normal(size=8).astype(np.float32)
        found = Detections([[0, 0, 9, 9]], [[0.2 + task_id / 50, 0.0]], (64, 64), embedding=vector / np.linalg.norm(vector))
        items.append(StoredDetections(task_id, found, task_id, None))
    rt.store.put_many(1, key, items)
    pool = np.arange(3, 11, dtype=np.int64)
    queue = ServedQueue(None, key, "ranking")
    result = queue_writes.rewrite_queue(rt, 1, CONFIG, TrainedModel(), queue, None, pool, lambda *a, **k: None, lambda name: None)
    assert ls.listings == 1
    assert result["status"] == "synced" and result["labelled_predictions"] == 2 and ls.switched == result["model_version"]
    assert sorted(p["task"] for p in ls.created) == list(range(1, 11))
    assert all(p["cluster"] in (0, 1) for p in ls.created)


class IncrementalLS(CountingLS):
    """CountingLS that also takes bulk imports, answers which tasks are unlabeled and moves scores."""

    def __init__(self, labelled):
        super().__init__(labelled)
        self.imported, self.moved, self.deleted = [], {}, set()

    def import_predictions(self, project, items):
        self.imported += items
        return len(items)

    def label_states(self, project, task_ids):
        labelled = {t.id for t in self.labelled}
        return {int(t): int(t) in labelled for t in task_ids if int(t) not in self.deleted}

    def unlabeled_among(self, project, task_ids):
        return {t for t, labelled in self.label_states(project, task_ids).items() if not labelled}

    def set_prediction_scores(self, project, version, scores):
        self.moved.update(scores)
        return len(scores)


def embedded_pool(rt, settings, task_ids, dims=8, seed=0):
    """Stored detections with unit embeddings for `task_ids` -> {task id: embedding}."""
    rng = np.random.default_rng(seed)
    vectors = {}
    items = []
    for task_id in task_ids:
        vector = rng.normal(size=dims).astype(np.float32)
        vectors[task_id] = vector / np.linalg.norm(vector)
        found = Detections([[0, 0, 9, 9]], [[0.2 + task_id / 50, 0.0]], (64, 64), embedding=vectors[task_id])
        items.append(StoredDetections(task_id, found, task_id, None))
    rt.store.put_many(1, raw_output_key(Model.version, settings), items)
    return vectors


def test_new_tasks_are_measured_against_the_labelled_tasks_the_queue_was_ranked_against_without_listing_them(tmp_path):
    """+novelty: a full sync records its labelled tasks and novelty's scale; tasks added later are scored against
    those, on that scale (comparable with the queue's usefulness), with no listing of the project's labelled tasks."""
    from label_studio_ale.embeddings import novelty, spacing
    from label_studio_ale.policies import get_policy

    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum+novelty")
    ls = IncrementalLS([TaskRef(i, {}) for i in (1, 2, 3)])
    rt = Runtime(settings, ls=ls)
    embedded_pool(rt, settings, range(1, 13))
    key = raw_output_key(Model.version, settings)
    vectors = rt.store.embeddings(1, key, range(1, 13))  # as stored
    result = queue_writes.rewrite_queue(rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.arange(4, 11), lambda *a, **k: None, lambda n: None)
    assert ls.listings == 1
    version = result["model_version"]
    recorded = rt.store.served_reference(1, version)
    reference = np.stack([vectors[t] for t in (1, 2, 3)])
    assert recorded.task_ids.tolist() == [1, 2, 3] and recorded.scale == pytest.approx(spacing(reference))

    ls.labelled = [TaskRef(i, {}) for i in (1, 2, 3, 4)]  # labelled since: counted at the next full sync
    added = queue_writes.add_new_tasks(rt, 1, CONFIG, TrainedModel(), version, [TaskRef(11, {}), TaskRef(12, {})], lambda *a, **k: None, lambda n: None)
    assert added["status"] == "updated" and ls.listings == 1, "an incremental add lists no labelled task"
    new = [Detections([[0, 0, 9, 9]], [[0.2 + t / 50, 0.0]], (64, 64)) for t in (11, 12)]
    expected = get_policy("ale-entropy-sum+novelty").usefulness(new, novelty(np.stack([vectors[11], vectors[12]]), reference, recorded.scale))
    assert [added["usefulness"][t] for t in (11, 12)] == pytest.approx(expected.tolist())


def test_a_reshaped_head_counts_its_labelled_tasks_with_the_recorded_ones(tmp_path):
    """+coreset, one task a batch, candidates the 2 most useful (usefulness grows with the task id).

    Labelled task 1 looks like 8, so the full sync serves 7 first. Once 7 is labelled, 8 (like 7) gives way to 6:
    the re-shape measures against 1 and 7, still without listing them, and the record then holds both.
    """
    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum+coreset", sync_batch_size=1, diversity_pool=2)
    ls = IncrementalLS([TaskRef(1, {})])
    rt = Runtime(settings, ls=ls)
    looks = {1: [1.0, 0.0], 5: [-1.0, 0.0], 6: [0.7, -0.7], 7: [0.0, 1.0], 8: [0.05, 1.0]}
    items = [
        StoredDetections(t, Detections([[0, 0, 9, 9]], [[0.2 + t / 50, 0.0]], (64, 64), embedding=np.array(v, dtype=np.float32)), t, None)
        for t, v in looks.items()
    ]
    key = raw_output_key(Model.version, settings)
    rt.store.put_many(1, key, items)
    result = queue_writes.rewrite_queue(rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.array([5, 6, 7, 8]), lambda *a, **k: None, lambda n: None)
    version = result["model_version"]
    assert result["order"][:2] == [7, 8] and ls.listings == 1
    assert rt.store.served_reference(1, version).task_ids.tolist() == [1]
    ls.labelled = [TaskRef(1, {}), TaskRef(7, {})]
    ls.deleted = {5}  # deleted in LS meanwhile: not served, and not a labelled image to keep away from
    assert queue_writes.reshape_head(rt, 1, CONFIG, TrainedModel(), version) > 0
    assert ls.listings == 1, "the re-shape lists no labelled task"
    assert rt.store.served_tasks(1).task_ids.tolist() == [6, 8], "away from 7, the head's labelled task; 5 is gone"
    assert rt.store.served_reference(1, version).task_ids.tolist() == [1, 7]


class ImportFailsAfter:
    """Label Studio that takes `chunks` bulk imports, then refuses the next (it went away mid-sync)."""

    def __init__(self, chunks):
        self.chunks, self.imported = chunks, []

    def import_predictions(self, project, items):
        if self.chunks == 0:
            raise jobs.LabelStudioError("Label Studio answered 502")
        self.chunks -= 1
        self.imported += items
        return len(items)


def test_new_tasks_added_in_part_make_the_next_sync_rewrite_the_queue(tmp_path):
    """Some chunks of new tasks reached the served version before LS failed: the record is dropped, not kept as if current."""
    settings = Settings(model_dir=tmp_path, import_chunk_size=2)
    ls = ImportFailsAfter(chunks=1)
    rt = Runtime(settings, ls=ls)
    key = raw_output_key(Model.version, settings)
    pool = {t: Detections([[0, 0, 9, 9]], [[0.3 + t / 100, 0.0]], (64, 64)) for t in range(1, 8)}
    rt.store.put_many(1, key, [StoredDetections(t, d, t, None) for t, d in pool.items()])
    queue = ServedQueue("ale:m-1:a", key, "ranking")
    served = np.array([1, 2, 3], dtype=np.int64)
    rt.store.replace_served(1, queue, served, np.array([0.9, 0.5, 0.1]), np.array([0.1, 0.5, 0.9]))
    assert rt.store.served_queue(1) == queue
    fresh = [TaskRef(t, {}) for t in (4, 5, 6, 7)]
    with pytest.raises(jobs.SyncError, match=r"could not add 4 new tasks; the older tasks keep their order, and the next sync rewrites the queue"):
        queue_writes.add_new_tasks(rt, 1, CONFIG, TrainedModel(), "ale:m-1:a", fresh, lambda *a, **k: None, lambda name: None)
    assert len(ls.imported) == 2, "one chunk of two reached the served version"
    assert rt.store.served_queue(1) is None, "the next sync must not add these tasks to the served version a second time"


class RecordsDiscards(CountingLS):
    def __init__(self, labelled):
        super().__init__(labelled)
        self.deleted = []

    def project(self, project):
        from types import SimpleNamespace

        return SimpleNamespace(model_version="ale:m-1:before")

    def import_predictions(self, project, items):
        self.created += items
        return len(items)

    def delete_model_version(self, project, version):
        self.deleted.append(version)
        return 1


def test_a_rewrite_whose_lock_lapsed_switches_nothing_and_removes_its_version(tmp_path):
    """Another sync may hold the project's lock by then: the rewrite stops before the switch, as any failure before it does."""
    settings = Settings(model_dir=tmp_path)
    ls = RecordsDiscards([])
    rt = Runtime(settings, ls=ls)
    key = raw_output_key(Model.version, settings)
    rt.store.put_many(1, key, [StoredDetections(t, Detections([[0, 0, 9, 9]], [[0.4, 0.0]], (64, 64)), t, None) for t in (1, 2)])
    with rt.lock("sync:1") as held:
        held.lost.set()
        with pytest.raises(jobs.SyncError, match=r"failed before switching; the previous order stays: switching project 1 to ale:m-1:.* was not done: the lock sync:1 lapsed"):
            queue_writes.rewrite_queue(rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.array([1, 2]), lambda *a, **k: None, lambda name: None)
    assert ls.switched is None and len(ls.created) == 2 and ls.deleted == [ls.created[0]["model_version"]]
    assert rt.store.served_queue(1) is None


@pytest.mark.parametrize(
    "served, deleted",
    [("ale:m-1:before", True), ("", True), ("my-yolo-backend", False), ("ale:m-1:partial", False)],
)
def test_a_partial_version_is_removed_only_where_ls_keeps_the_project_served(tmp_path, served, deleted):
    """LS clears the project's model_version on any deletion while it names the ML backend (before the first sync)."""
    from types import SimpleNamespace

    class LS:
        removed = []

        def project(self, project):
            return SimpleNamespace(model_version=served)

        def delete_model_version(self, project, version):
            self.removed.append(version)

    ls = LS()
    queue_writes._discard(Runtime(Settings(model_dir=tmp_path), ls=ls), 1, "ale:m-1:partial")
    assert ls.removed == (["ale:m-1:partial"] if deleted else [])


def test_rank_pool_decodes_the_raw_output_a_slice_at_a_time_and_ranks_as_in_one_read(tmp_path, monkeypatch):
    """Every box above the model's floor is stored; ranking keeps only what is shown, so the raw output is read in slices."""
    from label_studio_ale import pool

    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum")
    rt = Runtime(settings)
    key = raw_output_key(Model.version, settings)
    rng = np.random.default_rng(5)
    items = []
    for task_id in range(1, 48):
        scores = rng.uniform(0.06, 0.95, size=(4, 1))
        items.append(StoredDetections(task_id, Detections(np.tile([[0, 0, 9, 9]], (4, 1)), np.hstack([scores, 1 - scores]), (64, 64)), task_id, None))
    rt.store.put_many(1, key, items)
    whole = jobs.rank_pool(rt, 1, list(range(1, 48)), TrainedModel(), CONFIG)
    asked = []
    real = rt.store.get_many
    monkeypatch.setattr(rt.store, "get_many", lambda project, version, ids=None, **kw: (asked.append(len(ids)), real(project, version, ids, **kw))[1])
    monkeypatch.setattr(pool, "RANK_READ_CHUNK", 10)
    sliced = jobs.rank_pool(rt, 1, list(range(1, 48)), TrainedModel(), CONFIG)
    assert asked == [10, 10, 10, 10, 7]
    assert sliced["order"].tolist() == whole["order"].tolist() and np.allclose(sliced["usefulness"], whole["usefulness"])


def test_the_queue_ranking_key_changes_with_every_policy_parameter():
    """COST_PER_IMAGE and NOVELTY_WEIGHT change usefulness: a queue ranked under other values is not current."""
    base = Settings(policy="entropy-mean+novelty+cost")
    key = jobs.queue_ranking_key(base, Model(), "<View/>")
    assert jobs.queue_ranking_key(base.replace(cost_per_image=base.cost_per_image * 10), Model(), "<View/>") != key
    assert jobs.queue_ranking_key(base.replace(novelty_weight=base.novelty_weight / 2), Model(), "<View/>") != key
    assert jobs.queue_ranking_key(Settings(policy="entropy-mean+novelty+cost"), Model(), "<View/>") == key


def test_a_sync_killed_while_adding_new_tasks_makes_the_next_sync_a_rewrite(tmp_path):
    """A worker killed mid-import (no exception handler runs) must not leave the record current: the retry would
    import the chunks that reached LS a second time."""
    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum", import_chunk_size=1)
    ls = IncrementalLS([])
    rt = Runtime(settings, ls=ls)
    embedded_pool(rt, settings, range(1, 9))
    key = raw_output_key(Model.version, settings)
    queue = ServedQueue(None, key, "ranking")
    version = queue_writes.rewrite_queue(rt, 1, CONFIG, TrainedModel(), queue, None, np.arange(1, 6), lambda *a, **k: None, lambda n: None)["model_version"]
    current = ServedQueue(version, key, "ranking")
    assert rt.store.served_queue(1) == current

    def killed(project, items):
        ls.imported += items
        if len(ls.imported) > 5 + 1:  # the second chunk of the add
            raise SystemExit("worker killed")  # not an Exception: the sync's own handler does not run
        return len(items)

    ls.import_predictions = killed
    with pytest.raises(SystemExit):
        queue_writes.add_new_tasks(rt, 1, CONFIG, TrainedModel(), version, [TaskRef(t, {}) for t in (6, 7, 8)], lambda *a, **k: None, lambda n: None)
    assert rt.store.served_queue(1) != current, "the next sync rewrites the queue rather than add 6 again"


def test_random_gives_each_add_of_new_tasks_draws_of_its_own(tmp_path):
    """POLICY=random: tasks added one sync at a time are spread over the queue, not stacked on the seed's first draw."""
    settings = Settings(model_dir=tmp_path, policy="random")
    ls = IncrementalLS([])
    rt = Runtime(settings, ls=ls)
    embedded_pool(rt, settings, range(1, 15))
    key = raw_output_key(Model.version, settings)
    version = queue_writes.rewrite_queue(rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.arange(1, 11), lambda *a, **k: None, lambda n: None)["model_version"]
    values = [
        queue_writes.add_new_tasks(rt, 1, CONFIG, TrainedModel(), version, [TaskRef(t, {})], lambda *a, **k: None, lambda n: None)["usefulness"][t]
        for t in (11, 12, 13, 14)
    ]
    assert len(set(values)) == 4, values
    full = jobs.rank_pool(rt, 1, np.arange(1, 11), TrainedModel(), CONFIG)["usefulness"]
    assert full.tolist() == np.random.default_rng(settings.policy_seed).random(10).tolist(), "a full ranking keeps the seed's stream"


def test_a_current_queue_whose_sampling_was_changed_in_ls_is_served_again_with_one_patch(tmp_path):
    """Nothing new to rank, but the project was set to Sequential sampling in LS: the sync sets it back, writing nothing else."""
    rt, ls, _, project = served_queue_of_five(tmp_path)
    version = project["model_version"]
    ls.switched, ls.imported, project["sampling"] = None, [], "Sequential sampling"
    result = jobs._sync(rt, 1, lambda *a, **k: None)
    assert result["status"] == "sampling_restored" and result["sampling_restored"] == "Sequential sampling"
    assert "set back to Uncertainty sampling" in result["reason"]
    assert ls.switched == version and ls.imported == []
    ls.switched, project["sampling"] = None, "Uncertainty sampling"
    result = jobs._sync(rt, 1, lambda *a, **k: None)
    assert result["status"] == "unchanged" and "sampling_restored" not in result and ls.switched is None, "nothing written"


def test_tasks_added_under_rare_are_weighted_by_the_class_rarity_of_the_queue_they_join(tmp_path):
    """+rare: the class shares are the pool's at the full sync, recorded with the queue; a new task alone would make
    its own class look as common as the pool's commonest, and land far from where a full sync puts it."""
    from label_studio_ale.policies import get_policy
    from label_studio_ale.policy_suffixes import rarity_weighted

    both = (
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="bird"/><Label value="car"/></RectangleLabels></View>'
    )
    config = parse_label_config(both)
    settings = Settings(model_dir=tmp_path, policy="entropy-mean+rare")
    rt = Runtime(settings, ls=IncrementalLS([]))
    key = raw_output_key(Model.version, settings)
    pool = {t: Detections([[0, 0, 9, 9]], [[0.55 + t / 100, 0.1]], (64, 64)) for t in range(1, 11)}  # birds
    pool[11] = Detections([[0, 0, 9, 9]], [[0.3, 0.6]], (64, 64))  # one car: rare
    new_car = Detections([[0, 0, 9, 9]], [[0.35, 0.55]], (64, 64))
    rt.store.put_many(1, key, [StoredDetections(t, d, t, None) for t, d in {**pool, 12: new_car}.items()])
    result = queue_writes.rewrite_queue(rt, 1, config, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.arange(1, 12), lambda *a, **k: None, lambda n: None)
    recorded = rt.store.served_rarity(1, result["model_version"])
    policy = get_policy("entropy-mean+rare")
    assert recorded == pytest.approx(rarity_weighted(policy).pool_rarity(list(pool.values()), 2), rel=1e-6) and recorded[1] > recorded[0]
    added = queue_writes.add_new_tasks(rt, 1, config, TrainedModel(), result["model_version"], [TaskRef(12, {})], lambda *a, **k: None, lambda n: None)
    full = jobs.rank_pool(rt, 1, np.arange(1, 13), TrainedModel(), config)  # what a full sync now gives the new car
    alone = policy.usefulness([new_car])[0]
    assert added["usefulness"][12] == pytest.approx(full["usefulness"][-1], rel=0.2) and added["usefulness"][12] > 1.5 * alone


def served_queue_of_five(tmp_path, failed=()):
    """A served queue of tasks 1-5 (those in `failed`: their image could not be used, LS answered 502), and its project
    as LS lists it (a dict to change). -> (rt, ls, key, project)."""
    from types import SimpleNamespace

    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum")
    ls = IncrementalLS([])
    rt = Runtime(settings, ls=ls, adapter_factory=TrainedModel)
    embedded_pool(rt, settings, [t for t in range(1, 6) if t not in failed])
    key = raw_output_key(Model.version, settings)
    rt.store.put_many(1, key, [StoredDetections(t, None, None, "LS answered 502") for t in failed])
    ranking = jobs.queue_ranking_key(settings, TrainedModel(), CONFIG_XML)
    version = queue_writes.rewrite_queue(
        rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, ranking), None, np.arange(1, 6), lambda *a, **k: None, lambda n: None
    )["model_version"]
    project = {"label_config": CONFIG_XML, "model_version": version, "sampling": "Uncertainty sampling"}
    ls.project = lambda project_id: SimpleNamespace(**project)
    ls.unlabeled_tasks = lambda project_id, after_id=None: iter([TaskRef(t, {}) for t in range(1, 6) if after_id is None or t > after_id])
    return rt, ls, key, project


def test_a_task_whose_image_failed_is_tried_again_hourly_and_its_recovery_rewrites_the_queue(tmp_path, monkeypatch):
    """A passing failure left a task last (no usefulness); incremental syncs never list it again. It is predicted
    again at most every RETRY_UNUSABLE_SECONDS, and once its image can be used the queue is rewritten with it."""
    rt, ls, key, _ = served_queue_of_five(tmp_path, failed=(5,))
    assert rt.store.served_unusable(1, 10) == [5]
    asked = []
    ls.unlabeled_tasks_among = lambda project, ids: asked.append(list(ids)) or iter([TaskRef(t, {}) for t in ids])
    readable = {"now": False}

    def predict_missing(rt_, project, config, tasks, progress, adapter):
        if readable["now"]:
            found = Detections([[0, 0, 9, 9]], [[0.5, 0.0]], (64, 64), embedding=np.ones(8, dtype=np.float32) / np.sqrt(8))
            rt_.store.put_many(project, key, [StoredDetections(t.id, found, t.id, None) for t in tasks])
        return {"predicted": len(tasks) if readable["now"] else 0}

    monkeypatch.setattr(queue_writes, "predict_missing", predict_missing)
    assert jobs._sync(rt, 1, lambda *a, **k: None)["status"] == "unchanged" and asked == [[5]], "tried, still failing"
    readable["now"] = True
    assert jobs._sync(rt, 1, lambda *a, **k: None)["status"] == "unchanged" and asked == [[5]], "not again within the hour"
    rt.take_flag("retry-unusable:1")  # the hour has passed
    result = jobs._sync(rt, 1, lambda *a, **k: None)
    assert result["status"] == "synced" and asked == [[5], [5]] and result["usefulness"][5] is not None
    assert rt.store.served_unusable(1, 10) == []


def test_a_recovery_whose_rewrite_failed_is_still_owed(tmp_path):
    """The retry stored usable detections for a task the queue holds as unusable, then the rewrite failed: the next
    sync rewrites at once, within the hour, and asks LS for nothing again."""
    rt, ls, key, _ = served_queue_of_five(tmp_path, failed=(5,))
    rt.claim_flag("retry-unusable:1", "1", 3600)  # tried within the hour
    embedded_pool(rt, rt.settings, [5])  # what that try stored before the rewrite it asked for failed
    ls.unlabeled_tasks_among = lambda project, ids: pytest.fail("nothing to fetch again")
    result = jobs._sync(rt, 1, lambda *a, **k: None)
    assert result["status"] == "synced" and result["usefulness"][5] is not None and rt.store.served_unusable(1, 10) == []


@pytest.mark.parametrize("first", ["fails", "hands its work to a fan-out"])
def test_a_full_sync_that_did_not_rewrite_is_owed_to_the_next(tmp_path, monkeypatch, first):
    """`ale sync --full` whose run failed, or only queued prediction chunks: the next sync (the retry, or the one
    that follows the chunks) rewrites."""
    rt = Runtime(Settings(model_dir=tmp_path))
    runs = []

    def fake_sync(runtime, project, progress, full=False, **options):
        runs.append(full)
        if len(runs) == 1 and first == "fails":
            raise RuntimeError("LS is down")
        if len(runs) == 1:
            return {"status": "predicting", "follow_up": "job-2", "stale_versions": [], "phases": {}}
        return {"status": "synced", "stale_versions": [], "phases": {}}

    monkeypatch.setattr(jobs, "_sync", fake_sync)
    if first == "fails":
        with pytest.raises(RuntimeError, match="LS is down"):
            jobs.sync_priorities(3, runtime=rt, full=True)
    else:
        jobs.sync_priorities(3, runtime=rt, full=True)
    jobs.sync_priorities(3, runtime=rt, fanout=False)
    assert runs == [True, True]


@pytest.mark.parametrize("policy", ["random+cost", "random+diverse"])
def test_random_under_a_suffix_gives_each_add_draws_of_its_own_too(tmp_path, policy):
    settings = Settings(model_dir=tmp_path, policy=policy)
    rt = Runtime(settings, ls=IncrementalLS([]))
    embedded_pool(rt, settings, range(1, 15))
    key = raw_output_key(Model.version, settings)
    version = queue_writes.rewrite_queue(
        rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.arange(1, 11), lambda *a, **k: None, lambda n: None
    )["model_version"]
    values = [
        queue_writes.add_new_tasks(rt, 1, CONFIG, TrainedModel(), version, [TaskRef(t, {})], lambda *a, **k: None, lambda n: None)["usefulness"][t]
        for t in (11, 12, 13)
    ]
    assert len(set(values)) == 3, values


def test_a_full_sync_predicts_again_the_tasks_whose_image_changed(tmp_path, monkeypatch):
    """Rows are of the image a task pointed at: a task whose data now names another image is predicted again."""
    from label_studio_ale.detection_rows import image_reference

    rt, ls, key, _ = served_queue_of_five(tmp_path)
    data = {t: {"image": f"/data/upload/1/{t}.png"} for t in range(1, 6)}
    rows = rt.store.get_many(1, key, list(data))
    rt.store.put_many(1, key, [StoredDetections(t, row.detections, row.image_hash, None, image_reference(data[t], "image")) for t, row in rows.items()])
    data[3] = {"image": "/data/upload/1/replaced.png"}
    ls.unlabeled_tasks = lambda project_id, after_id=None: iter([TaskRef(t, data[t]) for t in range(1, 6)])
    predicted = []
    monkeypatch.setattr(jobs, "predict_missing", lambda rt_, project, config, tasks, *a: predicted.append([t.id for t in tasks]) or {"predicted": 0})
    jobs._sync(rt, 1, lambda *a, **k: None, full=True)
    assert predicted == [[3]]
