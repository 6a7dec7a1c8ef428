"""benchmarks/finetune_recipe.py: which training settings each named recipe runs with."""

import importlib.util
from pathlib import Path

import pytest

from label_studio_ale.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finetune_recipe():
    spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "benchmarks" / "finetune_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_recipe_may_name_its_fewest_steps(finetune_recipe):
    base = Settings(train_batch=8)
    plain = finetune_recipe.recipe_settings(base, "small-data")
    assert (plain.train_recipe, plain.train_epochs, plain.train_min_steps) == ("small-data", 0, 0)
    longer = finetune_recipe.recipe_settings(base, "small-data@1000")
    assert (longer.train_recipe, longer.train_epochs, longer.train_min_steps, longer.train_batch) == ("small-data", 0, 1000, 8)
    old = finetune_recipe.recipe_settings(base, "ultralytics")
    assert (old.train_recipe, old.train_epochs) == ("ultralytics", finetune_recipe.BASELINE_EPOCHS)


@pytest.mark.parametrize("recipe", ["fast", "ultralytics@600", "small-data@", "small-data@0", "small-data@six"])
def test_a_misnamed_recipe_is_refused_with_the_forms_it_takes(finetune_recipe, recipe):
    with pytest.raises(ValueError, match=r"--recipes: .* small-data@STEPS"):
        finetune_recipe.recipe_settings(Settings(), recipe)
