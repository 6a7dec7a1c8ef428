from label_studio_ale.bench.sources import base_model_dir
from label_studio_ale.settings import Settings


def test_a_base_model_trained_in_another_precision_or_recipe_is_cached_apart(tmp_path):
    settings = Settings(model_weights="yolov5n.yaml")
    here = base_model_dir(tmp_path, settings, 240, 40, 128)
    assert here == base_model_dir(tmp_path, settings.replace(train_precision="auto"), 240, 40, 128)
    others = [
        base_model_dir(tmp_path, settings.replace(train_precision="fp32"), 240, 40, 128),
        base_model_dir(tmp_path, settings.replace(train_precision="bf16"), 240, 40, 128),
        base_model_dir(tmp_path, settings.replace(train_recipe="ultralytics"), 240, 40, 128),
        base_model_dir(tmp_path, settings, 120, 40, 128),
        base_model_dir(tmp_path, settings, 240, 20, 128),
        base_model_dir(tmp_path, settings, 240, 40, 96),
    ]
    assert len({here, *others}) == 7
    assert all(path.is_relative_to(tmp_path) for path in others)
