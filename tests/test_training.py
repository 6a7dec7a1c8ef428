"""Training pieces shared by Start Training and the benchmark: train_version, the promotion gate, the train job."""

from pathlib import Path

import numpy as np
import pytest

from label_studio_ale.model_store import ModelStore
from label_studio_ale.settings import Settings
from label_studio_ale.synthetic import make_scene
from label_studio_ale.training import TrainingError, evaluate_weights, train_version
from label_studio_ale.training_set import TrainingSample, write_training_set
from tests.support.models import IMAGE_SIZE
from tests.test_training_set import _sample


@pytest.mark.slow
def test_a_base_model_with_some_of_the_labels_has_its_head_grown(trained_weights, tmp_path):
    """BASE_MODEL knows bird and nest; the project adds egg: the first version keeps bird and nest."""
    scenes = [make_scene(20_000 + i) for i in range(30)]
    samples = []
    for i, scene in enumerate(scenes, start=1):
        scene.image.save(tmp_path / f"{i}.png")
        samples.append(TrainingSample(i, tmp_path / f"{i}.png", scene.xyxy, np.where(scene.labels == 1, 2, scene.labels)))
    classes = ["bird", "egg", "nest"]
    data_yaml, _ = write_training_set(tmp_path / "ds", samples, classes)
    settings = Settings(base_model=str(trained_weights), train_epochs=1, train_batch=8, image_size=IMAGE_SIZE, model_dir=str(tmp_path / "models"))
    store = ModelStore(settings.model_dir, 1)
    trained = train_version(settings, store, data_yaml, classes, tmp_path / "work")
    assert trained.promoted and store.current().classes == tuple(classes)
    assert trained.version.manifest["base"] == f"{trained_weights}, head grown to 3 classes"
    # one epoch from fresh class rows scores nothing (their sigmoid starts near 2e-4,
    # under the 0.001 floor); the grown rows still find birds and nests. The figures
    # are of what is served (class-wise NMS at 0.5 included) on ~6 images: nest AP50
    # measured 0.30 here (0.60 without the serving NMS), a fresh row would score 0.
    assert trained.metrics["per_class"]["bird"]["map50"] > 0.3
    assert trained.metrics["per_class"]["nest"]["map50"] > 0.2

    # The same labels, base model and seed train the same version: egg's fresh rows come from a fixed seed,
    # so a retried job or a benchmark rerun starts where the first did.
    import torch

    again = train_version(settings, ModelStore(settings.model_dir, 2), data_yaml, classes, tmp_path / "work-again")
    first, second = (torch.load(t.version.weights, weights_only=False)["model"].float().state_dict() for t in (trained, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert again.metrics["map50"] == trained.metrics["map50"]


class ServeOnly:
    """An adapter class that serves but has no Trainer methods (fresh_model, base_classes, grow, fine_tune)."""

    @classmethod
    def from_settings(cls, settings):
        raise AssertionError("training must not build the serving model")


def test_an_adapter_that_cannot_train_says_so_and_stores_nothing(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from label_studio_ale import adapters

    monkeypatch.setattr(adapters, "available_adapters", lambda: {"serveonly": SimpleNamespace(load=lambda: ServeOnly)})
    settings = Settings(adapter="serveonly", model_dir=str(tmp_path / "models"))
    store = ModelStore(settings.model_dir, 1)
    with pytest.raises(TrainingError, match="ADAPTER=serveonly cannot fine-tune: train and export the model outside"):
        train_version(settings, store, tmp_path / "data.yaml", ["bird"], tmp_path / "work")
    assert store.versions() == [] and store.current() is None


def test_both_adapters_can_fine_tune():
    from label_studio_ale.adapters import Trainer, adapter_class

    for name, fresh in (("yolov5", "yolov5n.yaml"), ("tfod", "retinanet")):
        factory = adapter_class(Settings(adapter=name))
        assert isinstance(factory, Trainer) and factory.fresh_model == fresh


def _metrics(map50, images=12, boxes=30):
    return {"map": map50 / 2, "map50": map50, "images": images, "boxes": boxes}


@pytest.mark.parametrize(
    "settings, current, baseline, metrics, promoted, reason",
    [
        (Settings(promotion="always"), "v0001", _metrics(0.9), _metrics(0.1), True, "PROMOTION=always"),
        (Settings(), None, None, _metrics(0.1), True, "the project's first version"),
        (Settings(), "v0001", None, _metrics(0.1), True, "none of v0001's classes (bird) is a label now (bird, egg): it cannot serve"),
        (Settings(), "v0001", _metrics(0.9, 4), _metrics(0.1, 4), True, "only 4 validation images (30 boxes), fewer than PROMOTION_MIN_IMAGES=10"),
        (Settings(), "v0001", _metrics(0.5), _metrics(0.5), True, "mAP50 0.500 >= v0001's 0.500 on the same 12 validation images (30 boxes)"),
        (Settings(), "v0001", _metrics(0.5), _metrics(0.4), False, "mAP50 0.400 < v0001's 0.500 on the same 12 validation images (30 boxes): v0001 keeps serving"),
        (Settings(promotion_min_images=20), "v0001", _metrics(0.5), _metrics(0.4), True, "fewer than PROMOTION_MIN_IMAGES=20"),
        (Settings(), "v0001", _metrics(0.0, boxes=0), _metrics(0.0, boxes=0), False, "12 validation images (0 boxes): without a box, mAP cannot compare the versions, so v0001 keeps serving"),
    ],
)
def test_the_promotion_gate_says_why(settings, current, baseline, metrics, promoted, reason):
    from types import SimpleNamespace

    from label_studio_ale.promotion import promotion_decision

    version = None if current is None else SimpleNamespace(name=current, classes=("bird",))
    decision, why = promotion_decision(settings, metrics, version, baseline, ["bird", "egg"])
    assert decision is promoted and reason in why


@pytest.mark.slow
def test_a_pretrained_checkpoint_keeps_the_rows_its_classes_give_to_labels(trained_weights, tmp_path):
    """{bird, car} behind <Label value="Kittiwake" predicted_values="bird"/>: the first version starts from the bird row."""
    from label_studio_ale.ls_format import parse_label_config
    from label_studio_ale.label_rows import inherited_rows
    from label_studio_ale_plugins.yolov5 import grow_head
    from tests.support.models import class_outputs

    bird_car = grow_head(trained_weights, ["bird", "car"], tmp_path / "bird-car.pt", {"car": "nest"})
    config = parse_label_config(
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="Kittiwake" predicted_values="bird"/></RectangleLabels></View>'
    )
    assert inherited_rows(["bird", "car"], ["Kittiwake"], config.aliases) == {"Kittiwake": "bird"}
    assert inherited_rows(["bird", "car"], ["Kittiwake"]) == {}  # by name alone nothing would be kept

    # growing keeps the bird row as Kittiwake's: that class's outputs are the bird's, exactly
    images = [make_scene(seed).image for seed in range(30_000, 30_004)]
    kittiwake = grow_head(bird_car, ["Kittiwake"], tmp_path / "kittiwake.pt", {"Kittiwake": "bird"})
    np.testing.assert_allclose(class_outputs(kittiwake, images)[:, 0], class_outputs(bird_car, images)[:, 0], rtol=1e-5, atol=1e-6)

    # and Start Training's first version does exactly that, then fine-tunes
    scenes = [make_scene(31_000 + i) for i in range(30)]
    samples = []
    for i, scene in enumerate(scenes, start=1):
        scene.image.save(tmp_path / f"{i}.png")
        birds = scene.labels == 0
        samples.append(TrainingSample(i, tmp_path / f"{i}.png", scene.xyxy[birds], np.zeros(int(birds.sum()), dtype=np.int64)))
    data_yaml, _ = write_training_set(tmp_path / "ds", samples, ["Kittiwake"])
    settings = Settings(base_model=str(bird_car), train_epochs=1, train_batch=8, image_size=IMAGE_SIZE, model_dir=str(tmp_path / "models"))
    store = ModelStore(settings.model_dir, 1)
    trained = train_version(settings, store, data_yaml, ["Kittiwake"], tmp_path / "work", aliases=config.aliases)
    assert trained.version.classes == ("Kittiwake",)
    assert trained.version.manifest["base"] == f"{bird_car}, head grown to 1 classes, Kittiwake from bird"
    # the fine-tune starts from the bird row: a model that finds the Kittiwakes before its first step
    start = tmp_path / "work" / "grown.pt"
    np.testing.assert_allclose(class_outputs(start, images)[:, 0], class_outputs(bird_car, images)[:, 0], rtol=1e-5, atol=1e-6)
    assert evaluate_weights(settings, start, data_yaml, ["Kittiwake"])["map50"] > 0.9
    # What one epoch makes of it is not compared: 3 AdamW steps at the full rate (ultralytics warms up in no
    # single-epoch run) move every weight by about the rate, and where that lands depends on the CPU's
    # rounding (mAP50 0.0 against a fresh row's 0.01 on one CPU, 0.1 and more above it on another).
    fresh = train_version(settings, ModelStore(settings.model_dir, 2), data_yaml, ["Kittiwake"], tmp_path / "fresh")
    assert "Kittiwake from bird" not in str(fresh.version.manifest["base"])
    assert not (tmp_path / "fresh" / "grown.pt").exists()  # labels matched by name alone: no row is kept


def test_the_demo_base_set_always_holds_a_validation_image():
    from label_studio_ale.demo import base_set
    from label_studio_ale.training_set import is_validation

    ids = list(range(1, 400))
    train_only = next(start for start in ids if not any(is_validation(t) for t in range(start, start + 10)))
    tasks = list(range(train_only, train_only + 16))
    picked = base_set(tasks, 10)
    assert len(picked) == 10 and picked[:9] == tasks[:9] and is_validation(picked[-1]) and picked[-1] in tasks[10:]
    mixed = next(start for start in ids if any(is_validation(t) for t in range(start, start + 10)))
    assert base_set(list(range(mixed, mixed + 16)), 10) == list(range(mixed, mixed + 10)), "already mixed: the first ones"


def _bird_and_nest_set(tmp_path, name, nests: bool):
    """A 20-image data.yaml with a bird on every image and, when `nests`, a nest on each too."""
    (tmp_path / name).mkdir()
    boxes, labels = ([[5, 5, 30, 30], [40, 10, 70, 40]], [0, 1]) if nests else ([[5, 5, 30, 30]], [0])
    samples = [_sample(i, tmp_path / name, boxes, labels) for i in range(1, 21)]
    return write_training_set(tmp_path / name / "ds", samples, ["bird", "nest"])[0]


@pytest.mark.slow
def test_a_fine_tune_that_adds_no_label_takes_train_continue_steps(trained_weights, tmp_path, monkeypatch):
    """TRAIN_CONTINUE_STEPS applies only when the current version has learnt from boxes of every label labelled now.

    The trainer is stubbed at its seam (it returns the weights it was given), so
    each version's plan shows the steps the recipe gave it; evaluation is real.
    """
    import shutil

    from label_studio_ale_plugins.yolov5 import adapter

    epochs = []

    def trainer(data, weights, out, **options):
        epochs.append(options["epochs"])
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(weights, Path(out) / "best.pt"))

    monkeypatch.setattr(adapter, "train_yolo", trainer)
    settings = Settings(base_model=str(trained_weights), train_batch=8, train_continue_steps=200, image_size=IMAGE_SIZE,
                        train_precision="fp32", model_dir=str(tmp_path / "models"))  # fmt: skip
    store = ModelStore(settings.model_dir, 1)
    birds, both = _bird_and_nest_set(tmp_path, "birds", nests=False), _bird_and_nest_set(tmp_path, "both", nests=True)

    def steps(dataset, run_settings=settings):
        version = train_version(run_settings, store, dataset, ["bird", "nest"], tmp_path / "work").version
        return version.manifest["plan"]["steps"], version.manifest["trained_labels"]

    # the first version starts from BASE_MODEL: the recipe's full minimum
    assert steps(birds) == (600, ["bird"])
    # the first nest boxes: that head row has never learnt from a box, so the full minimum again
    assert steps(both) == (600, ["bird", "nest"])
    # the same labels once more: the version it continues knows them all
    assert steps(both) == (200, ["bird", "nest"])
    assert steps(birds) == (200, ["bird"])  # fewer labels than it knows: still a continuation
    # unset (0), every fine-tune takes TRAIN_MIN_STEPS (here the recipe's 600)
    assert steps(both, settings.replace(train_continue_steps=0)) == (600, ["bird", "nest"])
    assert len(epochs) == 5


def test_a_version_without_a_record_of_its_labels_is_not_continued():
    from types import SimpleNamespace

    from label_studio_ale.label_rows import continues_labels

    assert continues_labels(SimpleNamespace(manifest={"trained_labels": ["bird", "nest"]}), ["bird"])
    assert not continues_labels(SimpleNamespace(manifest={"trained_labels": ["bird"]}), ["bird", "nest"])
    # stored before versions recorded their labels: what it learnt is unknown, so a fine-tune gets the full steps
    assert not continues_labels(SimpleNamespace(manifest={}), ["bird"])


def test_a_sync_that_fails_after_a_promotion_leaves_the_training_done(tmp_path, monkeypatch, caplog):
    """Label Studio away for the re-sync: the trained, promoted version stands; the result says the sync failed and why."""
    import label_studio_ale.jobs as jobs
    from label_studio_ale.jobs import SyncError
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.training import resync_after_promotion

    def down(project, runtime):
        raise SyncError(f"sync of project {project} failed before switching; the previous order stays: LS is down")

    monkeypatch.setattr(jobs, "sync_priorities", down)
    result = resync_after_promotion(4, Runtime(Settings(model_dir=tmp_path)))
    assert result["status"] == "failed"
    assert result["error"].startswith("sync of project 4 failed before switching") and "the next sync ranks the queue with it" in result["error"]
    assert "the promoted version stands" in caplog.text

    monkeypatch.setattr(jobs, "sync_priorities", lambda project, runtime: {"status": "synced", "model_version": "ale:v0001:x", "tasks": 3, "phases": {}})
    assert resync_after_promotion(4, Runtime(Settings(model_dir=tmp_path))) == {"status": "synced", "model_version": "ale:v0001:x", "tasks": 3}


def test_a_version_whose_lock_lapsed_during_training_is_stored_but_not_promoted(trained_weights, tmp_path, monkeypatch):
    """Another training may hold the project's lock by then: promoting would bypass its comparison. The trainer is stubbed."""
    import shutil

    from label_studio_ale.runtime import HeldLock, LockLostError
    from label_studio_ale_plugins.yolov5 import adapter

    def trainer(data, weights, out, **options):
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(weights, Path(out) / "best.pt"))

    monkeypatch.setattr(adapter, "train_yolo", trainer)
    settings = Settings(base_model=str(trained_weights), train_batch=8, image_size=IMAGE_SIZE, train_precision="fp32",
                        model_dir=str(tmp_path / "models"))  # fmt: skip
    store = ModelStore(settings.model_dir, 1)
    held = HeldLock("train:1", True)
    held.lost.set()
    with pytest.raises(LockLostError, match=r"promoting v0001 \(trained and stored; `ale models` lists it\) was not done: the lock train:1 lapsed"):
        train_version(settings, store, _bird_and_nest_set(tmp_path, "birds", nests=False), ["bird", "nest"], tmp_path / "work", before_promote=held.check)
    assert [v.name for v in store.versions()] == ["v0001"] and store.current() is None


def test_an_80_class_nano_checkpoint_grows_to_a_few_labels_with_a_fresh_classification_branch(tmp_path):
    """Ultralytics sizes a nano head's classification branch by the class count (80 wide for COCO, 64 for a few
    labels): the branch starts fresh, as in ultralytics' own fine-tune, and the rest of the model is kept."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from label_studio_ale_plugins.yolov5 import grow_head
    from tests.support.models import class_outputs

    coco = DetectionModel("yolov5n.yaml", nc=80, verbose=False)
    coco.names = {i: ("bird" if i == 14 else f"c{i}") for i in range(80)}
    head = coco.model[-1]
    for branch in head.cv3:
        torch.nn.init.constant_(branch[-1].bias, 3.0)  # a prior the fresh branch must not inherit
    torch.save({"model": coco, "train_args": {}, "epoch": -1}, tmp_path / "coco.pt")
    report: dict = {}
    grown = grow_head(tmp_path / "coco.pt", ["Kittiwake", "nest"], tmp_path / "grown.pt", {"Kittiwake": "bird"}, report)
    assert report == {"kept_rows": {}, "fresh_class_branch": True}
    model = torch.load(grown, weights_only=False)["model"]
    assert model.names == {0: "Kittiwake", 1: "nest"}
    before, after = coco.state_dict(), model.state_dict()
    kept = [k for k in after if k in before and before[k].shape == after[k].shape and torch.equal(before[k].float(), after[k].float())]
    assert any(k.startswith("model.0.") for k in kept) and any(".cv2." in k for k in kept), "backbone and box branch kept"
    assert class_outputs(grown, [make_scene(30_100).image]).shape[1] == 2, "it loads and predicts two classes"
    assert all(not torch.any(branch[-1].bias == 3.0) for branch in model.model[-1].cv3), "the class biases start fresh too"

    # a checkpoint whose branch is as wide keeps the rows it is asked for
    small = DetectionModel("yolov5n.yaml", nc=3, verbose=False)
    small.names = {0: "bird", 1: "car", 2: "nest"}
    torch.save({"model": small, "train_args": {}, "epoch": -1}, tmp_path / "small.pt")
    report = {}
    grow_head(tmp_path / "small.pt", ["Kittiwake", "nest"], tmp_path / "grown-small.pt", {"Kittiwake": "bird"}, report)
    assert report == {"kept_rows": {"Kittiwake": "bird", "nest": "nest"}, "fresh_class_branch": False}


def test_labels_all_renamed_since_the_served_version_start_from_the_base_models_rows(tmp_path, monkeypatch):
    """Nothing of the served version's head maps to the new labels: the training starts as a first one, from BASE_MODEL,
    whose bird row the alias names (not from the base model's raw head, not refused)."""
    from label_studio_ale import adapters

    calls = []

    class Factory:
        fresh_model = "yolov5n.yaml"

        @staticmethod
        def base_classes(weights):
            return ["bird", "car"]

        @staticmethod
        def grow(weights, classes, out, origin=None, report=None):
            calls.append(("grow", weights, classes, origin))
            return out

        @staticmethod
        def fine_tune(settings, weights, data_yaml, work, seed=0, on_epoch=None):
            calls.append(("fine_tune", str(weights)))
            raise KeyboardInterrupt  # what happens next is not this test's

    monkeypatch.setattr(adapters, "adapter_class", lambda settings: Factory)
    store = ModelStore(tmp_path / "models", 1)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    store.promote(store.add(weights, ["Kittiwake"], {}, {"trained_labels": ["Kittiwake"]}).name)
    data = tmp_path / "ds"
    (data / "labels" / "train").mkdir(parents=True)
    (data / "data.yaml").write_text("names: [Gull]\n")
    settings = Settings(model_dir=tmp_path / "models", base_model=str(tmp_path / "coco.pt"))
    with pytest.raises(KeyboardInterrupt):
        train_version(settings, store, data / "data.yaml", ["Gull"], tmp_path / "work", aliases={"bird": "Gull"})
    assert calls[0] == ("grow", str(tmp_path / "coco.pt"), ["Gull"], {"Gull": "bird"})
    assert calls[1] == ("fine_tune", str(tmp_path / "work" / "grown"))


def test_a_project_whose_annotated_images_all_fail_to_load_says_why_not_that_it_has_no_annotations(tmp_path):
    from types import SimpleNamespace

    from label_studio_ale.ls_client import TaskRef
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.training import train_project

    class LS:
        def project(self, project):
            return SimpleNamespace(label_config='<View><Image name="image" value="$image"/><RectangleLabels name="label" '
                                                 'toName="image"><Label value="bird"/></RectangleLabels></View>')

        def annotated_tasks(self, project):
            for task_id in (3, 4):
                yield TaskRef(task_id, {"image": f"https://bucket.example.org/{task_id}.jpg"}), [{"result": [], "ground_truth": False}]

    rt = Runtime(Settings(model_dir=tmp_path), ls=LS())
    with pytest.raises(TrainingError, match=r"none of its 2 annotated images could be read \(task 3: image host 'bucket.example.org' "
                                            r"is not allowed.*\): give the backend access to them \(ALLOWED_MEDIA_HOSTS"):
        train_project(7, runtime=rt, then_sync=False)


def test_a_served_version_that_cannot_be_read_does_not_stop_training_again(tmp_path, monkeypatch):
    """'Train again' is what the damaged version's error advises: the training starts as a first one, from BASE_MODEL."""
    from label_studio_ale import adapters

    calls = []

    class Factory:
        fresh_model = "yolov5n.yaml"

        @staticmethod
        def base_classes(weights):
            return None

        @staticmethod
        def grow(weights, classes, out, origin=None, report=None):
            raise AssertionError("nothing to grow: the base model's classes are unknown")

        @staticmethod
        def fine_tune(settings, weights, data_yaml, work, seed=0, on_epoch=None):
            calls.append(str(weights))
            raise KeyboardInterrupt

    monkeypatch.setattr(adapters, "adapter_class", lambda settings: Factory)
    store = ModelStore(tmp_path / "models", 1)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    served = store.add(weights, ["Gull"], {}, {})
    store.promote(served.name)
    (served.path / "classes.json").write_text('["Gu')
    data = tmp_path / "ds"
    (data / "labels" / "train").mkdir(parents=True)
    (data / "data.yaml").write_text("names: [Gull]\n")
    with pytest.raises(KeyboardInterrupt):
        train_version(Settings(model_dir=tmp_path / "models", base_model=str(tmp_path / "base.pt")), store, data / "data.yaml", ["Gull"], tmp_path / "work")
    assert calls == [str(tmp_path / "base.pt")]




class StubTrainer:
    """A Trainer whose fine-tune copies the weights it starts from (evaluation is stubbed beside it)."""

    fresh_model = "stub.yaml"

    @classmethod
    def base_classes(cls, weights):
        return None

    @classmethod
    def grow(cls, weights, classes, out, origin=None, report=None):
        raise AssertionError("a first version grows nothing")

    @classmethod
    def fine_tune(cls, settings, weights, data_yaml, work, *, seed=0, on_epoch=None):
        Path(work).mkdir(parents=True, exist_ok=True)
        (Path(work) / "best.pt").write_bytes(b"trained")
        return Path(work) / "best.pt"


@pytest.fixture
def stub_trainer(monkeypatch):
    from types import SimpleNamespace

    from label_studio_ale import adapters, training

    monkeypatch.setattr(adapters, "available_adapters", lambda: {"stub": SimpleNamespace(load=lambda: StubTrainer)})
    monkeypatch.setattr(training, "evaluate_weights", lambda *args, **kwargs: _metrics(0.5))
    return Settings(adapter="stub")


def test_a_version_whose_promotion_the_lock_refused_is_recorded_not_promoted(stub_trainer, tmp_path):
    """/versions shows the stored record: it must not say promoted, and the error says how to serve it (the next
    training trains a new version, it never promotes this one)."""
    from label_studio_ale.runtime import HeldLock, LockLostError

    settings = stub_trainer.replace(model_dir=str(tmp_path / "models"))
    store = ModelStore(settings.model_dir, 4)
    held = HeldLock("train:4", True)
    held.lost.set()
    with pytest.raises(LockLostError) as refused:
        train_version(settings, store, _bird_and_nest_set(tmp_path, "birds", nests=False), ["bird", "nest"], tmp_path / "work", before_promote=held.check)
    message = str(refused.value)
    assert message.startswith("promoting v0001 (trained and stored; `ale models` lists it) was not done: the lock train:4 lapsed")
    assert message.endswith("v0001 stays stored, not served: serve it with `ale models --project 4 --promote v0001` once no training of the project runs, or train again")
    assert "the next run does it" not in message
    assert store.current() is None
    promotion = store.get("v0001").manifest["promotion"]
    assert promotion["promoted"] is False and promotion["reason"].startswith("not promoted: the project's training lock was lost")
    assert "it would have been (the project's first version); `ale models --project 4 --promote v0001` serves it" in promotion["reason"]


def test_a_training_job_records_the_version_it_stored_and_served(stub_trainer, tmp_path):
    """A worker killed after the store or the promotion leaves a job whose error must say so (jobqueue.abandoned_message)."""
    from label_studio_ale.jobqueue import STORED_VERSION, EmbeddedJobQueue, current_embedded_job
    from label_studio_ale.runtime import LockLostError

    settings = stub_trainer.replace(model_dir=str(tmp_path / "models"))
    store = ModelStore(settings.model_dir, 4)
    dataset = _bird_and_nest_set(tmp_path, "birds", nests=False)
    seen = []

    def refuse(what, remedy):
        seen.append(dict(current_embedded_job().meta[STORED_VERSION]))  # what a worker killed here would leave
        raise LockLostError(what)

    def run(before_promote=None):
        return train_version(settings, store, dataset, ["bird", "nest"], tmp_path / "work", before_promote=before_promote)

    jobs = EmbeddedJobQueue()
    first, second = jobs.enqueue("train", run), jobs.enqueue("train", run, refuse)
    jobs.join()
    assert jobs.info(first).meta[STORED_VERSION] == {"project": 4, "version": "v0001", "served": True}
    assert seen == [{"project": 4, "version": "v0002", "served": False}]
    assert jobs.info(second).status == "failed" and jobs.info(second).meta[STORED_VERSION]["served"] is False
