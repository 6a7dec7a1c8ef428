"""Stored detections are of the image a task points at, under a model of the same classes: anything else is predicted again."""

import numpy as np

import label_studio_ale.pool as pool
from label_studio_ale.detection_rows import image_reference
from label_studio_ale.detection_store import StoredDetections
from label_studio_ale.detections import Detections
from label_studio_ale.ls_client import TaskRef
from label_studio_ale.ls_format import parse_label_config
from label_studio_ale.runtime import Runtime
from label_studio_ale.serving import raw_output_key
from label_studio_ale.settings import Settings
from tests.test_predictor_chunks import Files, png


def config(field: str, labels=("bird",)):
    tags = "".join(f'<Label value="{label}"/>' for label in labels)
    return parse_label_config(
        f'<View><Image name="image" value="${field}"/><RectangleLabels name="label" toName="image">{tags}</RectangleLabels></View>'
    )


class Model:
    """A model of `classes` that finds one box per image and counts the images it saw."""

    def __init__(self, classes=("bird",), version="m-1"):
        self.classes, self.version, self.seen = tuple(classes), version, 0

    def predict(self, images):
        self.seen += len(images)
        probs = np.full((1, len(self.classes)), 0.9)
        return [Detections([[1, 1, 9, 9]], probs, image.size) for image in images]


FILES = {"/data/upload/1/a.png": png(100, 50), "/data/upload/1/b.png": png(300, 300)}


def runtime(monkeypatch, tmp_path):
    monkeypatch.setattr(pool, "MediaFetcher", lambda settings, ls: Files(FILES))
    return Runtime(Settings(model_dir=tmp_path), ls=object())


def quiet(*args, **kwargs):
    pass


def test_a_task_whose_image_changed_is_predicted_again_and_its_new_size_stored(monkeypatch, tmp_path):
    rt, model = runtime(monkeypatch, tmp_path), Model()
    key = raw_output_key(model.version, rt.settings)
    before = [TaskRef(7, {"image": "/data/upload/1/a.png", "photo": "/data/upload/1/b.png"})]
    assert pool.predict_missing(rt, 5, config("image"), before, quiet, model)["predicted"] == 1
    assert pool.predict_missing(rt, 5, config("image"), before, quiet, model)["predicted"] == 0, "the same image: kept"
    assert rt.store.get_many(5, key, [7])[7].detections.image_size == (100, 50)

    # the label config now reads another field of the same data
    assert pool.predict_missing(rt, 5, config("photo"), before, quiet, model)["predicted"] == 1
    assert rt.store.get_many(5, key, [7])[7].detections.image_size == (300, 300)

    # the task's data was replaced through the API: another image under the same field
    replaced = [TaskRef(7, {"photo": "/data/upload/1/a.png"})]
    assert pool.predict_missing(rt, 5, config("photo"), replaced, quiet, model)["predicted"] == 1
    stored = rt.store.get_many(5, key, [7])[7]
    assert stored.detections.image_size == (100, 50) and stored.image_ref == image_reference(replaced[0].data, "photo")
    assert model.seen == 3


def test_a_row_stored_before_image_references_were_recorded_is_kept_until_the_next_model(monkeypatch, tmp_path):
    """Rows of the previous release carry no reference: taken as the task's image, not predicted again on upgrade."""
    rt, model = runtime(monkeypatch, tmp_path), Model()
    key = raw_output_key(model.version, rt.settings)
    rt.store.put_many(5, key, [StoredDetections(7, Detections([[1, 1, 9, 9]], [[0.9]], (100, 50)), 0, None)])
    task = TaskRef(7, {"image": "/data/upload/1/a.png"})
    assert pool.predict_missing(rt, 5, config("image"), [task], quiet, model)["predicted"] == 0 and model.seen == 0
    assert pool.predict_missing(rt, 5, config("image"), [task], quiet, Model(version="m-2"))["predicted"] == 1


def test_a_row_of_another_class_count_is_predicted_again_and_never_ranked(monkeypatch, tmp_path):
    """A model rebuilt with more classes under one name: its old rows are neither reused nor a crash."""
    rt, model = runtime(monkeypatch, tmp_path), Model(("bird", "nest", "egg"))
    key = raw_output_key(model.version, rt.settings)
    task = TaskRef(7, {"image": "/data/upload/1/a.png"})
    two = Detections([[1, 1, 9, 9]], [[0.9, 0.1]], (100, 50))
    rt.store.put_many(5, key, [StoredDetections(7, two, 0, None, image_reference(task.data, "image"))])
    three_labels = config("image", ("bird", "nest", "egg"))

    ranked = pool.rank_pool(rt, 5, [7], model, three_labels)
    assert ranked["usable"].tolist() == [False], "a row that does not fit the model is unusable, not a ValueError"

    assert pool.predict_missing(rt, 5, three_labels, [task], quiet, model)["predicted"] == 1
    assert rt.store.get_many(5, key, [7])[7].detections.num_classes == 3
    assert pool.rank_pool(rt, 5, [7], model, three_labels)["usable"].tolist() == [True]


def test_is_stored_compares_the_reference_of_the_field_the_config_names():
    task = TaskRef(3, {"image": "/a.png", "photo": "/b.png"})
    known = {3: image_reference(task.data, "image")}
    assert pool.is_stored(known, task, config("image"))
    assert not pool.is_stored(known, task, config("photo"))
    assert pool.is_stored({3: None}, task, config("image")), "a row of the previous release"
    assert not pool.is_stored({}, task, config("image"))
    assert image_reference({"image": "/a.png"}, "image") != image_reference({"image": "/a.png?v=2"}, "image")
