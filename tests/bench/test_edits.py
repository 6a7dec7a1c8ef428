"""What an annotator changes in the pre-annotations of the images a cycle labels."""

from pathlib import Path

import numpy as np
import pytest

from label_studio_ale.annotation_edits import EditCounts
from label_studio_ale.bench.edits import shown_edits
from label_studio_ale.datasets import LabelledImage
from label_studio_ale.detections import Detections
from label_studio_ale.evaluation import GroundTruth
from label_studio_ale.serving import ServingFilters
from label_studio_ale.settings import Settings

NAMES = ["a", "b", "c"]
#: the model's classes in another order, and without "c"
MODEL_CLASSES = ["b", "a"]


def _image(name, xyxy, labels):
    return LabelledImage(Path(name), GroundTruth(np.array(xyxy, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64), (128, 128)))


def _found(xyxy, probs):
    return Detections(np.array(xyxy, dtype=np.float64).reshape(-1, 4), np.array(probs, dtype=np.float64).reshape(-1, 2), (128, 128))


def test_each_labelled_image_is_compared_with_the_boxes_the_serving_filters_show():
    items = [
        _image("one.png", [[10, 10, 30, 30], [50, 50, 70, 70]], [0, 1]),  # an "a" and a "b"
        _image("two.png", [[0, 0, 20, 20]], [2]),  # a "c", which the model has no class for
    ]
    detections = [
        _found(
            [[10, 10, 30, 30], [50, 50, 70, 70], [90, 90, 110, 110]],
            # model class 1 is "a": right; "a" where the truth is "b": relabelled; below SCORE_THRESHOLD: not shown
            [[0.05, 0.9], [0.1, 0.8], [0.01, 0.02]],
        ),
        _found([[60, 60, 90, 90]], [[0.7, 0.1]]),  # a "b" on background: deleted
    ]
    filters = ServingFilters.from_settings(Settings())
    edits = shown_edits(detections, items, MODEL_CLASSES, NAMES, filters)
    # the "c" is drawn new; of the three boxes shown, one is kept as it was
    assert edits == EditCounts(accepted=1, relabelled=1, deleted=1, added=1)
    assert edits.edited == 3 and edits.submitted == 3 and edits.shown == 3
    # a higher SCORE_THRESHOLD shows only the first box: the "b" is drawn, nothing is deleted
    strict = ServingFilters.from_settings(Settings(score_threshold=0.85))
    assert shown_edits(detections, items, MODEL_CLASSES, NAMES, strict) == EditCounts(accepted=1, added=2)


def test_a_model_class_the_dataset_lacks_is_not_shown_and_lengths_must_match():
    items = [_image("one.png", [[10, 10, 30, 30]], [0])]
    detections = [_found([[10, 10, 30, 30], [60, 60, 80, 80]], [[0.1, 0.9], [0.9, 0.1]])]
    filters = ServingFilters.from_settings(Settings())
    # the model's "z" box is not shown to an annotator whose labels have no "z": not counted as deleted
    assert shown_edits(detections, items, ["z", "a"], NAMES, filters) == EditCounts(accepted=1)
    with pytest.raises(ValueError, match="one Detections per labelled image: got 2 for 1"):
        shown_edits(detections * 2, items, MODEL_CLASSES, NAMES, filters)


def test_the_initial_set_is_compared_with_the_base_model_s_boxes(trained_weights, tmp_path):
    from label_studio_ale.bench.simulation import BenchConfig, BenchData, base_model_edits
    from label_studio_ale.datasets import read_dataset
    from label_studio_ale.synthetic import make_scene, write_yolo_dataset
    from tests.support.models import CLASSES, HELD_OUT_SEEDS, IMAGE_SIZE

    names = CLASSES + ["egg"]  # a class the base model was never trained on
    write_yolo_dataset(tmp_path, [make_scene(seed) for seed in HELD_OUT_SEEDS], names, split="all")
    (tmp_path / "data.yaml").write_text("names: [" + ", ".join(names) + "]\n")
    _, pool = read_dataset(tmp_path, "yolo")
    data = BenchData(names, pool, pool)
    initial = list(range(6))
    boxes = sum(len(pool[i].truth.labels) for i in initial)
    settings = Settings(image_size=IMAGE_SIZE)

    trained = base_model_edits(BenchConfig(base_model=str(trained_weights), image_size=IMAGE_SIZE), data, settings, initial)
    # every true box is submitted once; the detector trained on such scenes gets most of them right as shown
    assert trained.submitted == boxes and trained.accepted + trained.moved >= boxes / 2
    # from a yaml there is no trained model to pre-annotate with: every box is drawn
    assert base_model_edits(BenchConfig(base_model="yolov5n.yaml", image_size=IMAGE_SIZE), data, settings, initial) == EditCounts(added=boxes)
