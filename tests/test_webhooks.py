"""POST /webhook: the ids an event names are checked before anything is queued or changed."""

import pytest

from label_studio_ale import app as app_module
from label_studio_ale.app import create_app
from label_studio_ale.settings import Settings
from tests.test_app import FixedAdapter

#: Ids JSON can hold that no Label Studio record has: a bool (Python's True is 1), zero, negative, past SQLite's integers.
NO_IDS = [True, False, 0, -5, 10**20, 2**63]


class Recording:
    """A job queue that records what is enqueued."""

    def __init__(self):
        self.enqueued = []

    def enqueue(self, kind, func, *args, job_id=None, **options):
        self.enqueued.append((kind, func.__name__, args))
        return job_id or f"job-{len(self.enqueued)}"

    def info(self, job_id):
        return None


@pytest.fixture
def queue(monkeypatch):
    recording = Recording()
    monkeypatch.setattr(app_module, "make_job_queue", lambda runtime: recording)
    return recording


def make_client(tmp_path, **overrides):
    return create_app(Settings(model_dir=tmp_path, **overrides), adapter_factory=FixedAdapter).test_client()


@pytest.mark.parametrize("project", NO_IDS)
def test_start_training_of_a_project_id_no_project_has_is_a_400_and_queues_nothing(tmp_path, queue, project):
    response = make_client(tmp_path).post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert response.status_code == 400
    assert "project.id must be a positive whole number" in response.get_json()["error"]
    assert queue.enqueued == [] and not (tmp_path / "locks").exists()


def test_start_training_of_the_largest_id_is_queued(tmp_path, queue):
    response = make_client(tmp_path).post("/webhook", json={"action": "START_TRAINING", "project": {"id": 2**63 - 1}})
    assert response.status_code == 201 and queue.enqueued == [("train", "train_project", (2**63 - 1,))]


@pytest.mark.parametrize("action, key", [("TASKS_DELETED", "tasks"), ("ANNOTATIONS_DELETED", "annotations")])
@pytest.mark.parametrize("bad", NO_IDS)
def test_a_deletion_listing_an_id_no_record_has_is_a_400_naming_it_and_forgets_nothing(tmp_path, action, key, bad):
    from label_studio_ale.annotation_edits import EditCounts, EditRecord

    client = make_client(tmp_path)
    store = client.application.extensions["ale"]["runtime"].store
    store.put_edits(5, [EditRecord(1, 1, "ale:v1:t", EditCounts(accepted=1), None)])
    response = client.post("/webhook", json={"action": action, "project": {"id": 5}, key: [{"id": 1}, {"id": bad}]})
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"{key}[1].id must be a positive whole number")
    assert len(store.edits(5)) == 1


@pytest.mark.parametrize(
    "event, field",
    [
        ({"action": "ANNOTATION_CREATED", "task": {"id": True}}, "task.id"),
        ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "task": -1}}, "annotation.task"),
        ({"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 1, "task": 2}, {"id": 2, "task": 10**20}]}, "annotation[1].task"),
    ],
)
def test_an_annotation_event_of_a_task_id_no_task_has_is_a_400_and_queues_nothing(tmp_path, queue, event, field):
    response = make_client(tmp_path, auto_train_after=1).post("/webhook", json=event | {"project": {"id": 5}})
    assert response.status_code == 400 and response.get_json()["error"].startswith(f"{field} must be a positive whole number")
    assert queue.enqueued == []


def test_an_annotation_event_records_its_task(tmp_path, queue):
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 7}, "annotation": {"id": 1, "task": 7}}
    assert make_client(tmp_path).post("/webhook", json=event).get_json()["status"] == "recording"
    assert queue.enqueued == [("sync", "record_annotations", (5, 7))]


def test_a_start_training_refused_for_a_held_lock_says_when_to_retry(tmp_path, queue, monkeypatch):
    """The 503 of a press that cannot take the project's queueing lock carries Retry-After, as the JSON error says."""
    from label_studio_ale import webhooks

    monkeypatch.setattr(webhooks, "TRAIN_ENQUEUE_WAIT", 0.2)
    client = make_client(tmp_path)
    runtime = client.application.extensions["ale"]["runtime"]
    with runtime.lock("train-enqueue:7") as held:
        assert held
        response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.content_type == "application/json" and queue.enqueued == []
