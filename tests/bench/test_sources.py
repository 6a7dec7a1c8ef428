import numpy as np
import pytest

from label_studio_ale.bench.cli import PRESETS
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


def test_a_pool_in_bursts_is_generated_apart_and_the_evaluation_set_is_shared(tmp_path):
    import pytest

    from label_studio_ale.bench.sources import builtin_data

    plain, new_class = builtin_data(tmp_path, 12, 4, 96)
    bursts, _ = builtin_data(tmp_path, 12, 4, 96, burst=4)
    assert new_class == "digit-0"
    assert "3 scenes in bursts of 4 frames" in bursts.description and "bursts" not in plain.description
    assert (bursts.burst, plain.burst) == (4, 1)
    assert len(bursts.pool) == 12 and bursts.pool[0].path.parent != plain.pool[0].path.parent
    assert [item.path for item in bursts.evaluation] == [item.path for item in plain.evaluation]
    # the first frame of each burst is that scene as a plain pool draws it
    for scene in range(3):
        np.testing.assert_allclose(bursts.pool[4 * scene].truth.xyxy, plain.pool[scene].truth.xyxy)
    with pytest.raises(ValueError, match="--burst must be 1"):
        builtin_data(tmp_path, 12, 4, 96, burst=0)


def test_a_pool_with_a_rarer_new_class_is_generated_apart_and_the_evaluation_set_is_shared(tmp_path):
    import pytest

    from label_studio_ale.bench.sources import builtin_data

    plain, _ = builtin_data(tmp_path, 60, 4, 96)
    rare, new_class = builtin_data(tmp_path, 60, 4, 96, new_class_share=0.04)
    assert new_class == "digit-0"
    assert "the new class drawn for 4% of its objects" in rare.description and "new class" not in plain.description
    assert rare.pool[0].path.parent != plain.pool[0].path.parent
    # the default pool is cached where it was before the option existed: earlier runs and base models stay valid
    assert "pool-60" in plain.pool[0].path.relative_to(tmp_path).parts
    assert "pool-60-new0.04" in rare.pool[0].path.relative_to(tmp_path).parts
    assert [item.path for item in rare.evaluation] == [item.path for item in plain.evaluation]
    new = plain.names.index("digit-0")
    count = lambda data: sum(int((item.truth.labels == new).sum()) for item in data.pool)  # noqa: E731
    assert count(rare) < count(plain)
    # the same scenes, labelled from another draw: as many objects in each image
    assert [len(item.truth.labels) for item in rare.pool] == [len(item.truth.labels) for item in plain.pool]
    with pytest.raises(ValueError, match="between 0 and 1"):
        builtin_data(tmp_path, 12, 4, 96, new_class_share=1.0)


class _Stop(Exception):
    """Raised by the stubbed trainer: the test only needs the settings it was asked to train with."""


def _base_model_training_settings(tmp_path, monkeypatch, callers) -> list:
    """The settings `builtin_base_model` hands the trainer for each caller's settings (the trainer stubbed at its seam)."""
    from label_studio_ale import training
    from label_studio_ale.bench.sources import builtin_base_model

    asked = []

    def train_version(settings, *args, **kwargs):
        asked.append(settings)
        raise _Stop

    monkeypatch.setattr(training, "train_version", train_version)
    for settings in callers:
        with pytest.raises(_Stop):
            builtin_base_model(tmp_path, settings, 4, 1, 64, "cpu", log=lambda message: None)
    return asked


def test_the_base_model_trains_every_layer_whatever_train_freeze_the_loop_uses(tmp_path, monkeypatch):
    """TRAIN_FREEZE is for fine-tunes from trained weights: the built-in base model, trained from a yaml, trains
    every layer and is cached where an unfrozen run's is."""
    frozen = Settings(train_freeze=10)
    asked = _base_model_training_settings(tmp_path, monkeypatch, [frozen])
    assert [(s.train_freeze, s.base_model) for s in asked] == [(0, "yolov5n.yaml")]
    assert base_model_dir(tmp_path, frozen, 4, 1, 64) == base_model_dir(tmp_path, Settings(), 4, 1, 64)


def test_the_base_model_trains_at_one_batch_whatever_train_batch_the_caller_uses(tmp_path, monkeypatch):
    """`ale bench al` (TRAIN_BATCH, 16 by default) and the fine-tune benchmark (the preset's 8) share the cached base
    model, so it must not depend on which of them trained it first."""
    from label_studio_ale.bench.sources import BASE_BATCH

    asked = _base_model_training_settings(tmp_path, monkeypatch, [Settings(train_batch=8), Settings(train_batch=32)])
    assert [s.train_batch for s in asked] == [BASE_BATCH, BASE_BATCH] and BASE_BATCH == 16
    assert base_model_dir(tmp_path, Settings(train_batch=8), 4, 1, 64) == base_model_dir(tmp_path, Settings(), 4, 1, 64)
    # a model cached under the key that had no batch in it is not taken for one trained at BASE_BATCH
    assert f"-b{BASE_BATCH}-" in base_model_dir(tmp_path, Settings(), 4, 1, 64).name


def test_a_voc_evaluation_folder_without_one_class_is_read_in_the_pools_class_order(tmp_path):
    """A rare class absent from the evaluation folder is no reason to refuse it: its names come from its files."""
    import re

    from label_studio_ale.bench.sources import user_data
    from tests.test_datasets import write_voc

    pool = write_voc(tmp_path / "pool")
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    write_voc(evaluation)
    for xml in (evaluation / "Annotations").glob("*.xml"):  # the evaluation set keeps its birds only
        xml.write_text(re.sub(r"<object><name>nest</name>.*?</object>", "", xml.read_text()))
    data = user_data(pool, eval_path=evaluation)
    assert data.names == ["bird", "nest"]
    assert sum(len(item.truth.labels) for item in data.evaluation) > 0
    assert all((item.truth.labels == 0).all() for item in data.evaluation)


def test_an_evaluation_set_that_shares_images_with_the_pool_is_refused(tmp_path):
    import shutil

    from label_studio_ale.bench.sources import user_data
    from tests.test_datasets import write_voc

    pool = write_voc(tmp_path / "pool")
    with pytest.raises(ValueError, match=r"evaluation set holds 3 of the pool's images .*not in --data"):
        user_data(pool, eval_path=pool)
    copy = tmp_path / "copy"
    shutil.copytree(pool, copy)
    assert len(user_data(pool, eval_path=copy).evaluation) == 3


def test_the_evaluation_data_is_read_in_its_own_format(tmp_path):
    """--format names --data's format: a COCO pool evaluated on a YOLO folder reads that folder as YOLO."""
    from label_studio_ale.bench.sources import user_data
    from tests.test_datasets import write_coco, write_yolo

    pool = write_coco(tmp_path / "coco")
    data = user_data(pool, "coco", eval_path=write_yolo(tmp_path / "yolo"))
    assert len(data.pool) == len(data.evaluation) == 3 and data.evaluation[0].path.parent.name == "train"
    with pytest.raises(ValueError, match="yolo/result.json: not a readable COCO json"):
        user_data(pool, "coco", eval_path=tmp_path / "yolo", eval_format="coco")


def test_the_built_in_scenes_take_the_paths_they_took_before(tmp_path):
    """What keeps `ale bench al --preset small` reproducing its results: no box of the digit scenes is difficult or
    without area (every box trains and counts), a 128 px scene is never tiled, and the pool is predicted LOAD_CHUNK
    images at a time, as before chunks were also closed by PREDICT_CHUNK_PIXELS."""
    from label_studio_ale.bench.digits import DigitScenes
    from label_studio_ale.bench.simulation import LOAD_CHUNK, training_sample
    from label_studio_ale.bench.sources import load_chunks
    from label_studio_ale.datasets import read_dataset
    from label_studio_ale.tile_dataset import TrainingTiles

    settings = Settings().replace(image_size=PRESETS["small"]["image_size"])
    root = DigitScenes(size=PRESETS["small"]["image_size"]).write(tmp_path / "pool", 40, 0, 0)
    _, items = read_dataset(root, "yolo")
    assert sum(len(item.truth.labels) for item in items) > 40
    for index, item in enumerate(items):
        assert not item.truth.difficult.any()
        sample = training_sample(index, item)
        assert np.array_equal(sample.xyxy, item.truth.xyxy) and np.array_equal(sample.labels, item.truth.labels)
        assert not TrainingTiles.from_settings(settings).tiles.applies(item.truth.image_size)
    paths = [item.path for item in items] * 5  # 200 images
    chunks = load_chunks(paths, settings.predict_chunk_pixels)
    assert chunks == [list(range(k, min(k + LOAD_CHUNK, len(paths)))) for k in range(0, len(paths), LOAD_CHUNK)]
