"""What an annotator sees: hidden classes, the serving filters, and the model's own floor."""

import numpy as np
import pytest

from label_studio_ale.detections import Detections
from label_studio_ale.policies import get_policy
from label_studio_ale.serving import (
    MODEL_MAX_DETECTIONS,
    MODEL_SCORE_FLOOR,
    ServingFilters,
    model_max_detections,
    model_score_floor,
    raw_output_key,
    shown_classes,
    shown_detections,
)
from label_studio_ale.settings import Settings

OPEN = ServingFilters(score_threshold=0.0, nms_metric="iou", nms_threshold=1.0, max_tags_per_pixel=0, max_detections=300)


def raw():
    """A bird, a car (hidden below) on top of the bird, and an unsure bird that is nearly a car."""
    return Detections(
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]],
        [[0.9, 0.05], [0.1, 0.8], [0.4, 0.35]],
        (40, 40),
    )


def test_boxes_of_hidden_classes_are_dropped_and_their_columns_zeroed():
    shown = shown_classes(("bird", None))
    assert shown.tolist() == [0, -1]
    seen = shown_detections(raw(), shown, OPEN)
    assert len(seen) == 2 and seen.labels.tolist() == [0, 0]
    np.testing.assert_allclose(seen.class_probs, [[0.9, 0.0], [0.4, 0.0]])
    # labels, scores and background of the kept boxes are the model's own
    np.testing.assert_allclose(seen.scores, [0.9, 0.4])
    np.testing.assert_allclose(seen.background, [0.1, 0.6])
    # with every class shown, nothing changes
    everything = shown_detections(raw(), np.ones(2, dtype=bool), OPEN)
    np.testing.assert_array_equal(everything.class_probs, raw().class_probs)


def test_uncertainty_is_measured_over_the_shown_classes_only():
    """The unsure bird is less uncertain once the car, which nobody can label here, is out of its vector."""
    policy = get_policy("entropy-sum")
    all_shown = policy.usefulness([shown_detections(raw()[np.array([2])], np.ones(2, dtype=bool), OPEN)])
    bird_only = policy.usefulness([shown_detections(raw()[np.array([2])], np.array([True, False]), OPEN)])
    assert bird_only[0] < all_shown[0]
    p = np.array([0.4, 0.6])  # bird, background
    assert bird_only[0] == pytest.approx(-(p * np.log(p)).sum())


def test_hidden_boxes_take_no_slot_of_the_tag_limit_or_the_cap():
    # the car is the strongest box: shown, it takes the only tag of those pixels and the only slot;
    # hidden, it is gone before the filters run, and the bird under it is served
    det = Detections([[0, 0, 10, 10], [0, 0, 10, 10]], [[0.1, 0.95], [0.7, 0.1]], (20, 20))
    limit = ServingFilters(0.0, "iou", 1.0, max_tags_per_pixel=1, max_detections=1)
    assert shown_detections(det, np.array([True, True]), limit).labels.tolist() == [1]
    assert shown_detections(det, np.array([True, False]), limit).labels.tolist() == [0]


def test_serving_filters_come_from_the_settings():
    settings = Settings(score_threshold=0.5, nms_metric="iomin", nms_threshold=0.3, max_tags_per_pixel=2, max_detections=7)
    filters = ServingFilters.from_settings(settings)
    assert filters == ServingFilters(0.5, "iomin", 0.3, 2, 7)
    assert len(shown_detections(raw(), np.ones(2, dtype=bool), filters)) == 2  # the 0.4 bird is under 0.5


def test_shown_mask_must_fit_the_class_count():
    with pytest.raises(ValueError, match="shown must have shape"):
        shown_detections(raw(), np.ones(3, dtype=bool), OPEN)
    with pytest.raises(ValueError, match="bool mask or int label groups"):
        shown_detections(raw(), np.ones(2), OPEN)


def test_classes_shown_as_one_label_are_suppressed_as_one():
    """<Label value="Kittiwake" predicted_values="bird,kittiwake"/>: one animal scored as both is one Kittiwake box."""
    # person, bird, kittiwake: a class-aware model NMS lets one box per class through on the same animal
    det = Detections([[100, 100, 200, 180], [102, 101, 199, 182], [300, 300, 340, 340]], [[0.0, 0.8, 0.7], [0.0, 0.65, 0.72], [0.0, 0.0, 0.6]], (640, 480))
    nms = ServingFilters(score_threshold=0.0, nms_metric="iou", nms_threshold=0.5, max_tags_per_pixel=0, max_detections=300)
    shown = shown_classes((None, "Kittiwake", "Kittiwake"))
    assert shown.tolist() == [-1, 0, 0]
    seen = shown_detections(det, shown, nms)
    assert seen.labels.tolist() == [1, 2] and seen.scores.tolist() == [0.8, 0.6], "the stronger box of the animal, and the other animal"
    # the kept box keeps its model class and its own class vector (hidden columns zeroed)
    np.testing.assert_allclose(seen.class_probs[0], [0.0, 0.8, 0.7])
    # two labels: two boxes, as before
    assert len(shown_detections(det, shown_classes((None, "bird", "Kittiwake")), nms)) == 3
    assert len(shown_detections(det, np.array([False, True, True]), nms)) == 3, "a bool mask: each class a group of its own"


def test_the_model_floor_and_the_store_key_follow_the_settings():
    default = Settings()
    assert model_score_floor(default) == MODEL_SCORE_FLOOR and model_max_detections(default) == MODEL_MAX_DETECTIONS
    assert raw_output_key("v0003", default) == "v0003"
    # a threshold above the floor needs nothing new from the model
    assert raw_output_key("v0003", Settings(score_threshold=0.6)) == "v0003"
    low = Settings(score_threshold=0.01)
    assert model_score_floor(low) == 0.01 and raw_output_key("v0003", low) == "v0003@floor=0.01,max=300"
    many = Settings(max_detections=1000)
    assert model_max_detections(many) == 1000 and raw_output_key("v0003", many) == "v0003@floor=0.05,max=1000"
    # another input size: the same weights see every image (and tile) at another size
    assert raw_output_key("v0003", Settings(image_size=1024)) == "v0003@size=1024"
    assert raw_output_key("v0003", Settings(image_size=1024, tile_size=640)).startswith("v0003@size=1024;tile=640")
