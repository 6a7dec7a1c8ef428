"""The admin page's queue head and thumbnails, when the served queue is of another version than the one promoted since,
and the settings it shows."""

import io
from types import SimpleNamespace

from PIL import Image

from label_studio_ale.admin import queue_head
from label_studio_ale.app import create_app
from label_studio_ale.detection_store import ServedQueue, SqliteDetectionStore, StoredDetections
from label_studio_ale.detections import Detections
from label_studio_ale.model_store import ModelStore
from label_studio_ale.serving import shown_classes
from label_studio_ale.settings import Settings

#: The label config after "egg" was added and "nest" dropped.
CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="bird"/><Label value="egg"/></RectangleLabels></View>'
)


def png(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


class Model:
    def __init__(self, classes, version):
        self.classes, self.version = tuple(classes), version

    def predict(self, images):  # pragma: no cover - the page reads the store, it predicts nothing
        raise AssertionError("the admin page must not run the model")


def two_class_row(task: int) -> StoredDetections:
    """A confident bird and a confident nest, as a two-class version stored them."""
    return StoredDetections(task, Detections([[1, 1, 9, 9], [20, 20, 30, 30]], [[0.9, 0.0], [0.0, 0.8]], (32, 32)), 0, None)


def test_a_mask_of_another_class_count_counts_every_class_instead_of_failing(tmp_path):
    store = SqliteDetectionStore(tmp_path / "d.sqlite")
    store.put_many(1, "v0002", [two_class_row(7)])
    store.replace_served(1, ServedQueue("ale:v0002:t", "v0002", "r"), [7], [0.5], [0.5])
    runtime = SimpleNamespace(store=store, settings=Settings())
    (row,) = queue_head(runtime, 1, shown_classes(("bird", "nest", "egg")))
    assert row["task"] == 7 and row["boxes"] == 2


def test_the_page_and_thumbnails_of_a_queue_ranked_by_the_version_before_a_promotion_with_more_classes(tmp_path, monkeypatch):
    import label_studio_ale.runtime as runtime_module

    models = tmp_path / "models"
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    versions = ModelStore(models, 7)
    before = versions.add(weights, ["bird", "nest"], {"map50": 0.5}, {})
    after = versions.add(weights, ["bird", "nest", "egg"], {"map50": 0.6}, {})
    versions.promote(after.name)
    monkeypatch.setattr(runtime_module, "load_adapter", lambda settings: Model(("bird", "nest", "egg"), "loaded"))

    store_url = f"sqlite:///{tmp_path / 'd.sqlite'}"
    store = SqliteDetectionStore(tmp_path / "d.sqlite")
    store.put_many(7, before.name, [two_class_row(5)])
    store.replace_served(7, ServedQueue(f"ale:{before.name}:t", before.name, "r"), [5], [0.5], [0.5])

    image = png(32, 32)
    ls = SimpleNamespace(
        project=lambda project: SimpleNamespace(label_config=CONFIG),
        sdk=SimpleNamespace(tasks=SimpleNamespace(get=lambda id: SimpleNamespace(project=7, data={"image": "/data/upload/7/a.png"}))),
        download=lambda path, max_bytes, timeout: image,
    )
    settings = Settings(model_dir=models, detection_store_url=store_url, label_studio_url="http://admin:LsPr0xyPass@ls.example.org:8080")
    client = create_app(settings, adapter_factory=lambda: Model(("bird", "nest"), "configured-1"), ls_client=ls).test_client()

    page = client.get("/ui/projects/7")
    text = page.get_data(as_text=True)
    assert page.status_code == 200, text[:500]
    # counted with the classes of the version that ranked the queue: the nest has no label any more, the bird is shown
    assert '<figure data-task="5">' in text and '<span class="boxes">1</span> boxes' in text
    assert "LsPr0xyPass" not in text and '<td class="l">LABEL_STUDIO_URL</td><td class="l">http://admin:***@ls.example.org:8080</td>' in text

    thumbnail = client.get("/ui/projects/7/tasks/5/thumbnail.jpg")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"


def test_rows_of_a_version_no_longer_kept_are_counted_over_every_class(tmp_path, monkeypatch):
    """The queue's version was pruned from the model store: its classes are unknown, and the page still renders."""
    store = SqliteDetectionStore(tmp_path / "d.sqlite")
    store.put_many(7, "v0001", [two_class_row(5)])
    store.replace_served(7, ServedQueue("ale:v0001:t", "v0001", "r"), [5], [0.5], [0.5])
    ls = SimpleNamespace(project=lambda project: SimpleNamespace(label_config=CONFIG))
    settings = Settings(model_dir=tmp_path / "models", detection_store_url=f"sqlite:///{tmp_path / 'd.sqlite'}")
    client = create_app(settings, adapter_factory=lambda: Model(("bird", "nest", "egg"), "configured-1"), ls_client=ls).test_client()
    page = client.get("/ui/projects/7")
    assert page.status_code == 200 and '<span class="boxes">2</span> boxes' in page.get_data(as_text=True)


def test_the_pages_render_while_redis_is_down_and_say_so_without_its_password(tmp_path):
    """Redis on a port nothing listens on: the versions and settings are shown, the jobs and connected projects are not."""
    (tmp_path / "models" / "4").mkdir(parents=True)
    settings = Settings(model_dir=tmp_path / "models", redis_url="redis://:s3cretPw@127.0.0.1:1/0")
    client = create_app(settings, adapter_factory=lambda: Model(("bird",), "configured-1")).test_client()
    note = "Redis at 127.0.0.1:1/0 is unreachable: jobs and connected projects are not shown"
    for url in ("/ui", "/ui/projects/4"):
        page = client.get(url)
        text = page.get_data(as_text=True)
        assert page.status_code == 200 and page.mimetype == "text/html", text[:300]
        assert note in text and "s3cretPw" not in text
    assert 'href="/ui/projects/4"' in client.get("/ui").get_data(as_text=True)
    assert "No trained version yet" in client.get("/ui/projects/4").get_data(as_text=True)


def test_a_project_or_task_id_past_any_database_id_is_a_404(tmp_path):
    client = create_app(Settings(model_dir=tmp_path), adapter_factory=lambda: Model(("bird",), "configured-1")).test_client()
    for url in ("/ui/projects/" + "9" * 25, f"/ui/projects/{2**63}", f"/ui/projects/1/tasks/{2**63}/thumbnail.jpg"):
        response = client.get(url)
        assert response.status_code == 404 and response.content_type == "application/json", url
    assert client.get(f"/ui/projects/{2**63 - 1}").status_code == 200
