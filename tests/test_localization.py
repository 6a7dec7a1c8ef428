"""Localization-aware uncertainty: each box's instability under a horizontal flip, as a per-box metric."""

import numpy as np
import pytest
from PIL import Image

from label_studio_ale.detections import Detections
from label_studio_ale.policies import get_policy
from label_studio_ale.policy_suffixes import needs_localization
from label_studio_ale.predictor import Predictor
from label_studio_ale.scoring import flip_instability
from label_studio_ale.serving import raw_output_key
from label_studio_ale.settings import Settings


def mirrored(xyxy, width):
    xyxy = np.asarray(xyxy, dtype=float)
    return np.stack([width - xyxy[:, 2], xyxy[:, 1], width - xyxy[:, 0], xyxy[:, 3]], axis=1)


def test_a_box_that_does_not_move_is_stable_and_instability_grows_with_displacement():
    box = np.array([[10.0, 20.0, 30.0, 40.0]])
    assert flip_instability(box, mirrored(box, 100), 100).tolist() == [0.0]
    shifts = [0, 2, 5, 10, 20]
    values = [flip_instability(box, mirrored(box + [s, 0, s, 0], 100), 100)[0] for s in shifts]
    assert values[0] == 0.0 and all(a < b for a, b in zip(values, values[1:])) and values[-1] == 1.0
    # 5 px on a 20 px box: intersection 15 x 20, union 25 x 20
    assert values[2] == pytest.approx(1 - 15 / 25)
    # each box takes its best match; a box with no counterpart at all is 1
    two = np.array([[10.0, 20.0, 30.0, 40.0], [60.0, 60.0, 80.0, 90.0]])
    assert flip_instability(two, mirrored(two[[1, 0]], 100), 100).tolist() == [0.0, 0.0]
    assert flip_instability(two, np.zeros((0, 4)), 100).tolist() == [1.0, 1.0]
    assert flip_instability(np.zeros((0, 4)), two, 100).tolist() == []


def test_every_aggregation_and_the_ale_extension_apply_to_instability():
    d = Detections([[0, 0, 4, 4], [1, 1, 5, 5]], [[0.9], [0.8]], (8, 8), instability=[0.2, 0.6])
    empty = Detections.empty(1, (8, 8)).with_instability([])
    for name, expected in [("loc-sum", 0.8), ("loc-max", 0.6), ("loc-mean", 0.4), ("loc-min", 0.2), ("ale-loc-sum", 0.8 * np.sqrt(2))]:
        policy = get_policy(name)
        assert policy.name == name and needs_localization(policy) and not policy.needs_class_vectors
        assert policy.usefulness([d, empty]).tolist() == pytest.approx([expected, 0.0])
    assert needs_localization(get_policy("ale-loc-max+cost+diverse")) and not needs_localization(get_policy("ale-entropy-sum"))
    assert d[np.array([False, True])].instability.tolist() == [0.6], "filters keep each box's own value"
    with pytest.raises(ValueError, match="needs each box's flip instability"):
        get_policy("loc-sum").usefulness([Detections([[0, 0, 4, 4]], [[0.9]], (8, 8))])
    with pytest.raises(ValueError, match="instability must be finite"):
        Detections([[0, 0, 4, 4]], [[0.9]], (8, 8), instability=[1.5])


class FixedBoxes:
    """An adapter that finds one box at the same pixels whatever the image: mirrored, it moves."""

    classes = ("bird",)
    version = "fixed"
    trained = True

    def __init__(self):
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        return [Detections([[10, 10, 30, 30]], [[0.9]], image.size) for image in images]


def test_a_loc_policy_predicts_each_batch_a_second_time_mirrored_and_stores_under_its_own_key():
    adapter = FixedBoxes()
    images = [Image.new("RGB", (100, 50)), Image.new("RGB", (40, 40))]
    plain = Predictor(Settings(policy="ale-entropy-sum"), adapter, None).raw(images)
    assert adapter.calls == 1 and all(d.instability is None for d in plain)
    found = Predictor(Settings(policy="ale-loc-sum"), adapter, None).raw(images)
    assert adapter.calls == 3, "one more pass, on the mirrored batch"
    # (10..30) mirrored in a 100 px frame sits at 70..90: no overlap; in a 40 px frame at 10..30: the same place
    assert found[0].instability.tolist() == [1.0] and found[1].instability.tolist() == [0.0]
    assert raw_output_key("v1", Settings(policy="ale-loc-sum")) == "v1@flip"
    assert raw_output_key("v1", Settings(policy="ale-entropy-sum")) == "v1"
