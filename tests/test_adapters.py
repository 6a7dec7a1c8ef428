"""Adapter discovery and the policy check for models without per-class scores."""

from types import SimpleNamespace

import pytest

from label_studio_ale.adapters import available_adapters, check_policy_fits
from label_studio_ale.errors import PolicyError


def test_both_adapters_are_registered_as_entry_points():
    found = available_adapters()
    assert found["yolov5"].value == "label_studio_ale_plugins.yolov5:YoloV5Adapter"
    assert found["tfod"].value == "label_studio_ale_plugins.tfod:TfodAdapter"


@pytest.mark.parametrize("policy", ["ale-entropy-sum", "lc-max", "entropy-mean"])
def test_uncertainty_policies_need_class_vectors(policy):
    single_score = SimpleNamespace(version="od-1234", has_class_vectors=False)
    with pytest.raises(PolicyError, match=rf"POLICY={policy} needs every box's per-class scores.*od-1234.*min-confidence"):
        check_policy_fits(single_score, policy)


@pytest.mark.parametrize("policy", ["min-confidence", "mean-confidence", "weighted-confidence", "random"])
def test_confidence_policies_run_on_any_model(policy):
    check_policy_fits(SimpleNamespace(version="od", has_class_vectors=False), policy)


def test_adapters_that_say_nothing_have_class_vectors():
    check_policy_fits(SimpleNamespace(version="yolo"), "ale-entropy-sum")
