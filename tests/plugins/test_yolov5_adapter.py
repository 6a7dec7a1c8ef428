import logging
from pathlib import Path

import numpy as np
import pytest

from label_studio_ale.boxes import box_iou
from label_studio_ale.errors import AdapterError
from label_studio_ale.synthetic import make_scene
from label_studio_ale_plugins.yolov5 import YoloV5Adapter
from tests.support.models import CLASSES, HELD_OUT_SEEDS, IMAGE_SIZE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(trained_weights):
    return YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(seed) for seed in HELD_OUT_SEEDS]


def test_classes_and_version_come_from_the_checkpoint(adapter, trained_weights):
    assert adapter.classes == tuple(CLASSES)
    assert adapter.version.startswith(trained_weights.stem + "-") and len(adapter.version) == len(trained_weights.stem) + 9


def test_every_kept_box_keeps_its_full_class_vector(adapter, scenes):
    """Same boxes as ultralytics' own predictor; its conf is our max, its class our argmax."""
    from ultralytics import YOLO

    ours = adapter.predict([s.image for s in scenes])
    theirs = YOLO(str(adapter.weights)).predict(
        [s.image for s in scenes], imgsz=IMAGE_SIZE, conf=adapter.conf_floor, iou=adapter.model_iou, verbose=False
    )
    total = 0
    for det, ref in zip(ours, theirs):
        assert det.class_probs.shape == (len(det), len(CLASSES))
        assert len(det) == len(ref.boxes) and len(det) > 0
        order = np.argsort(-det.scores, kind="stable")
        ref_order = np.argsort(-ref.boxes.conf.numpy(), kind="stable")
        assert np.allclose(det.xyxy[order], ref.boxes.xyxy.numpy()[ref_order], atol=1e-2)
        assert np.allclose(det.class_probs.max(axis=1)[order], ref.boxes.conf.numpy()[ref_order], atol=1e-5)
        assert np.array_equal(det.class_probs.argmax(axis=1)[order], ref.boxes.cls.numpy().astype(int)[ref_order])
        # the vector is not one-hot: the other class keeps its own score
        assert (det.class_probs.min(axis=1) < det.class_probs.max(axis=1)).all()
        total += len(det)
    assert total > len(scenes)


def test_the_image_embedding_comes_from_the_same_forward_pass_as_the_boxes(adapter, scenes):
    import torch

    images = [scene.image for scene in scenes[:3]]
    calls = []
    hook = adapter.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        before = adapter.forward_calls
        found = adapter.predict(images + [images[0]])
    finally:
        hook.remove()
    assert calls == [4] and adapter.forward_calls == before + 1, "one model call for the batch, boxes and embeddings both"
    vectors = np.stack([d.embedding for d in found])
    assert vectors.dtype == np.float32 and vectors.shape[0] == 4 and vectors.shape[1] >= 64
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[3], atol=1e-5), "the same image, the same embedding"
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3), "other scenes, other embeddings"
    # the pooled maps are exactly those the Detect head receives: recomputed here from a second, hooked run
    seen = []
    head = adapter.model.model[-1].register_forward_pre_hook(lambda module, args: seen.append([m.clone() for m in args[0]]))
    try:
        again = adapter.predict(images[:1])[0]
    finally:
        head.remove()
    pooled = [torch.nn.functional.normalize(m.mean(dim=(2, 3)), dim=1) for m in seen[0]]
    expected = torch.nn.functional.normalize(torch.cat(pooled, dim=1), dim=1)[0].numpy()
    np.testing.assert_allclose(again.embedding, expected, atol=1e-5)


def test_trained_model_finds_the_generated_objects(adapter, scenes):
    found = matched = 0
    for det, scene in zip(adapter.predict([s.image for s in scenes]), scenes):
        det = det[det.scores >= 0.25]
        for box, label in zip(scene.xyxy, scene.labels):
            found += 1
            if len(det) == 0:
                continue
            overlap = box_iou(box[None], det.xyxy)[0]
            best = overlap.argmax()
            matched += bool(overlap[best] >= 0.5 and det.labels[best] == label)
    assert matched / found >= 0.8, f"recall {matched}/{found}"


def test_boxes_are_in_original_pixels_for_any_image_size(adapter):
    scene = make_scene(3, size=(320, 200))
    (det,) = adapter.predict([scene.image])
    assert det.image_size == (320, 200)
    assert (det.xyxy[:, [0, 2]] <= 320).all() and (det.xyxy[:, [1, 3]] <= 200).all()


def test_predicting_nothing_and_grey_images(adapter, trained_weights):
    from PIL import Image

    assert adapter.predict([]) == []
    (det,) = adapter.predict([Image.new("L", (64, 48), 128)])
    assert det.image_size == (64, 48)
    # nothing above the floor: an empty Detections with the right class count
    strict = YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE, conf_floor=0.7)
    empty, found = strict.predict([Image.new("RGB", (128, 128), 128), make_scene(10_000).image])
    assert len(empty) == 0 and empty.class_probs.shape == (0, len(CLASSES))
    assert len(found) > 0 and (found.scores >= 0.7).all()  # the other image of the batch is unaffected


def test_yaml_model_needs_class_names():
    with pytest.raises(AdapterError, match="MODEL_CLASSES"):
        YoloV5Adapter("yolov5n.yaml")
    built = YoloV5Adapter("yolov5n.yaml", classes=["bird", "nest", "egg"], image_size=64)
    assert built.classes == ("bird", "nest", "egg") and built.version.startswith("yolov5n-untrained-")
    (det,) = built.predict([make_scene(0).image])
    assert det.class_probs.shape[1] == 3


def test_a_yaml_model_of_other_classes_is_another_version_and_every_process_builds_the_same_weights(tmp_path):
    """MODEL_CLASSES decides the model built from a yaml: the detection store keeps another's rows under another key.
    Its untrained weights are seeded by the yaml and classes, so the server and the workers show the same boxes."""
    import torch

    two = YoloV5Adapter("yolov5n.yaml", classes=["bird", "nest"], image_size=64)
    torch.manual_seed(123)  # whatever the process drew before
    again = YoloV5Adapter("yolov5n.yaml", classes=["bird", "nest"], image_size=64)
    three = YoloV5Adapter("yolov5n.yaml", classes=["bird", "nest", "egg"], image_size=64)
    assert two.version == again.version != three.version
    assert two.version.startswith("yolov5n-untrained-") and len(two.version) == len("yolov5n-untrained-") + 8
    assert all(torch.equal(a, b) for a, b in zip(two.model.state_dict().values(), again.model.state_dict().values()))
    drawn = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), drawn), "building a model leaves the process's random generator as it was"

    import shutil

    import ultralytics

    custom = tmp_path / "birds-yolov5n.yaml"  # a yaml file of one's own: its content and the classes name it
    shutil.copy(Path(ultralytics.__file__).parent / "cfg" / "models" / "v5" / "yolov5.yaml", custom)
    named = YoloV5Adapter(custom, classes=["bird", "nest"], image_size=64)
    assert named.version.startswith("birds-yolov5n-untrained-") and named.trained is False
    assert YoloV5Adapter(custom, classes=["bird"], image_size=64).version != named.version


def test_missing_or_foreign_weights_are_refused_without_download(tmp_path):
    with pytest.raises(AdapterError, match="no such file"):
        YoloV5Adapter(tmp_path / "yolov5s.pt")
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match="not an ultralytics YOLO checkpoint"):
        YoloV5Adapter(bogus)
    with pytest.raises(AdapterError, match=".pt checkpoint or a model .yaml"):
        YoloV5Adapter(tmp_path / "model.onnx")


def test_checkpoint_class_names_must_match_configured_classes(trained_weights):
    with pytest.raises(AdapterError, match="does not match"):
        YoloV5Adapter(trained_weights, classes=["cat", "dog"])


def test_concurrent_predicts_from_threads_match_sequential(adapter, scenes):
    """gunicorn threads share one adapter: results must not mix between requests."""
    from concurrent.futures import ThreadPoolExecutor

    images = [s.image for s in scenes[:6]]
    expected = [adapter.predict([image])[0] for image in images]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda image: adapter.predict([image])[0], images * 3))
    for index, det in enumerate(got):
        ref = expected[index % len(images)]
        assert np.allclose(det.xyxy, ref.xyxy) and np.allclose(det.class_probs, ref.class_probs)


def test_ale_evaluate_reports_coco_and_voc_metrics(trained_weights, tmp_path):
    import json
    import subprocess
    import sys

    from label_studio_ale.synthetic import write_yolo_dataset

    write_yolo_dataset(tmp_path, [make_scene(seed) for seed in HELD_OUT_SEEDS], CLASSES, "val")
    (tmp_path / "data.yaml").write_text("names:\n  0: bird\n  1: nest\n")
    out = tmp_path / "metrics.json"
    run = subprocess.run(
        [sys.executable, "-m", "label_studio_ale.cli", "evaluate", "--weights", str(trained_weights),
         "--data", str(tmp_path / "data.yaml"), "--out", str(out)],
        env={"IMAGE_SIZE": str(IMAGE_SIZE), "PATH": "/usr/bin:/bin", "YOLO_CONFIG_DIR": str(tmp_path / "cfg")},
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "VOC07" in run.stdout and run.stdout.strip().splitlines()[-1].startswith("all")
    metrics = json.loads(out.read_text())
    assert set(metrics["per_class"]) == set(CLASSES)
    # the tiny model learned the generated shapes: high AP50, lower strict COCO mAP
    assert metrics["map50"] > 0.8 and metrics["voc12_map50"] > 0.8 and metrics["voc07_map50"] > 0.8
    assert metrics["map"] < metrics["map50"]


def test_grow_head_keeps_every_known_class_exactly(trained_weights, tmp_path, scenes):
    """A new label in the middle of the list: the head's outputs for the old classes are unchanged."""
    import torch

    from label_studio_ale_plugins.yolov5 import grow_head

    grown_path = grow_head(trained_weights, ["bird", "egg", "nest"], tmp_path / "grown.pt")
    old = YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE)
    grown = YoloV5Adapter(grown_path, image_size=IMAGE_SIZE)
    assert grown.classes == ("bird", "egg", "nest")
    batch = old._letterbox([np.asarray(s.image) for s in scenes[:4]])
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        before, after = old.model(tensor)[0], grown.model(tensor)[0]  # (B, 4 + nc, anchors)
    assert after.shape[1] == before.shape[1] + 1
    assert torch.allclose(after[:, :4], before[:, :4], atol=1e-4)  # boxes
    assert torch.allclose(after[:, 4], before[:, 4], atol=1e-5)  # bird
    assert torch.allclose(after[:, 6], before[:, 5], atol=1e-5)  # nest moved one row down
    # and the served detections still name the old classes
    labels = {grown.classes[i] for det in grown.predict([s.image for s in scenes[:4]]) for i in det[det.scores > 0.25].labels}
    assert labels == {"bird", "nest"}
    with pytest.raises(AdapterError, match="none of the model's classes"):
        grow_head(trained_weights, ["cat"], tmp_path / "x.pt")


def test_grow_head_grows_the_same_head_every_time_and_leaves_the_random_state_alone(trained_weights, tmp_path):
    """The new class's fresh rows are drawn from a fixed seed: a rerun or a retried job fine-tunes the same start."""
    import torch

    from label_studio_ale_plugins.yolov5 import grow_head

    state = torch.random.get_rng_state()
    grown = [torch.load(grow_head(trained_weights, ["bird", "egg", "nest"], tmp_path / f"grown{k}.pt"), weights_only=False) for k in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    first, second = (g["model"].state_dict() for g in grown)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1234)  # whatever the caller's random state, the same head
    third = torch.load(grow_head(trained_weights, ["bird", "egg", "nest"], tmp_path / "grown2.pt"), weights_only=False)["model"].state_dict()
    assert all(torch.equal(first[k], third[k]) for k in first)


def test_hub_names_are_refused_unless_downloads_are_allowed(tmp_path, monkeypatch):
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings
    from label_studio_ale_plugins.yolov5.checkpoints import weights_source

    monkeypatch.chdir(tmp_path)
    for call in (
        lambda: weights_source("yolo11n.pt"),
        lambda: YoloV5Adapter("yolo11n.pt"),
        lambda: check_adapter_settings(Settings(model_weights="yolo11n.pt")),
    ):
        with pytest.raises(AdapterError) as caught:
            call()
        message = str(caught.value)
        assert "MODEL_WEIGHTS=yolo11n.pt is not a file here" in message
        assert str(tmp_path / "yolo11n.pt") in message and "ALLOW_DOWNLOADS=true" in message
    with pytest.raises(AdapterError, match="BASE_MODEL=yolov8s.pt is not a file here"):
        check_adapter_settings(Settings(base_model="yolov8s.pt"))
    # a path with a folder is a missing file, never a download
    with pytest.raises(AdapterError, match="no such file"):
        weights_source("models/yolo11n.pt", allow_downloads=True)
    assert weights_source("yolo11n.pt", allow_downloads=True) == "hub"
    assert weights_source("yolov8n.yaml") == "yaml"


def test_with_downloads_allowed_the_name_goes_to_ultralytics_unchanged(trained_weights, tmp_path, monkeypatch):
    """The seam: ultralytics' attempt_download_asset gets the hub name as written and returns the local file."""
    import shutil

    import ultralytics.utils.downloads as downloads

    from label_studio_ale.settings import Settings

    monkeypatch.chdir(tmp_path)
    asked = []

    def download(name, *args, **kwargs):
        if Path(name).is_file():  # ultralytics passes local files through it too, unchanged
            return str(name)
        asked.append(name)
        local = tmp_path / "weights" / name
        local.parent.mkdir(exist_ok=True)
        shutil.copyfile(trained_weights, local)
        return str(local)

    monkeypatch.setattr(downloads, "attempt_download_asset", download)
    adapter = YoloV5Adapter.from_settings(Settings(model_weights="yolo11n.pt", allow_downloads=True, image_size=IMAGE_SIZE))
    assert asked == ["yolo11n.pt"] and adapter.weights == str(tmp_path / "weights" / "yolo11n.pt")
    assert adapter.classes == tuple(CLASSES) and adapter.version.startswith("yolo11n-")
    assert YoloV5Adapter.local_weights(Settings(allow_downloads=True), "yolov8s.pt") == str(tmp_path / "weights" / "yolov8s.pt")
    assert asked == ["yolo11n.pt", "yolov8s.pt"]


def test_a_hub_name_fails_at_setup_and_at_start_with_the_fix(tmp_path):
    import os
    import subprocess
    import sys

    from label_studio_ale.app import create_app
    from label_studio_ale.settings import Settings

    config = (
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="bird"/></RectangleLabels></View>'
    )
    client = create_app(Settings(model_weights="yolo11n.pt")).test_client()
    response = client.post("/setup", json={"project": "1.1", "schema": config})
    assert response.status_code == 503 and "ALLOW_DOWNLOADS=true" in response.get_json()["error"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")} | {"MODEL_WEIGHTS": "yolo11n.pt"}
    for command in (["serve", "--port", "1"], ["worker"]):
        run = subprocess.run([sys.executable, "-m", "label_studio_ale.cli", *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "configuration error: MODEL_WEIGHTS=yolo11n.pt is not a file here" in run.stderr


def test_a_frozen_backbone_of_a_model_definition_is_refused_at_start():
    """TRAIN_FREEZE keeps trained layers: BASE_MODEL as a .yaml has none, so the server refuses to start with both."""
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    check_adapter_settings(Settings(model_weights="yolov5n.yaml", base_model="yolov5n.yaml"))  # from scratch, every layer
    with pytest.raises(AdapterError, match=r"TRAIN_FREEZE=10 keeps trained layers, but BASE_MODEL=yolov5n.yaml .* TRAIN_FREEZE=0"):
        check_adapter_settings(Settings(model_weights="yolov5n.yaml", base_model="yolov5n.yaml", train_freeze=10))


def test_an_image_size_off_the_stride_is_rounded_up_as_ultralytics_rounds_it(trained_weights, scenes, caplog):
    """IMAGE_SIZE=100 letterboxed as is gives feature maps that do not line up (a RuntimeError on every predict):
    it is rounded up to the stride, 128, with one warning, as ultralytics' own predictor and trainer round it."""
    from ultralytics import YOLO

    with caplog.at_level("WARNING"):
        rounded = YoloV5Adapter(trained_weights, image_size=100)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("IMAGE_SIZE=100 is not a multiple of the model's stride 32: images are predicted at 128")
    assert rounded.image_size == 128
    images = [s.image.resize((230, 140)) for s in scenes[:3]]  # one shape: ultralytics pads a mixed batch to the square
    exact = YoloV5Adapter(trained_weights, image_size=128)
    theirs = YOLO(str(trained_weights)).predict(images, imgsz=100, conf=rounded.conf_floor, iou=rounded.model_iou, verbose=False)
    for ours, same, ref in zip(rounded.predict(images), exact.predict(images), theirs):
        assert np.array_equal(ours.xyxy, same.xyxy) and np.array_equal(ours.class_probs, same.class_probs)
        assert len(ours) == len(ref.boxes) > 0
        assert np.allclose(np.sort(ours.scores), np.sort(ref.boxes.conf.numpy()), atol=1e-5)
    caplog.clear()
    with caplog.at_level("WARNING"):
        YoloV5Adapter(trained_weights, image_size=128)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], "a multiple of the stride is used as it is"


def test_an_image_gets_the_same_boxes_and_embedding_alone_and_beside_images_of_other_shapes(adapter):
    """A batch (PREDICT_BATCH_SIZE frames of the pool) mixing shapes runs one forward pass per shape, so an image is
    letterboxed to its own rectangle as when /predict sends it alone, not padded to the full square."""
    wide = make_scene(10_001).image.resize((256, 160))
    tall = make_scene(10_002).image.resize((160, 256))
    other_wide = make_scene(10_003).image.resize((256, 160))
    alone = adapter.predict([wide])[0], adapter.predict([tall])[0]
    before = adapter.forward_calls
    for found, expected in zip(adapter.predict([wide, tall]), alone):
        assert len(found) == len(expected) > 0 and found.image_size == expected.image_size
        assert np.array_equal(found.xyxy, expected.xyxy) and np.array_equal(found.class_probs, expected.class_probs)
        assert np.array_equal(found.embedding, expected.embedding)
    assert adapter.forward_calls == before + 2, "one forward pass per image shape"
    # beside an image of its own shape it shares a forward pass: the same letterbox, batched arithmetic's last bits
    again = adapter.predict([tall, other_wide, wide])
    assert adapter.forward_calls == before + 4
    for found, expected in ((again[0], alone[1]), (again[2], alone[0])):  # results stay in input order
        assert len(found) == len(expected) and np.allclose(found.xyxy, expected.xyxy, atol=1e-3)
        assert np.allclose(found.class_probs, expected.class_probs, atol=1e-5)
        assert np.allclose(found.embedding, expected.embedding, atol=1e-5)
    assert not np.allclose(again[1].embedding, alone[0].embedding, atol=1e-3)


@pytest.mark.parametrize(
    "device, count, problem",
    [
        ("cuda", 0, "DEVICE=cuda: torch sees no GPU here (0 devices); set DEVICE=cpu"),
        ("cuda:0", 0, "DEVICE=cuda:0: torch sees no GPU here (0 devices); set DEVICE=cpu"),
        ("cuda:2", 2, "DEVICE=cuda:2: torch sees 2 GPU(s) here, cuda:0..cuda:1; set DEVICE=cpu"),
    ],
)
def test_a_gpu_torch_does_not_see_is_refused_at_start(monkeypatch, device, count, problem):
    """Accepted at start, such a DEVICE failed every /setup and /predict ("Found no NVIDIA driver")."""
    import torch

    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(AdapterError) as caught:
        check_adapter_settings(Settings(model_classes=("bird",), device=device))
    assert str(caught.value).startswith(problem)
    check_adapter_settings(Settings(model_classes=("bird",), device="cpu"))
    if count:
        check_adapter_settings(Settings(model_classes=("bird",), device=f"cuda:{count - 1}"))
        check_adapter_settings(Settings(model_classes=("bird",), device="cuda"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(AdapterError, match=r"^DEVICE=mps: torch sees no Apple GPU \(MPS\) here; set DEVICE=cpu"):
        check_adapter_settings(Settings(model_classes=("bird",), device="mps"))


def test_a_frozen_backbone_is_warned_about_at_start_when_a_first_training_would_start_from_a_model_definition(tmp_path, caplog):
    """BASE_MODEL unset and MODEL_WEIGHTS a yaml (the defaults): a project's first training starts from the fresh
    yolov5n.yaml and is refused when it runs; projects with versions of their own still train, so the start warns."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.settings import Settings

    with caplog.at_level(logging.WARNING, logger="label_studio_ale_plugins.yolov5.adapter"):
        check_adapter_settings(Settings(model_classes=("bird",), train_freeze=10))
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "TRAIN_FREEZE=10 keeps trained layers, but BASE_MODEL is unset and MODEL_WEIGHTS=yolov5n.yaml" in message
    assert "set BASE_MODEL to a .pt checkpoint, or TRAIN_FREEZE=0" in message
    caplog.clear()
    checkpoint = tmp_path / "base.pt"
    model = DetectionModel("yolov5n.yaml", nc=1, verbose=False)
    model.names = {0: "bird"}
    torch.save({"model": model}, checkpoint)
    check_adapter_settings(Settings(model_classes=("bird",), train_freeze=10, base_model=str(checkpoint)))
    check_adapter_settings(Settings(model_weights=str(checkpoint), train_freeze=10))  # its first training may start from it
    assert not [r for r in caplog.records if "TRAIN_FREEZE" in r.getMessage()], "a first training from a checkpoint keeps its layers"
