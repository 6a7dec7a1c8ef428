"""Adapter discovery and the policy check for models without per-class scores or embeddings."""

import re
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


@pytest.mark.parametrize("policy", ["novelty", "ale-entropy-sum+novelty", "entropy-mean+diverse", "lc-sum+coreset+cost"])
def test_novelty_and_diversity_need_embeddings(policy):
    """Without embeddings every image is as novel as the next and k-center has nothing to spread: refuse, don't no-op."""
    featureless = SimpleNamespace(version="od-1234", has_class_vectors=True, has_embeddings=False)
    with pytest.raises(PolicyError, match=rf"POLICY={re.escape(policy)} needs image embeddings.*od-1234.*image_embedding"):
        check_policy_fits(featureless, policy)
    check_policy_fits(SimpleNamespace(version="yolo", has_embeddings=True), policy)


@pytest.mark.parametrize("policy", ["ale-entropy-sum", "entropy-mean+cost", "entropy-mean+rare"])
def test_policies_without_embeddings_run_on_a_featureless_model(policy):
    check_policy_fits(SimpleNamespace(version="od", has_class_vectors=True, has_embeddings=False), policy)


def lacking(monkeypatch, *modules):
    """This environment, as one without `modules` (a yolov5 image lacks tensorflow, a tfod image ultralytics and torch)."""
    from label_studio_ale import adapters

    real = adapters.find_spec
    monkeypatch.setattr(adapters, "find_spec", lambda name, *args: None if name in modules else real(name, *args))


def test_an_adapter_whose_framework_is_missing_is_refused_at_start_with_the_fix(monkeypatch):
    """ALE_EXTRAS=tfod builds a TensorFlow image; the default ADAPTER=yolov5 there must fail at start, saying what to set."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.errors import AdapterError
    from label_studio_ale.settings import Settings

    lacking(monkeypatch, "ultralytics", "torch", "tensorflow")
    with pytest.raises(AdapterError) as caught:
        check_adapter_settings(Settings(model_classes=("bird",)))
    message = str(caught.value)
    assert message.startswith("ADAPTER=yolov5 needs ultralytics and torch, which this environment lacks; ")
    assert "set ADAPTER=tfod for a TensorFlow image (ALE_EXTRAS=tfod)" in message
    with pytest.raises(AdapterError, match=r"^ADAPTER=tfod needs tensorflow, which this environment lacks; set ADAPTER=yolov5"):
        check_adapter_settings(Settings(adapter="tfod", model_weights="/models/od-export"))


def test_an_adapter_without_a_framework_fix_names_its_extra(monkeypatch):
    from label_studio_ale.adapters import _importable, check_frameworks
    from label_studio_ale.errors import AdapterError

    check_frameworks("plain", SimpleNamespace(frameworks=("json",)))
    check_frameworks("plain", SimpleNamespace())  # names no framework: nothing to check
    with pytest.raises(AdapterError, match=r"^ADAPTER=plain needs no_such_framework_x, .*pip install 'label-studio-ale\[plain\]'"):
        check_frameworks("plain", SimpleNamespace(frameworks=("json", "no_such_framework_x")))
    assert not _importable("no_such_parent_x.child")  # find_spec raises for a missing parent package


def test_the_default_model_yaml_without_model_classes_is_warned_about_at_start(monkeypatch, caplog):
    """yolov5n.yaml builds a model with no classes: unset MODEL_CLASSES leaves a project without a version unservable
    (/setup 503). Warned, not refused: training takes the label config's classes, and trained versions serve their own."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    with caplog.at_level("WARNING"):
        check_adapter_settings(Settings())
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("MODEL_WEIGHTS=yolov5n.yaml builds an untrained model from a yaml, which needs MODEL_CLASSES")
    assert "a trained .pt in the models volume and set MODEL_WEIGHTS to it" in warning and "MODEL_CLASSES=bird,nest" in warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_adapter_settings(Settings(model_classes=("bird", "nest")))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("weights", ["yolov8n.yaml", "/models/birds.pt"])
def test_yolo_weights_under_the_tfod_adapter_are_refused(weights):
    """The tfod adapter's own check (run here without TensorFlow: it imports none); the untouched default
    MODEL_WEIGHTS is warned about instead (tests/plugins/test_tfod_adapter.py)."""
    from label_studio_ale.adapters import adapter_class
    from label_studio_ale.errors import AdapterError
    from label_studio_ale.settings import Settings

    tfod = adapter_class(Settings(adapter="tfod"))
    with pytest.raises(AdapterError, match=rf"MODEL_WEIGHTS={weights} is a yolov5 model .* set MODEL_WEIGHTS to the export folder"):
        tfod.check_settings(Settings(adapter="tfod", model_weights=weights))
    tfod.check_settings(Settings(adapter="tfod", model_weights="/models/od-export"))
