"""Start Training across label config changes: what a fine-tune starts from, what it is compared with, what is served.

The trainer is stubbed (its fine-tune writes b"new"; the served model's weights are b"old"), and so is the
evaluation, except in the evaluation's own test, which runs on a stub detector.
"""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from label_studio_ale.ls_format import parse_label_config
from label_studio_ale.model_store import ModelStore
from label_studio_ale.settings import Settings
from label_studio_ale.training import train_version
from tests.test_training import _bird_and_nest_set, _metrics
from tests.test_training_set import _sample

CALLS: list = []


def _config(labels: str):
    return parse_label_config(f'<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">{labels}</RectangleLabels></View>')


class Stub:
    fresh_model = "stub.yaml"
    #: what base_classes says of a weights file, by its bytes
    known = {b"old": ["bird", "nest"]}

    @classmethod
    def base_classes(cls, weights):
        path = Path(weights)
        return cls.known.get(path.read_bytes()) if path.is_file() else None

    @classmethod
    def grow(cls, weights, classes, out, origin=None, report=None):
        CALLS.append(("grow", str(weights), list(classes), origin))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(Path(weights).read_bytes())
        return out

    @classmethod
    def fine_tune(cls, settings, weights, data_yaml, work, *, seed=0, on_epoch=None):
        CALLS.append(("fine_tune", str(weights)))
        Path(work).mkdir(parents=True, exist_ok=True)
        (Path(work) / "new.pt").write_bytes(b"new")
        return Path(work) / "new.pt"


@pytest.fixture
def stub(monkeypatch, tmp_path):
    """Settings of the stub trainer; `figures[b"old" or b"new"]` are the metrics each model gets (every evaluation is in CALLS)."""
    from label_studio_ale import adapters, training

    CALLS.clear()
    figures = {b"old": _metrics(0.9), b"new": _metrics(0.1)}

    def evaluate(settings, weights, dataset, classes, split=None, columns=None):
        content = Path(weights).read_bytes()
        CALLS.append(("evaluate", content.decode(), columns))
        return figures[content]

    monkeypatch.setattr(adapters, "available_adapters", lambda: {"stub": SimpleNamespace(load=lambda: Stub)})
    monkeypatch.setattr(training, "evaluate_weights", evaluate)
    return SimpleNamespace(settings=Settings(adapter="stub", model_dir=str(tmp_path / "models")), figures=figures)


def _served(tmp_path, settings, classes):
    store = ModelStore(settings.model_dir, 1)
    weights = tmp_path / "old.pt"
    weights.write_bytes(b"old")
    store.promote(store.add(weights, classes, _metrics(0.9), {"trained_labels": classes}).name)
    return store


@pytest.mark.parametrize(
    "labels, rows, columns",
    [
        ('<Label value="nest"/><Label value="bird"/>', {"nest": "nest", "bird": "bird"}, {"bird": "bird", "nest": "nest"}),
        ('<Label value="bird" alias="B"/><Label value="nest"/>', {"B": "bird", "nest": "nest"}, {"bird": "B", "nest": "nest"}),
        # every label given an alias: still the served version's classes, not a first training from the fresh model
        ('<Label value="bird" alias="BIRD"/><Label value="nest" alias="NEST"/>', {"BIRD": "bird", "NEST": "nest"}, {"bird": "BIRD", "nest": "NEST"}),
    ],
    ids=["reordered", "an-alias-added", "every-label-aliased"],
)
def test_labels_reordered_or_aliased_continue_the_served_version_and_must_not_do_worse(stub, tmp_path, labels, rows, columns):
    config = _config(labels)
    classes = list(config.labels)
    store = _served(tmp_path, stub.settings, ["bird", "nest"])
    data = _bird_and_nest_set(tmp_path, "ds", nests=True)
    worse = train_version(stub.settings, store, data, classes, tmp_path / "work", aliases=config.aliases, names=config.names)
    served = str(store.get("v0001").weights)
    # each label starts from its own class's row; the served model is evaluated with its columns under the labels
    assert CALLS[:2] == [("grow", served, classes, rows), ("fine_tune", str(tmp_path / "work" / "grown"))]
    assert ("evaluate", "old", columns) in CALLS
    assert not worse.promoted and store.current().name == "v0001"
    assert worse.reason == (
        "mAP50 0.100 < v0001's 0.900 on the same 12 validation images (30 boxes): v0001 keeps serving; "
        "`ale models --project 1 --promote v0002` serves it anyway"
    )
    assert worse.version.manifest["promotion"] == {
        "promoted": False, "reason": worse.reason, "compared_with": "v0001",
        "baseline": {"map": 0.45, "map50": 0.9, "images": 12, "boxes": 30},
    }  # fmt: skip
    assert worse.version.manifest["base"].startswith("v0001, head's rows moved to the labels")

    stub.figures[b"new"] = _metrics(0.95)
    better = train_version(stub.settings, store, data, classes, tmp_path / "work2", aliases=config.aliases, names=config.names)
    assert better.promoted and store.current().name == "v0003"


def test_an_added_label_is_compared_on_the_labels_both_versions_know(stub, tmp_path):
    """The new version must not find the birds and nests worse than the served one does; it is kept, with the
    command that serves it, when it does."""
    store = _served(tmp_path, stub.settings, ["bird", "nest"])
    data = _bird_and_nest_set(tmp_path, "ds", nests=True)
    classes = ["bird", "nest", "egg"]
    trained = train_version(stub.settings, store, data, classes, tmp_path / "work")
    assert CALLS[0] == ("grow", str(store.get("v0001").weights), classes, {"bird": "bird", "nest": "nest"})
    assert ("evaluate", "old", {"bird": "bird", "nest": "nest"}) in CALLS
    assert ("evaluate", "new", {"bird": "bird", "nest": "nest"}) in CALLS, "the new version on the labels both know"
    assert not trained.promoted and store.current().name == "v0001"
    assert trained.reason == (
        "mAP50 0.100 < v0001's 0.900 on the same 12 validation images (30 boxes) of the labels both know (bird, nest): "
        "v0001 keeps serving; `ale models --project 1 --promote v0002` serves it anyway, with the labels it adds (egg)"
    )
    assert trained.version.manifest["promotion"]["labels_compared"] == ["bird", "nest"]
    assert trained.version.manifest["base"] == "v0001, head grown to 3 classes"

    stub.figures[b"new"] = _metrics(0.9)
    again = train_version(stub.settings, store, data, classes, tmp_path / "work2")
    assert again.promoted and store.current().name == "v0003"
    assert again.reason.endswith("of the labels both know (bird, nest); labels added: egg")


def test_a_first_training_starts_from_a_trained_model_weights_and_must_beat_it(stub, tmp_path):
    """BASE_MODEL unset: the checkpoint that serves the project until its first version is where that version
    starts, not a model from a yaml, and the version replaces it only if not worse."""
    checkpoint = tmp_path / "birds.pt"
    checkpoint.write_bytes(b"old")
    settings = stub.settings.replace(model_weights=str(checkpoint))
    store = ModelStore(settings.model_dir, 1)
    data = _bird_and_nest_set(tmp_path, "ds", nests=True)
    trained = train_version(settings, store, data, ["bird", "nest"], tmp_path / "work")
    assert CALLS[0] == ("fine_tune", str(checkpoint))
    assert ("evaluate", "old", None) in CALLS
    assert not trained.promoted and store.current() is None, "MODEL_WEIGHTS keeps serving"
    assert trained.reason.startswith(f"mAP50 0.100 < MODEL_WEIGHTS={checkpoint}'s 0.900 on the same 12 validation images")
    assert trained.version.manifest["base"] == str(checkpoint)

    # a checkpoint known by other names is grown to the labels, each from the row of its class
    kittiwake = _config('<Label value="Kittiwake" predicted_values="bird"/><Label value="nest"/>')
    CALLS.clear()
    train_version(settings, store, data, ["Kittiwake", "nest"], tmp_path / "work2", aliases=kittiwake.aliases, names=kittiwake.names)
    assert CALLS[0] == ("grow", str(checkpoint), ["Kittiwake", "nest"], {"Kittiwake": "bird", "nest": "nest"})
    assert ("evaluate", "old", {"bird": "Kittiwake", "nest": "nest"}) in CALLS

    # BASE_MODEL set: the first version starts from it and is promoted as a first one
    base = tmp_path / "base.pt"
    base.write_bytes(b"base")
    CALLS.clear()
    first = train_version(settings.replace(base_model=str(base)), store, data, ["bird", "nest"], tmp_path / "work3")
    assert CALLS[0] == ("fine_tune", str(base)) and first.promoted and first.reason == "the project's first version"


def test_an_untrained_model_weights_leaves_the_first_training_to_the_fresh_model(stub, tmp_path):
    store = ModelStore(stub.settings.model_dir, 1)
    trained = train_version(stub.settings, store, _bird_and_nest_set(tmp_path, "ds", nests=True), ["bird", "nest"], tmp_path / "work")
    assert CALLS[0] == ("fine_tune", "stub.yaml") and trained.promoted and trained.reason == "the project's first version"


def test_versions_that_cannot_be_compared_are_stored_not_served(stub, tmp_path):
    """Validation images without a box: 0.000 against 0.000 would pass whatever each version predicts."""
    store = _served(tmp_path, stub.settings, ["bird", "nest"])
    stub.figures.update({b"old": _metrics(0.0, boxes=0), b"new": _metrics(0.0, boxes=0)})
    trained = train_version(stub.settings, store, _bird_and_nest_set(tmp_path, "ds", nests=True), ["bird", "nest"], tmp_path / "work")
    assert not trained.promoted and store.current().name == "v0001"
    assert trained.reason == (
        "12 validation images (0 boxes): without a box, mAP cannot compare the versions, so v0001 keeps serving; "
        "`ale models --project 1 --promote v0002` serves it anyway"
    )


def test_a_version_is_recorded_as_promoted_only_once_it_is_served(stub, tmp_path, monkeypatch):
    """A training killed between storing the version and switching the pointer must not leave a record saying it is served."""
    store = ModelStore(stub.settings.model_dir, 1)
    data = _bird_and_nest_set(tmp_path, "ds", nests=True)

    def killed(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "promote", killed)
    with pytest.raises(KeyboardInterrupt):
        train_version(stub.settings, store, data, ["bird", "nest"], tmp_path / "work")
    record = store.get("v0001").manifest["promotion"]
    assert record["promoted"] is False and record["pending"] is True
    assert record["reason"] == (
        "to be served (the project's first version); a record still saying so is of a training stopped before serving it: "
        "`ale models --project 1 --promote v0001` serves it"
    )
    store = ModelStore(stub.settings.model_dir, 1)  # promoting as usual
    trained = train_version(stub.settings, store, data, ["bird", "nest"], tmp_path / "work2")
    assert trained.promoted and store.current().name == "v0002"
    assert trained.version.manifest["promotion"] == {"promoted": True, "reason": "the project's first version", "compared_with": None, "baseline": None}


class LS:
    def project(self, project):
        return SimpleNamespace(label_config=_CONFIG)

    def annotated_tasks(self, project):
        return iter(())


_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
           '<Label value="bird"/><Label value="nest"/></RectangleLabels></View>')


def test_another_trainings_work_folder_is_left_while_it_is_in_use(stub, tmp_path):
    """Its lock lapsed (Redis restarted) but it still runs: only a stopped training's files are removed."""
    from label_studio_ale.errors import TrainingError
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.training import train_project

    store = ModelStore(stub.settings.model_dir, 7)
    (store.dir / ".work-1").mkdir(parents=True)
    (store.dir / ".work-0").mkdir()
    hour_ago = time.time() - 3600
    os.utime(store.dir / ".work-0", (hour_ago, hour_ago))
    with pytest.raises(TrainingError, match="project 7 has no annotations yet"):
        train_project(7, runtime=Runtime(stub.settings, ls=LS()), then_sync=False)
    assert sorted(p.name for p in store.dir.iterdir() if p.name.startswith(".work-")) == [".work-1"]


def _samples(tmp_path, boxes: bool):
    box, label = ([[5, 5, 30, 30]], [0]) if boxes else ([], [])
    return [_sample(i, tmp_path, box, label) for i in range(1, 41)]


def test_the_training_reports_what_it_did_not_train_on(stub, tmp_path, monkeypatch):
    from label_studio_ale import training
    from label_studio_ale.errors import TrainingError
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.training import train_project

    skipped = {"skipped_images": 0, "skipped_boxes": 0, "ignored_regions": {"from_name tag": 40}, "ground_truth_tasks": 2}
    monkeypatch.setattr(training, "annotated_samples", lambda rt, project, config, classes: (_samples(tmp_path, False), skipped))
    rt = Runtime(stub.settings, ls=LS())
    with pytest.raises(TrainingError, match=r"^project 7 has no box in its \d+ training images \(regions not trained on: from_name tag: 40\): draw"):
        train_project(7, runtime=rt, then_sync=False)
    assert ModelStore(stub.settings.model_dir, 7).versions() == []

    monkeypatch.setattr(training, "annotated_samples", lambda rt, project, config, classes: (_samples(tmp_path, True), skipped))
    result = train_project(7, runtime=rt, then_sync=False)
    assert result["ignored_regions"] == {"from_name tag": 40} and result["ground_truth_tasks"] == 2
    manifest = ModelStore(stub.settings.model_dir, 7).get(result["version"]).manifest
    assert manifest["ignored_regions"] == {"from_name tag": 40} and manifest["ground_truth_tasks"] == 2


class Oracle:
    """A detector of bird and nest that finds _bird_and_nest_set's two objects on every image."""

    classes = ("bird", "nest")
    version = "oracle"

    @classmethod
    def from_settings(cls, settings):
        return cls()

    def predict(self, images):
        from label_studio_ale.detections import Detections

        return [Detections(np.array([[5, 5, 30, 30], [40, 10, 70, 40]]), np.array([[0.9, 0.05], [0.05, 0.8]]), image.size) for image in images]


def test_a_model_is_evaluated_under_the_labels_its_classes_mean(tmp_path, monkeypatch):
    """Labels renamed and reordered since a version was trained: its columns go under the labels they mean now;
    a label it has no class for leaves the evaluation (its boxes included), so the comparison is like with like."""
    from label_studio_ale import adapters
    from label_studio_ale.training import evaluate_weights
    from label_studio_ale.training_set import write_training_set

    monkeypatch.setattr(adapters, "available_adapters", lambda: {"oracle": SimpleNamespace(load=lambda: Oracle)})
    settings = Settings(adapter="oracle")
    (tmp_path / "imgs").mkdir()
    # labels now: nest, B (bird's alias), egg; the egg box is one the model cannot know
    samples = [_sample(i, tmp_path / "imgs", [[40, 10, 70, 40], [5, 5, 30, 30], [80, 20, 95, 45]], [0, 1, 2]) for i in range(1, 41)]
    data, _ = write_training_set(tmp_path / "ds", samples, ["nest", "B", "egg"])
    classes = ["nest", "B", "egg"]
    mapped = evaluate_weights(settings, tmp_path / "w.pt", data, classes, columns={"bird": "B", "nest": "nest"})
    assert mapped["map50"] == pytest.approx(1.0) and sorted(mapped["per_class"]) == ["B", "nest"]
    assert mapped["boxes"] == 2 * mapped["images"], "the egg boxes are not counted against it"
    only_nest = evaluate_weights(settings, tmp_path / "w.pt", data, classes, columns={"nest": "nest"})
    assert only_nest["map50"] == pytest.approx(1.0) and list(only_nest["per_class"]) == ["nest"]
    swapped = evaluate_weights(settings, tmp_path / "w.pt", data, classes, columns={"bird": "nest", "nest": "B"})
    assert swapped["map50"] == pytest.approx(0.0)


@pytest.mark.slow
def test_a_trained_version_scores_the_same_under_reordered_labels_as_its_grown_head_does(trained_weights, tmp_path):
    """The baseline of a reorder is the served model itself, its columns under the labels: the same figures as on
    the labels in its own order, and as the head grown for the new order (what the fine-tune starts from)."""
    from label_studio_ale.synthetic import make_scene
    from label_studio_ale.training import evaluate_weights
    from label_studio_ale.training_set import TrainingSample, write_training_set
    from label_studio_ale_plugins.yolov5 import grow_head
    from tests.support.models import IMAGE_SIZE

    scenes = [make_scene(40_000 + i) for i in range(40)]
    for i, scene in enumerate(scenes, start=1):
        scene.image.save(tmp_path / f"{i}.png")
    own = [TrainingSample(i, tmp_path / f"{i}.png", s.xyxy, s.labels) for i, s in enumerate(scenes, start=1)]
    swapped = [TrainingSample(i, tmp_path / f"{i}.png", s.xyxy, 1 - s.labels) for i, s in enumerate(scenes, start=1)]
    as_trained, _ = write_training_set(tmp_path / "own", own, ["bird", "nest"])
    reordered, _ = write_training_set(tmp_path / "swapped", swapped, ["nest", "bird"])
    settings = Settings(image_size=IMAGE_SIZE)
    before = evaluate_weights(settings, trained_weights, as_trained, ["bird", "nest"])
    mapped = evaluate_weights(settings, trained_weights, reordered, ["nest", "bird"], columns={"bird": "bird", "nest": "nest"})
    grown = grow_head(trained_weights, ["nest", "bird"], tmp_path / "grown.pt", {"nest": "nest", "bird": "bird"})
    regrown = evaluate_weights(settings, grown, reordered, ["nest", "bird"])
    assert before["map50"] > 0.5
    for figures in (mapped, regrown):
        assert figures["map50"] == pytest.approx(before["map50"], abs=1e-6)
        assert figures["per_class"]["bird"]["map50"] == pytest.approx(before["per_class"]["bird"]["map50"], abs=1e-6)


def test_a_label_continues_the_class_of_its_own_name_before_one_its_predicted_values_name():
    """A version trained on bird and Kittiwake, under <Label value="Kittiwake" predicted_values="bird"/>: Kittiwake's
    own row continues; bird, which serving shows as Kittiwake too, is left to the evaluation's columns."""
    from label_studio_ale.label_rows import class_labels, continues_labels, inherited_rows

    config = _config('<Label value="Kittiwake" alias="KIWA" predicted_values="bird"/><Label value="nest"/>')
    classes = list(config.labels)
    assert class_labels(["bird", "Kittiwake", "car"], classes, config.aliases, config.names) == {"bird": "KIWA", "Kittiwake": "KIWA"}
    assert inherited_rows(["bird", "Kittiwake", "car"], classes, config.aliases, config.names) == {"KIWA": "Kittiwake"}
    # TRAIN_CONTINUE_STEPS reads the labels a version learnt under the names they have now
    version = SimpleNamespace(manifest={"trained_labels": ["Kittiwake", "nest"]})
    assert continues_labels(version, ["KIWA", "nest"], {"Kittiwake": "KIWA", "nest": "nest"})
    assert not continues_labels(version, ["KIWA", "nest"])


def test_a_served_version_that_cannot_be_read_is_replaced_even_with_a_trained_model_weights(stub, tmp_path):
    """The error names training as the way out of an unreadable served version: MODEL_WEIGHTS, which serves
    nothing while the pointer names that version, is a start, not a baseline the new version must beat."""
    checkpoint = tmp_path / "birds.pt"
    checkpoint.write_bytes(b"old")
    settings = stub.settings.replace(model_weights=str(checkpoint))
    store = _served(tmp_path, settings, ["bird", "nest"])
    (store.get("v0001").path / "classes.json").write_text("not json")
    assert store.readable_current()[1]
    trained = train_version(settings, store, _bird_and_nest_set(tmp_path, "ds", nests=True), ["bird", "nest"], tmp_path / "work")
    assert trained.promoted and "cannot be read" in trained.reason
    current, damaged = store.readable_current()
    assert current.name == trained.version.name and not damaged
