"""Which ultralytics checkpoints the yolov5 adapter serves and trains from: detection models whose names number their
head's classes, readable by the installed ultralytics; every other one is refused naming the file and the fix."""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from label_studio_ale.adapters import check_adapter_settings
from label_studio_ale.errors import AdapterError
from label_studio_ale.settings import Settings
from label_studio_ale_plugins.yolov5 import YoloV5Adapter, checkpoint_classes, grow_head

NAMES = {0: "bird", 1: "nest"}


def save_model(path: Path, model_class: str, model_yaml: str, names=None) -> Path:
    """A checkpoint of an untrained ultralytics model built from its yaml, saved as its trainer saves one."""
    from ultralytics.nn import tasks

    torch.manual_seed(0)
    model = getattr(tasks, model_class)(model_yaml, nc=2, verbose=False)
    model.names = dict(NAMES) if names is None else names
    torch.save({"model": model, "train_args": {}}, path)
    return path


OTHER_TASKS = [
    ("SegmentationModel", "yolov8n-seg.yaml", "a segmentation model (its head is Segment)"),
    ("ClassificationModel", "yolov8n-cls.yaml", "a classification model (its head is Classify)"),
    ("PoseModel", "yolov8n-pose.yaml", "a pose model (its head is Pose)"),
    ("OBBModel", "yolov8n-obb.yaml", "an oriented-box (OBB) model (its head is OBB)"),
]


@pytest.mark.parametrize("model_class, model_yaml, kind", OTHER_TASKS, ids=["segment", "classify", "pose", "obb"])
def test_a_checkpoint_of_another_task_is_refused_when_served_trained_from_or_configured(tmp_path, model_class, model_yaml, kind):
    """ultralytics' `task` of a model built in code says "detect" whatever its head: the head decides."""
    weights = save_model(tmp_path / "other.pt", model_class, model_yaml)
    refused = re.escape(f"{weights} is {kind}; the yolov5 adapter serves and trains detection checkpoints only")
    with pytest.raises(AdapterError, match=f"^{refused}"):
        YoloV5Adapter(weights, image_size=64)
    with pytest.raises(AdapterError, match=f"^{refused}"):
        YoloV5Adapter.base_classes(str(weights))
    with pytest.raises(AdapterError, match=f"^{refused}"):
        grow_head(weights, ["bird", "egg"], tmp_path / "grown.pt")
    assert not (tmp_path / "grown.pt").exists()
    with pytest.raises(AdapterError, match=f"^MODEL_WEIGHTS={refused}"):
        check_adapter_settings(Settings(model_weights=str(weights)))
    with pytest.raises(AdapterError, match=f"^BASE_MODEL={refused}"):
        check_adapter_settings(Settings(model_classes=("bird",), base_model=str(weights)))


@pytest.mark.parametrize("model_yaml", ["yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml", "yolov10n.yaml", "yolo26n.yaml"])
def test_detection_checkpoints_of_every_family_are_served_and_read(tmp_path, model_yaml):
    """v10Detect and YOLO26's end-to-end head are Detect subclasses with the same box rows: they stay accepted."""
    weights = save_model(tmp_path / "det.pt", "DetectionModel", model_yaml)
    check_adapter_settings(Settings(model_weights=str(weights), base_model=str(weights)))
    assert checkpoint_classes(weights) == ["bird", "nest"]
    adapter = YoloV5Adapter(weights, image_size=64)
    (found,) = adapter.predict([Image.new("RGB", (80, 48), 90)])
    assert adapter.classes == ("bird", "nest") and found.class_probs.shape == (len(found), 2)


@pytest.mark.parametrize(
    "names, described",
    [
        ({0: "bird", 1: "nest", 3: "egg"}, r"the names have 3 entries \(ids 0, 1, 3\)"),  # a gap: no name for class 2
        (["bird", "nest"], r"the names have 2 entries \(ids 0, 1\)"),  # fewer: class 2's column would be dropped
        ({i: f"c{i}" for i in range(80)}, r"the names have 80 entries \(ids 0, 1, 2, .*, 11, \.\.\.\)"),  # more
    ],
    ids=["gap", "fewer", "more"],
)
def test_class_names_that_do_not_number_the_heads_classes_are_refused(tmp_path, names, described):
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.names = names
    weights = tmp_path / "names.pt"
    torch.save({"model": model}, weights)
    message = re.escape(f"{weights}: ") + rf"its class names do not match its head: the head scores 3 classes, {described}, and they must be numbered 0\.\.2"
    for call in (lambda: YoloV5Adapter(weights, image_size=64), lambda: checkpoint_classes(weights), lambda: grow_head(weights, ["c0"], tmp_path / "g.pt")):
        with pytest.raises(AdapterError, match=message) as caught:
            call()
        assert "ckpt['model'].names = {0: ..., 2: ...}" in str(caught.value)
    with pytest.raises(AdapterError, match=rf"^BASE_MODEL={message}"):
        check_adapter_settings(Settings(model_classes=("a",), base_model=str(weights)))


def test_class_names_as_a_list_or_a_dict_in_any_order_are_read_in_head_order(tmp_path):
    listed = save_model(tmp_path / "listed.pt", "DetectionModel", "yolov8n.yaml", names=["bird", "nest"])
    shuffled = save_model(tmp_path / "shuffled.pt", "DetectionModel", "yolov8n.yaml", names={1: "nest", 0: "bird"})
    assert checkpoint_classes(listed) == checkpoint_classes(shuffled) == ["bird", "nest"]
    assert YoloV5Adapter(shuffled, image_size=64).classes == ("bird", "nest")


@pytest.fixture
def newer_checkpoints(tmp_path, monkeypatch):
    """Checkpoints pickled with a block class and a module this ultralytics lacks, as a newer release saves them."""
    import ultralytics.nn.modules.block as block
    from ultralytics.nn.tasks import DetectionModel

    class C3k9(torch.nn.Module):
        def forward(self, x):
            return x

    C3k9.__module__, C3k9.__qualname__ = block.__name__, "C3k9"
    future = types.ModuleType("ultralytics.nn.modules.future")
    future.FutureBlock = type("FutureBlock", (torch.nn.Module,), {"__module__": future.__name__})
    saved = {}
    for name, extra in (("attribute", C3k9), ("module", future.FutureBlock)):
        with monkeypatch.context() as patch:
            patch.setattr(block, "C3k9", C3k9, raising=False)
            patch.setitem(sys.modules, future.__name__, future)
            model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
            model.names = dict(NAMES)
            model.model[0].extra = extra()
            torch.save({"model": model}, tmp_path / f"newer-{name}.pt")
        saved[name] = tmp_path / f"newer-{name}.pt"
    assert not hasattr(block, "C3k9") and future.__name__ not in sys.modules
    return saved


@pytest.mark.parametrize("missing", ["attribute", "module"])
def test_a_checkpoint_of_a_newer_ultralytics_is_refused_naming_the_installed_version(newer_checkpoints, missing):
    import ultralytics

    weights = newer_checkpoints[missing]
    weights_re = re.escape(str(weights))
    newer = rf"cannot be read by the installed ultralytics {ultralytics.__version__} \(.*\): it was probably saved by a newer ultralytics"
    with pytest.raises(AdapterError, match=rf"^BASE_MODEL={weights_re} {newer}"):
        checkpoint_classes(weights, "BASE_MODEL")
    with pytest.raises(AdapterError, match=rf"^{weights_re} {newer}") as caught:
        YoloV5Adapter.base_classes(str(weights))  # what Start Training reads of BASE_MODEL
    assert "pip install -U ultralytics" in str(caught.value) and "YOLOv5-repo" not in str(caught.value)
    with pytest.raises(AdapterError, match=rf"^{weights_re} {newer}"):
        YoloV5Adapter(weights)
    with pytest.raises(AdapterError, match=rf"^BASE_MODEL={weights_re} {newer}"):
        check_adapter_settings(Settings(model_classes=("bird",), base_model=str(weights)))


def test_a_file_that_is_no_checkpoint_names_both_kinds_of_fix(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match=rf"^BASE_MODEL={re.escape(str(bogus))} is not an ultralytics YOLO checkpoint") as caught:
        checkpoint_classes(bogus, "BASE_MODEL")
    assert "use a .pt saved by ultralytics" in str(caught.value) and "original YOLOv5-repo" in str(caught.value)


def test_the_weights_digest_reads_only_detection_checkpoints(tmp_path):
    from label_studio_ale_plugins.yolov5.checkpoint_digest import weights_digest

    detect = save_model(tmp_path / "det.pt", "DetectionModel", "yolov8n.yaml")
    assert len(weights_digest(detect)) == 16 and np.all([c in "0123456789abcdef" for c in weights_digest(detect)])
    with pytest.raises(AdapterError, match="is a segmentation model"):
        weights_digest(save_model(tmp_path / "seg.pt", "SegmentationModel", "yolov8n-seg.yaml"))
