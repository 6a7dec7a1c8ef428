"""The trainable tfod detector: built from config, exported in the OD API signature, head grown, fine-tuned.

Runs in the TensorFlow environment only (scripts/test runs it there).
"""

import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the tfod tests run in the TensorFlow environment: scripts/test runs them there")

from label_studio_ale.errors import AdapterError  # noqa: E402
from label_studio_ale.evaluation import GroundTruth, evaluate  # noqa: E402
from label_studio_ale.synthetic import make_scene  # noqa: E402
from label_studio_ale_plugins.tfod import TfodAdapter  # noqa: E402
from label_studio_ale_plugins.tfod.detector import (  # noqa: E402
    DetectorSpec,
    build_detector,
    grow_head,
    load_detector,
    save_detector,
    with_pyramid_outputs,
)
from label_studio_ale_plugins.tfod.training import train_detector  # noqa: E402
from tests.support.models import HELD_OUT_SEEDS  # noqa: E402
from tests.support.tf_models import export_od_model  # noqa: E402

SPEC = DetectorSpec(("bird", "nest"), image_size=64)


def _randomise_class_logits(model, seed=0):
    """Random weights so that every class row differs (fresh rows are all alike)."""
    layer = model.classification_head.prediction_layer
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(0, 0.05, layer.kernel.shape).astype("float32"))
    layer.bias.assign(rng.normal(-2, 1, layer.bias.shape).astype("float32"))


def test_the_export_has_the_od_api_signature_with_every_kept_box_class_vector(tmp_path):
    model = build_detector(SPEC)
    _randomise_class_logits(model)
    folder = save_detector(model, SPEC, tmp_path / "det", max_detections=20)
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    image = np.asarray(make_scene(3).image)  # 128 x 128, stretched to 64 inside the graph
    out = {k: np.asarray(v) for k, v in serve(input_tensor=tf.constant(image[None])).items()}
    count = int(out["num_detections"][0])
    assert 0 < count <= 20
    assert out["detection_boxes"].shape == (1, 20, 4) and out["detection_multiclass_scores"].shape == (1, 20, 3)
    boxes, scores = out["detection_boxes"][0, :count], out["detection_scores"][0, :count]
    multi, ids = out["detection_multiclass_scores"][0, :count], out["detection_classes"][0, :count]
    assert boxes.min() >= 0 and boxes.max() <= 1 and (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    np.testing.assert_allclose(scores, multi[:, 1:].max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(ids, multi[:, 1:].argmax(axis=1) + 1)
    np.testing.assert_allclose(multi[:, 0], 1 - scores, rtol=1e-6)  # no background class: 1 - top score
    assert (np.diff(scores) <= 1e-7).all()  # best first, as the OD API orders them
    assert (folder / "label_map.pbtxt").read_text().count("item {") == 2

    # TfodAdapter serves the folder as it is, class vectors included
    adapter = TfodAdapter(folder)
    assert adapter.classes == ("bird", "nest") and adapter.has_class_vectors
    (found,) = adapter.predict([make_scene(3).image])
    np.testing.assert_allclose(found.class_probs.max(axis=1), scores[scores >= adapter.score_floor], rtol=1e-6)


def test_the_export_adds_the_pooled_pyramid_maps_the_heads_read_as_the_image_embedding(tmp_path):
    model = build_detector(SPEC)
    _randomise_class_logits(model)
    folder = save_detector(model, SPEC, tmp_path / "det", max_detections=20)
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    images = np.stack([np.asarray(make_scene(seed).image) for seed in (3, 4)])
    out = serve(input_tensor=tf.constant(images))
    embedding = np.asarray(out["image_embedding"])
    assert embedding.dtype == np.float32 and embedding.shape == (2, 3 * 256)  # P3-P5, 256 channels each
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    # recomputed from the Keras model: the FPN maps are the very tensors both heads read
    network, keys = with_pyramid_outputs(model)
    assert keys == ["pyramid_P3", "pyramid_P4", "pyramid_P5"]
    heads = [node.input_tensors[0] for head in (model.box_head, model.classification_head) for node in head._inbound_nodes]
    assert all(any(network.output[key] is seen for seen in heads) for key in keys)
    resized = np.asarray(tf.image.resize(tf.cast(images, tf.float32), (64, 64))) / 255.0
    raw = {key: np.asarray(value) for key, value in network(resized, training=False).items()}
    np.testing.assert_allclose(raw["cls_logits"], np.asarray(model(resized, training=False)["cls_logits"]), atol=1e-5)
    pooled = [raw[key].mean(axis=(1, 2)) for key in keys]
    expected = np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in pooled], axis=1)
    np.testing.assert_allclose(embedding, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


def test_growing_the_head_keeps_every_known_class_exactly(tmp_path):
    model = build_detector(SPEC)
    _randomise_class_logits(model)
    grown_spec = DetectorSpec(("bird", "egg", "nest"), image_size=64)
    grown = grow_head(model, SPEC, grown_spec)
    images = np.random.default_rng(1).random((2, 64, 64, 3)).astype("float32")
    before, after = model(images, training=False), grown(images, training=False)
    np.testing.assert_allclose(np.asarray(after["cls_logits"])[..., [0, 2]], np.asarray(before["cls_logits"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(after["bbox_regression"]), np.asarray(before["bbox_regression"]), atol=1e-5)
    # the new class starts near RetinaNet's prior (p = 0.01; its kernel is freshly initialised)
    egg = 1 / (1 + np.exp(-np.asarray(after["cls_logits"])[..., 1]))
    assert np.median(egg) < 0.02

    # saved and loaded, the grown detector is the same model
    save_detector(grown, grown_spec, tmp_path / "grown")
    loaded, spec = load_detector(tmp_path / "grown")
    assert spec == grown_spec
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)["cls_logits"]), np.asarray(after["cls_logits"]), atol=1e-5)

    with pytest.raises(AdapterError, match="only the classes may change"):
        grow_head(model, SPEC, DetectorSpec(("bird",), image_size=128))


def test_growing_the_same_head_twice_gives_the_same_new_class_weights():
    """The fresh logit weights are drawn from a fixed seed: a rerun or a retried job fine-tunes the same start."""
    model = build_detector(SPEC)
    _randomise_class_logits(model)
    grown_spec = DetectorSpec(("bird", "egg", "nest"), image_size=64)
    kernels = []
    for seed in (1, 2):  # whatever the global random state
        tf.random.set_seed(seed)
        np.random.seed(seed)
        kernels.append(np.asarray(grow_head(model, SPEC, grown_spec).classification_head.prediction_layer.kernel))
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert np.std(kernels[0]) > 0  # drawn, not zeros


def test_only_a_detector_this_backend_trained_is_fine_tuned(tmp_path):
    export = export_od_model(tmp_path / "od")
    with pytest.raises(AdapterError, match="not a trainable tfod detector.*an OD API export can be served, not fine-tuned"):
        load_detector(export / "saved_model")
    with pytest.raises(AdapterError, match="BASE_MODEL=yolov5n.yaml.*BASE_MODEL=retinanet"):
        train_detector(tmp_path / "data.yaml", "yolov5n.yaml", tmp_path / "out", epochs=1)
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        DetectorSpec(("bird",), image_size=100)


def test_the_tiny_trained_detector_finds_birds_and_nests_it_never_saw(trained_tf_detector):
    """Trained from config on 40 generated scenes (tests/support/tf_models.py), exported, served by TfodAdapter."""
    adapter = TfodAdapter(trained_tf_detector)
    assert adapter.classes == ("bird", "nest") and adapter.has_class_vectors
    scenes = [make_scene(seed) for seed in HELD_OUT_SEEDS]
    found = adapter.predict([scene.image for scene in scenes])
    truths = [GroundTruth(scene.xyxy, scene.labels, scene.image.size) for scene in scenes]
    metrics = evaluate(truths, found, ["bird", "nest"])
    assert metrics["map50"] > 0.5, metrics
    for detections in found:
        assert detections.class_probs.shape[1] == 2 and ((detections.class_probs >= 0) & (detections.class_probs <= 1)).all()
    assert "torch" not in sys.modules


def test_every_image_gets_an_embedding_from_the_same_signature_call_as_its_boxes(trained_tf_detector):
    adapter = TfodAdapter(trained_tf_detector)
    assert adapter.has_embeddings
    signature, calls = adapter._fn, []

    def counted(**inputs):
        calls.append(inputs["input_tensor"].shape[0])
        return signature(**inputs)

    adapter._fn = counted
    images = [make_scene(seed).image for seed in HELD_OUT_SEEDS[:3]]
    before = adapter.forward_calls
    found = adapter.predict(images + [images[0]])
    assert calls == [1, 1, 1, 1] and adapter.forward_calls == before + 4, "one signature call per image: boxes and embedding both"
    assert all(len(d) for d in found), "the same call gave boxes"
    vectors = np.stack([d.embedding for d in found])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 3 * 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6, err_msg="the same image, the same embedding")
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert not np.allclose(vectors[i], vectors[j], atol=1e-4), "other scenes, other embeddings"
    # kept through the score filter: every subset of the boxes names the same image
    np.testing.assert_array_equal(found[0][found[0].scores >= 0.5].embedding, found[0].embedding)
