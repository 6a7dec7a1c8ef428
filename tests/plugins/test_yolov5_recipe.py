"""The small-data recipe: optimizer steps, not epochs, decide how long a fine-tune runs."""

import math
from pathlib import Path

import pytest
import yaml

from label_studio_ale_plugins.yolov5.recipe import (
    EPOCH_BATCHES,
    MIN_EPOCHS,
    MIN_STEPS,
    NOMINAL_BATCH,
    ULTRALYTICS_WARMUP_EPOCHS,
    WARMUP_STEPS,
    plan,
    repeated_dataset,
)


@pytest.mark.parametrize("images, batch", [(3, 8), (19, 8), (38, 8), (77, 8), (500, 16), (5000, 16)])
def test_small_data_steps_every_batch_for_min_steps_and_min_epochs(images, batch):
    recipe = plan("small-data", images, batch)
    per_epoch = math.ceil(images * recipe.repeat / batch)
    steps = recipe.epochs * per_epoch
    wanted = max(MIN_STEPS, MIN_EPOCHS * math.ceil(images / batch))
    assert recipe.overrides["nbs"] == batch  # no gradient accumulation
    assert wanted <= steps < wanted + per_epoch  # never a whole epoch more than needed
    assert recipe.overrides["warmup_epochs"] * per_epoch == pytest.approx(WARMUP_STEPS)
    assert 1 <= recipe.overrides["close_mosaic"] <= max(1, recipe.epochs // 5)
    # a small set is repeated until an epoch has EPOCH_BATCHES batches; a large one is not
    assert per_epoch >= EPOCH_BATCHES or recipe.repeat == 1
    assert recipe.repeat == 1 or math.ceil(images * (recipe.repeat - 1) / batch) < EPOCH_BATCHES


def test_a_few_dozen_images_get_the_same_steps():
    """MIN_EPOCHS of 12, 24 or 48 images is fewer than MIN_STEPS steps: they all get MIN_STEPS."""
    for images in (12, 24, 48):
        recipe = plan("small-data", images, 8)
        per_epoch = math.ceil(images * recipe.repeat / 8)
        assert MIN_STEPS <= recipe.epochs * per_epoch < MIN_STEPS + per_epoch


@pytest.mark.parametrize("images, batch", [(12, 8), (48, 8), (77, 8), (1000, 16)])
def test_train_min_steps_replaces_the_minimum_and_leaves_larger_sets_their_epochs(images, batch):
    default, longer = plan("small-data", images, batch), plan("small-data", images, batch, min_steps=1000)
    per_epoch = math.ceil(images * longer.repeat / batch)
    wanted = max(1000, MIN_EPOCHS * math.ceil(images / batch))
    assert wanted <= longer.epochs * per_epoch < wanted + per_epoch
    assert longer.repeat == default.repeat and longer.overrides["nbs"] == batch
    if MIN_EPOCHS * math.ceil(images / batch) >= 1000:  # 1000 images: MIN_EPOCHS passes already exceed it
        assert longer == default
    else:
        assert longer.epochs > default.epochs
    assert plan("small-data", images, batch, min_steps=0) == default  # 0: the recipe's own MIN_STEPS
    with pytest.raises(ValueError, match="TRAIN_MIN_STEPS"):
        plan("small-data", images, batch, min_steps=-1)


def test_train_epochs_fixes_the_epochs_and_ultralytics_keeps_its_defaults():
    fixed = plan("small-data", 40, 8, epochs=7)
    assert fixed.epochs == 7 and fixed.repeat == 1 and fixed.overrides["nbs"] == 8
    assert plan("ultralytics", 40, 8) == plan("ultralytics", 40, 8, epochs=30)
    assert plan("ultralytics", 40, 8, epochs=20).epochs == 20 and plan("ultralytics", 40, 8).overrides == {}
    with pytest.raises(ValueError, match="TRAIN_RECIPE"):
        plan("fast", 40, 8)
    with pytest.raises(ValueError, match="at least one training image"):
        plan("small-data", 0, 8)


def test_a_single_epoch_gets_no_warmup_and_every_longer_fine_tune_does():
    """ultralytics keeps the last epoch out of the warmup: TRAIN_EPOCHS=1 steps at the full rate from the start."""
    assert plan("small-data", 48, 8).warmup_batches(48, 8) == WARMUP_STEPS
    # TRAIN_EPOCHS lists the set once (6 batches an epoch): 2 epochs warm up for 1 of them, 3 for all WARMUP_STEPS
    assert plan("small-data", 48, 8, epochs=2).warmup_batches(48, 8) == 6
    assert plan("small-data", 48, 8, epochs=3).warmup_batches(48, 8) == WARMUP_STEPS
    assert plan("small-data", 48, 8, epochs=1).warmup_batches(48, 8) == 0
    # ultralytics' own recipe: its 3 warmup epochs of 6 batches, capped at epochs - 1
    assert plan("ultralytics", 48, 8).warmup_batches(48, 8) == ULTRALYTICS_WARMUP_EPOCHS * 6
    assert plan("ultralytics", 48, 8, epochs=2).warmup_batches(48, 8) == 6
    assert plan("ultralytics", 48, 8, epochs=1).warmup_batches(48, 8) == 0


def twelve_image_dataset(root: Path) -> Path:
    """A data yaml over 12 placeholder images (the trainer is stubbed: only their count matters)."""
    (root / "images" / "train").mkdir(parents=True)
    for k in range(12):
        (root / "images" / "train" / f"{k}.png").write_bytes(b"png")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: bird\n")
    return data_yaml


def test_fine_tune_warns_that_a_single_epoch_runs_without_warmup(tmp_path, monkeypatch, caplog):
    """TRAIN_EPOCHS=1 trains (the setting is the user's) but says what it costs and what to set instead."""
    from label_studio_ale.settings import Settings
    from label_studio_ale_plugins.yolov5 import adapter

    data_yaml = twelve_image_dataset(tmp_path)
    asked = []
    monkeypatch.setattr(adapter, "train_yolo", lambda data, weights, out, **options: asked.append(options["epochs"]))
    warnings = {}
    for epochs in (1, 2, 0):
        caplog.clear()
        with caplog.at_level("WARNING", logger=adapter.__name__):
            adapter.YoloV5Adapter.fine_tune(Settings(train_batch=8, train_epochs=epochs), "w.pt", data_yaml, tmp_path / "work")
        warnings[epochs] = [r.getMessage() for r in caplog.records if r.name == adapter.__name__]
    assert asked[:2] == [1, 2]
    assert len(warnings[1]) == 1 and "TRAIN_EPOCHS=1" in warnings[1][0] and "warmup" in warnings[1][0]
    assert "TRAIN_EPOCHS=0" in warnings[1][0]
    assert warnings[2] == [] and warnings[0] == []


def test_the_repeated_dataset_lists_each_training_image_repeat_times(tmp_path):
    for split, names in (("train", ["1.png", "2.png"]), ("val", ["3.png"])):
        (tmp_path / "images" / split).mkdir(parents=True)
        for name in names:
            (tmp_path / "images" / split / name).write_bytes(b"png")
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: bird\n")
    assert repeated_dataset(data_yaml, 1) == data_yaml
    spec = yaml.safe_load(repeated_dataset(data_yaml, 3).read_text())
    assert spec["val"] == "images/val" and spec["names"] == {0: "bird"} and spec["path"] == str(tmp_path)
    listed = (tmp_path / "train-repeated.txt").read_text().splitlines()
    assert sorted(listed) == sorted([str(tmp_path / "images" / "train" / n) for n in ("1.png", "2.png")] * 3)


def test_the_repeated_listing_holds_absolute_paths_for_a_relative_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "images" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "train" / "1.png").write_bytes(b"png")
    (tmp_path / "ds" / "data.yaml").write_text("path: ds\ntrain: images/train\nval: images/train\nnames:\n  0: bird\n")
    repeated_dataset(tmp_path / "ds" / "data.yaml", 2)
    assert (tmp_path / "ds" / "train-repeated.txt").read_text().splitlines() == [str(tmp_path / "ds" / "images" / "train" / "1.png")] * 2


def test_a_dataset_given_by_a_relative_path_names_its_listing_by_an_absolute_one(tmp_path, monkeypatch):
    # a relative MODEL_DIR (the default ./models) gives Start Training a relative work folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "images" / "train").mkdir(parents=True)
    (tmp_path / "models" / "images" / "train" / "1.png").write_bytes(b"png")
    (tmp_path / "models" / "data.yaml").write_text(f"path: {tmp_path / 'models'}\ntrain: images/train\nval: images/train\nnames:\n  0: bird\n")
    out = repeated_dataset(Path("models") / "data.yaml", 2)
    listing = yaml.safe_load(out.read_text())["train"]
    assert listing == str(tmp_path / "models" / "train-repeated.txt")
    assert Path(listing).is_file()


def test_fine_tune_trains_the_epochs_train_min_steps_asks_for(tmp_path, monkeypatch):
    """The adapter's fine-tune plans with the settings' TRAIN_MIN_STEPS (the trainer itself stubbed at its seam)."""
    from label_studio_ale.settings import Settings
    from label_studio_ale_plugins.yolov5 import adapter

    for split, count in (("train", 38), ("val", 10)):
        (tmp_path / "images" / split).mkdir(parents=True)
        for k in range(count):
            (tmp_path / "images" / split / f"{k}.png").write_bytes(b"png")
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: bird\n")
    asked = []
    monkeypatch.setattr(adapter, "train_yolo", lambda data, weights, out, **options: asked.append((options["epochs"], options["precision"])))
    plans = []
    for min_steps, precision in ((0, "fp32"), (200, "bf16"), (600, "fp32")):
        settings = Settings(train_batch=8, train_min_steps=min_steps, train_precision=precision)
        adapter.YoloV5Adapter.fine_tune(settings, "w.pt", data_yaml, tmp_path / "work")
        plans.append(adapter.YoloV5Adapter.training_plan(settings, data_yaml))
    # 38 images listed 5 times: 24 batches an epoch; the default (600 steps) takes 25 epochs, 200 steps take 9
    assert asked == [(25, "fp32"), (9, "bf16"), (25, "fp32")]
    # and the plan a version's manifest keeps says so, in optimizer steps and precision: what TRAIN_MIN_STEPS=0 meant is on record
    assert plans == [
        {"epochs": 25, "repeat": 5, "steps": 600, "precision": "fp32"},
        {"epochs": 9, "repeat": 5, "steps": 216, "precision": "bf16"},
        {"epochs": 25, "repeat": 5, "steps": 600, "precision": "fp32"},
    ]


def test_steps_count_a_step_per_batch_or_per_nominal_batch_with_accumulation():
    small = plan("small-data", 12, 8)
    assert small.steps(12, 8) == small.epochs * math.ceil(12 * small.repeat / 8) >= MIN_STEPS
    assert small.summary(12, 8) == {"epochs": small.epochs, "repeat": small.repeat, "steps": small.steps(12, 8)}
    # ultralytics' own recipe accumulates 64 images a step: 96 images at batch 16 are 6 batches, 4 to a step
    assert NOMINAL_BATCH == 64 and plan("ultralytics", 96, 16).steps(96, 16) == 30 * 6 // 4 == 45
    assert plan("ultralytics", 96, 64).steps(96, 64) == 30 * 2  # a batch as large as nbs: a step per batch


def test_fine_tune_passes_train_freeze_and_the_plan_records_it_only_when_set(tmp_path, monkeypatch):
    """TRAIN_FREEZE reaches the trainer (stubbed at its seam); a version's plan says `freeze` only when layers were kept."""
    from label_studio_ale.settings import Settings
    from label_studio_ale_plugins.yolov5 import adapter

    data_yaml = twelve_image_dataset(tmp_path)
    asked = []
    monkeypatch.setattr(adapter, "train_yolo", lambda data, weights, out, **options: asked.append(options["freeze"]))
    plans = []
    for freeze in (0, 10):
        settings = Settings(train_batch=8, train_precision="fp32", train_freeze=freeze)
        adapter.YoloV5Adapter.fine_tune(settings, "w.pt", data_yaml, tmp_path / "work")
        plans.append(adapter.YoloV5Adapter.training_plan(settings, data_yaml))
    assert asked == [0, 10]
    assert "freeze" not in plans[0]  # manifests of unfrozen fine-tunes are as they were
    assert plans[1] == plans[0] | {"freeze": 10}


def test_train_freeze_must_leave_the_head_training_and_needs_trained_weights():
    from label_studio_ale.errors import ConfigError
    from label_studio_ale_plugins.yolov5.recipe import check_freeze

    check_freeze(0, "yolov5n.yaml", 25)  # from scratch, every layer trains
    check_freeze(10, "models/v3/weights.pt", 25)
    check_freeze(24, "models/v3/weights.pt", 25)  # everything but the head
    with pytest.raises(ConfigError, match=r"TRAIN_FREEZE: 25 would freeze all 25 layers of weights.pt, its detection head \(layer 24\).*at most 24"):
        check_freeze(25, "models/v3/weights.pt", 25)
    with pytest.raises(ConfigError, match=r"TRAIN_FREEZE: 10 keeps .* yolov5n.yaml is a model definition .* TRAIN_FREEZE=0 .* BASE_MODEL"):
        check_freeze(10, "yolov5n.yaml", 25)
    with pytest.raises(ConfigError, match="TRAIN_FREEZE: must be 0"):
        check_freeze(-1, "models/v3/weights.pt", 25)


@pytest.mark.slow
def test_a_frozen_fine_tune_keeps_the_first_layers_weights_and_trains_the_rest(tmp_path):
    """Real ultralytics fine-tunes: with freeze=10 YOLOv5's backbone (layers 0-9) keeps the base's parameters and
    BatchNorm statistics, the neck and head move; TRAIN_FREEZE beyond the head is refused before any training."""
    import torch

    from label_studio_ale.errors import ConfigError
    from label_studio_ale.synthetic import make_scene, write_yolo_dataset
    from label_studio_ale_plugins.yolov5 import train_yolo

    data = tmp_path / "data"
    write_yolo_dataset(data, [make_scene(i, size=(64, 64), min_side=12, max_side=24) for i in range(16)], ["bird", "nest"], "train")
    write_yolo_dataset(data, [make_scene(100 + i, size=(64, 64), min_side=12, max_side=24) for i in range(2)], ["bird", "nest"], "val")
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n  0: bird\n  1: nest\n")
    options = dict(image_size=64, batch=4, precision="fp32", overrides={"nbs": 4})  # a step per batch, as the recipe steps
    base = train_yolo(data / "data.yaml", "yolov5n.yaml", tmp_path / "base", epochs=1, **options)
    tuned = train_yolo(data / "data.yaml", base, tmp_path / "tuned", epochs=2, freeze=10, **options)

    def state(weights):  # parameters and BatchNorm statistics
        return torch.load(weights, map_location="cpu", weights_only=False)["model"].float().state_dict()

    before, after = state(base), state(tuned)
    layer = {name: int(name.split(".")[1]) for name in before if name.startswith("model.")}  # "model.<layer>.…"
    kept = [name for name in layer if layer[name] < 10]
    trained = [name for name in layer if layer[name] >= 10 and before[name].is_floating_point()]
    assert kept and trained
    assert all(torch.equal(before[name], after[name]) for name in kept)
    assert sum(not torch.equal(before[name], after[name]) for name in trained) > len(trained) / 2
    with pytest.raises(ConfigError, match="TRAIN_FREEZE: 25 would freeze all 25 layers"):
        train_yolo(data / "data.yaml", base, tmp_path / "all", epochs=1, freeze=25, **options)
    assert not (tmp_path / "all").exists()
