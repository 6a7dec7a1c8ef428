"""The TensorFlow OD API adapter. Runs only in the TensorFlow environment (scripts/setup tfod), never beside torch."""

import sys

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow", reason="the tfod tests run in the TensorFlow environment: scripts/test runs them there")

from label_studio_ale.errors import AdapterError  # noqa: E402
from label_studio_ale_plugins.tfod import TfodAdapter, read_label_map  # noqa: E402
from tests.support.tf_models import BOXES, MULTICLASS, export_od_model  # noqa: E402


def test_torch_is_never_loaded_beside_tensorflow():
    assert "torch" not in sys.modules and "ultralytics" not in sys.modules


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_od_model(tmp_path_factory.mktemp("od"))


def test_boxes_come_back_in_pixels_with_the_multiclass_scores_minus_background(export):
    adapter = TfodAdapter(export)
    assert adapter.classes == ("bird", "nest") and adapter.has_class_vectors
    assert adapter.version.startswith(f"{export.name}-")
    for size in ((200, 100), (64, 480)):
        (det,) = adapter.predict([Image.new("RGB", size)])
        width, height = size
        expected = BOXES[:2][:, [1, 0, 3, 2]] * [width, height, width, height]
        np.testing.assert_allclose(det.xyxy, expected, rtol=1e-5)
        np.testing.assert_allclose(det.class_probs, MULTICLASS[:2, 1:], rtol=1e-6)
        assert det.labels.tolist() == [0, 1] and det.image_size == size


def test_an_od_api_export_has_no_embedding_output_and_predicts_without_one(export):
    adapter = TfodAdapter(export)
    assert not adapter.has_embeddings and adapter.forward_calls == 0
    found = adapter.predict([Image.new("RGB", (40, 30)), Image.new("RGB", (30, 40))])
    assert [d.embedding for d in found] == [None, None] and [len(d) for d in found] == [2, 2]
    assert adapter.forward_calls == 2


def test_without_multiclass_scores_each_box_carries_only_its_own_score(tmp_path):
    adapter = TfodAdapter(export_od_model(tmp_path, multiclass=False))
    assert not adapter.has_class_vectors
    (det,) = adapter.predict([Image.new("RGB", (50, 50))])
    np.testing.assert_allclose(det.class_probs, [[0.8, 0.0], [0.0, 0.45]], rtol=1e-6)


def test_classes_from_settings_override_the_label_map_and_must_fit_the_outputs(export):
    assert TfodAdapter(export, classes=("a", "b")).classes == ("a", "b")
    with pytest.raises(AdapterError, match="has 3 columns, expected 4"):
        TfodAdapter(export, classes=("a", "b", "c")).predict([Image.new("RGB", (8, 8))])


def test_the_score_floor_drops_weak_boxes(export):
    (det,) = TfodAdapter(export, score_floor=0.5).predict([Image.new("RGB", (10, 10))])
    assert len(det) == 1 and det.labels.tolist() == [0]


def test_unusable_exports_are_refused_with_the_fix(tmp_path):
    with pytest.raises(AdapterError, match="no saved_model.pb"):
        TfodAdapter(tmp_path)
    export_od_model(tmp_path / "nolabels", label_map=None)
    with pytest.raises(AdapterError, match="set MODEL_CLASSES"):
        TfodAdapter(tmp_path / "nolabels")


@pytest.mark.parametrize(
    "text, message",
    [
        ("item { id: 0 name: 'background' }", r"class ids start at 1 \(0 is the background\), got 0"),
        ("item { id: 1 name: 'a' }\nitem { id: 1 name: 'b' }", "class id 1 is listed twice"),
        ("item { name: 'a' }", "needs an id and a name"),
        ("nothing here", "holds no"),
    ],
)
def test_label_maps_are_read_in_id_order_and_checked(tmp_path, text, message):
    path = tmp_path / "label_map.pbtxt"
    path.write_text('item {\n  id: 2\n  name: "nest"\n}\nitem {\n  id: 1\n  display_name: "bird"\n}\n')
    assert read_label_map(path) == ["bird", "nest"]
    path.write_text(text)
    with pytest.raises(AdapterError, match=message):
        read_label_map(path)


def test_a_label_map_names_classes_by_display_name_and_fills_id_gaps(tmp_path):
    """The OD API's own maps (mscoco_label_map.pbtxt): name is a Freebase MID, display_name the class; ids 1..90 for 80 classes."""
    path = tmp_path / "mscoco_label_map.pbtxt"
    path.write_text(
        'item {\n  name: "/m/01g317"\n  id: 1\n  display_name: "person"\n}\n'
        'item {\n  name: "/m/0jbk"\n  id: 4\n  display_name: "stop sign"\n}\n'
        "item { id: 2 name: 'bicycle' }\n"
    )
    assert read_label_map(path) == ["person", "bicycle", "class_3", "stop sign"]


def test_an_export_whose_label_map_skips_ids_keeps_its_columns_in_line(tmp_path):
    """Ids 1 and 3: class 3 is the third class and the fourth multiclass column; id 2 is a placeholder no label matches."""
    from tests.support.tf_models import export_fixed_detections

    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]], dtype=np.float32)
    rows = np.array([[0.1, 0.8, 0.0, 0.1], [0.2, 0.1, 0.0, 0.7]], dtype=np.float32)  # background, bird, (id 2), nest
    label_map = "item { id: 1 display_name: 'bird' }\nitem { id: 3 display_name: 'nest' }\n"
    export = export_fixed_detections(tmp_path, boxes, np.array([0.8, 0.7], np.float32), np.array([1, 3], np.float32), 2, rows, label_map)
    adapter = TfodAdapter(export)
    assert adapter.classes == ("bird", "class_2", "nest")
    (det,) = adapter.predict([Image.new("RGB", (10, 10))])
    assert det.labels.tolist() == [0, 2]
    np.testing.assert_allclose(det.class_probs, rows[:, 1:], rtol=1e-6)
    from label_studio_ale.ls_format import match_labels, parse_label_config

    config = parse_label_config(
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="bird"/><Label value="nest"/></RectangleLabels></View>'
    )
    assert match_labels(adapter.classes, config) == ("bird", None, "nest")


def test_a_foreign_export_keeps_each_detections_class_score_and_real_background(tmp_path):
    """Per-class NMS repeats an anchor once per class with the anchor's whole row; the row is a softmax distribution."""
    from tests.support.tf_models import FOREIGN_MULTICLASS, export_foreign_od_model

    adapter = TfodAdapter(export_foreign_od_model(tmp_path))
    (det,) = adapter.predict([Image.new("RGB", (100, 100))])
    # label and score are the detection's own, not the argmax of its row
    assert det.labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(det.scores, [0.7, 0.6, 0.3], rtol=1e-6)
    # the class vector is the anchor's row, and column 0 is kept as the real background
    np.testing.assert_allclose(det.class_probs, FOREIGN_MULTICLASS[:3, 1:], rtol=1e-6)
    np.testing.assert_allclose(det.background, FOREIGN_MULTICLASS[:3, 0], rtol=1e-6)
    # so the distribution the policies score is the model's own row, not one rebuilt from 1 - max
    from label_studio_ale.scoring import box_distribution

    np.testing.assert_allclose(box_distribution(det.class_probs, det.background), FOREIGN_MULTICLASS[:3][:, [1, 2, 0]], rtol=1e-6)
    # served: the duplicate nest of anchor A is a nest box of its own at its own score
    from label_studio_ale.ls_format import detections_to_results, parse_label_config

    config = parse_label_config(
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="bird"/><Label value="nest"/></RectangleLabels></View>'
    )
    results = detections_to_results(det[det.scores >= 0.25], ("bird", "nest"), config)
    assert [(r["value"]["rectanglelabels"][0], round(r["score"], 2)) for r in results] == [("nest", 0.7), ("bird", 0.6), ("nest", 0.3)]


def test_a_sigmoid_exports_background_is_one_minus_the_top_score(tmp_path):
    """Rows that are not distributions (this backend's own RetinaNet export) get the derived background."""
    from tests.support.tf_models import export_fixed_detections

    boxes = np.array([[0.1, 0.1, 0.5, 0.5]], dtype=np.float32)
    rows = np.array([[0.5, 0.5, 0.9]], dtype=np.float32)  # sums to 1.9
    adapter = TfodAdapter(export_fixed_detections(tmp_path, boxes, np.array([0.9], np.float32), np.array([2], np.float32), 1, rows))
    (det,) = adapter.predict([Image.new("RGB", (10, 10))])
    np.testing.assert_allclose(det.background, [0.1], rtol=1e-5)


def test_large_images_are_tiled_around_the_tfod_adapter_with_its_class_vectors(export):
    from label_studio_ale.adapters import load_adapter
    from label_studio_ale.settings import Settings
    from label_studio_ale.tiling import SlicedAdapter, tile_windows

    adapter = load_adapter(Settings(adapter="tfod", model_weights=str(export), image_size=200, tile_above=300))
    assert isinstance(adapter, SlicedAdapter) and isinstance(adapter.inner, TfodAdapter) and adapter.has_class_vectors
    (det,) = adapter.predict([Image.new("RGB", (500, 400))])
    assert det.image_size == (500, 400)
    assert ((det.xyxy >= 0) & (det.xyxy <= [500, 400, 500, 400])).all()
    # the export answers the same two normalised boxes for every input: in the first tile they land at 200 px scale
    first = BOXES[:2][:, [1, 0, 3, 2]] * 200
    assert all(any(np.allclose(box, kept) for kept in det.xyxy) for box in first[:1])
    for row in det.class_probs:
        assert any(np.allclose(row, expected) for expected in MULTICLASS[:2, 1:]), "each box keeps its own class vector"
    assert len(det) <= 2 * (len(tile_windows(500, 400, 200, 0.2)) + 1)


def export_with_input(path, dtype):
    """An OD API-style SavedModel whose input_tensor is `dtype` (as --input_type float_image_tensor or
    encoded_image_string_tensor export it) and whose one box scores the image's mean pixel / 255."""

    class Exported(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3] if dtype != tf.string else [None], dtype, name="input_tensor")])
        def serve(self, input_tensor):
            mean = tf.reduce_mean(tf.cast(input_tensor, tf.float32)) if dtype != tf.string else tf.constant(0.5)
            return {
                "detection_boxes": tf.constant([[[0.1, 0.2, 0.5, 0.6]]]),
                "detection_scores": tf.reshape(mean / 255.0, [1, 1]),
                "detection_classes": tf.constant([[1.0]]),
                "num_detections": tf.constant([1.0]),
            }

    module = Exported()
    tf.saved_model.save(module, str(path / "saved_model"), signatures={"serving_default": module.serve})
    (path / "label_map.pbtxt").write_text("item { id: 1 name: 'bird' }\n")
    return path


def test_a_float_image_tensor_export_is_fed_the_same_pixels_as_float32(tmp_path):
    """--input_type float_image_tensor takes 0..255 pixels as float32: fed uint8, every predict failed in TensorFlow."""
    adapter = TfodAdapter(export_with_input(tmp_path / "float", tf.float32))
    (det,) = adapter.predict([Image.new("RGB", (64, 48), (51, 102, 153))])
    np.testing.assert_allclose(det.scores, [102 / 255], rtol=1e-6)  # the pixels unscaled, as the uint8 export gets them
    np.testing.assert_allclose(det.xyxy, [[0.2 * 64, 0.1 * 48, 0.6 * 64, 0.5 * 48]], rtol=1e-6)


def test_an_encoded_image_string_export_is_refused_at_load_with_the_export_to_use(tmp_path):
    with pytest.raises(AdapterError, match=r"takes input_tensor as string .* exporter_main_v2.py --input_type image_tensor"):
        TfodAdapter(export_with_input(tmp_path / "string", tf.string))


def test_train_freeze_is_refused_at_start_instead_of_ignored():
    """The tfod fine-tune trains every layer: a frozen backbone asked of it is an error the server gives at start."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    check_adapter_settings(Settings(adapter="tfod", model_weights="/models/od-export"))  # nothing to refuse
    with pytest.raises(AdapterError, match="TRAIN_FREEZE=10: the tfod adapter's fine-tune trains every layer; set TRAIN_FREEZE=0"):
        check_adapter_settings(Settings(adapter="tfod", model_weights="/models/od-export", train_freeze=10))


def test_a_device_is_refused_at_start_instead_of_ignored():
    """TensorFlow places the tfod adapter's work itself: DEVICE=cuda:0 would be silently trained on the CPU."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    with pytest.raises(AdapterError, match=r"DEVICE=cuda:0: the tfod adapter does not choose a device.*set DEVICE=cpu"):
        check_adapter_settings(Settings(adapter="tfod", device="cuda:0"))


@pytest.mark.parametrize("weights", ["yolov5s.yaml", "models/yolov8n.yml", "/models/birds.pt"])
def test_yolo_weights_are_refused_at_start_under_the_tfod_adapter(weights):
    """YOLO weights set for ADAPTER=tfod are refused at start with the fix."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    with pytest.raises(AdapterError) as caught:
        check_adapter_settings(Settings(adapter="tfod", model_weights=weights))
    message = str(caught.value)
    assert f"MODEL_WEIGHTS={weights} is a yolov5 model" in message and "ADAPTER=tfod serves a SavedModel" in message
    assert "set MODEL_WEIGHTS to the export folder" in message and "ADAPTER=yolov5" in message
    check_adapter_settings(Settings(adapter="tfod", model_weights="/models/od-export/saved_model"))


def test_the_default_model_weights_under_the_tfod_adapter_are_warned_about_not_refused(caplog):
    """A tfod training worker, or a stack serving only projects' own versions, never reads MODEL_WEIGHTS."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    with caplog.at_level("WARNING"):
        check_adapter_settings(Settings(adapter="tfod"))
    assert "MODEL_WEIGHTS=yolov5n.yaml is a yolov5 model" in caplog.text
    assert "only projects with a trained version of their own can be served" in caplog.text


def test_the_yolov5_adapter_is_refused_at_start_in_the_tensorflow_environment():
    """A TensorFlow image (ALE_EXTRAS=tfod) left at the default ADAPTER=yolov5: refused at start with the fix,
    not a ModuleNotFoundError when the model loads; and without importing torch or ultralytics."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    with pytest.raises(AdapterError) as caught:
        check_adapter_settings(Settings(adapter="yolov5"))
    message = str(caught.value)
    assert message.startswith("ADAPTER=yolov5 needs ultralytics and torch, which this environment lacks; ")
    assert "set ADAPTER=tfod for a TensorFlow image (ALE_EXTRAS=tfod)" in message
    assert "torch" not in sys.modules and "ultralytics" not in sys.modules
