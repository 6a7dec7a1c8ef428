"""benchmarks/finetune_recipe.py: which training settings each named recipe runs with."""

import pytest

from label_studio_ale.settings import Settings
from tests.support.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def finetune_recipe():
    return load_benchmark("finetune_recipe")


def test_a_recipe_may_name_its_fewest_steps(finetune_recipe):
    base = Settings(train_batch=8)
    plain = finetune_recipe.recipe_settings(base, "small-data")
    assert (plain.train_recipe, plain.train_epochs, plain.train_min_steps) == ("small-data", 0, 0)
    longer = finetune_recipe.recipe_settings(base, "small-data@1000")
    assert (longer.train_recipe, longer.train_epochs, longer.train_min_steps, longer.train_batch) == ("small-data", 0, 1000, 8)
    old = finetune_recipe.recipe_settings(base, "ultralytics")
    assert (old.train_recipe, old.train_epochs) == ("ultralytics", finetune_recipe.BASELINE_EPOCHS)


def test_a_recipe_may_name_its_precision(finetune_recipe):
    base = Settings(train_batch=8)
    assert finetune_recipe.recipe_settings(base, "small-data").train_precision == "auto"
    bf16 = finetune_recipe.recipe_settings(base, "small-data@600:bf16")
    assert (bf16.train_recipe, bf16.train_min_steps, bf16.train_precision) == ("small-data", 600, "bf16")
    assert finetune_recipe.recipe_settings(base, "ultralytics:fp32").train_precision == "fp32"


def test_a_recipe_may_name_the_layers_it_keeps(finetune_recipe):
    base = Settings(train_batch=8)
    assert finetune_recipe.recipe_settings(base, "small-data").train_freeze == 0
    frozen = finetune_recipe.recipe_settings(base, "small-data@400:bf16+freeze10")
    assert (frozen.train_min_steps, frozen.train_precision, frozen.train_freeze) == (400, "bf16", 10)
    assert finetune_recipe.recipe_settings(base, "small-data+freeze3").train_freeze == 3


def test_a_recipe_may_name_its_batch(finetune_recipe):
    base = Settings(train_batch=8)
    assert finetune_recipe.recipe_settings(base, "small-data@600").train_batch == 8
    wide = finetune_recipe.recipe_settings(base, "small-data@300x16:bf16+freeze10")
    assert (wide.train_min_steps, wide.train_batch, wide.train_precision, wide.train_freeze) == (300, 16, "bf16", 10)


@pytest.mark.parametrize(
    "recipe",
    [
        "fast", "ultralytics@600", "small-data@", "small-data@0", "small-data@six", "small-data:half", "small-data:",
        "small-data+freeze", "small-data+freeze0", "small-data+freezeall", "small-data@300x", "small-data@300x0", "small-data@x16",
    ],
)
def test_a_misnamed_recipe_is_refused_with_the_forms_it_takes(finetune_recipe, recipe):
    with pytest.raises(ValueError, match=r"--recipes: .* small-data@STEPS .*:PRECISION, one of auto, fp32, bf16.* \+freezeLAYERS"):
        finetune_recipe.recipe_settings(Settings(), recipe)


@pytest.mark.slow
def test_a_fine_tune_record_says_how_many_optimizer_steps_it_trained(finetune_recipe, tmp_path):
    """A real one-epoch fine-tune: the record's steps are the adapter's plan, a step per batch of the training split."""
    from label_studio_ale.bench.sources import user_data
    from label_studio_ale.synthetic import make_scene, write_yolo_dataset

    scenes = [make_scene(seed, size=(64, 64), num_classes=2, max_objects=2, min_side=12, max_side=24) for seed in range(16)]
    write_yolo_dataset(tmp_path / "data", scenes, ["ellipse", "box"], split="train")
    (tmp_path / "data" / "data.yaml").write_text("names: [ellipse, box]\n")
    data = user_data(tmp_path / "data")
    settings = Settings(train_epochs=1, train_batch=4, image_size=64, base_model="yolov5n.yaml", model_dir=str(tmp_path / "models"))
    labelled = list(range(len(data.pool)))
    record = finetune_recipe._fine_tune(settings, data, "box", labelled, tmp_path / "work", 0)
    assert record["images"] == len(labelled) and record["epochs"] == 1
    # the validation split (by task id) takes some of the images: at most ceil(n / 4) batches, at least one
    assert 1 <= record["steps"] <= -(-len(labelled) // 4)
