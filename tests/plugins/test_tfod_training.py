"""The tfod fine-tune's refusals, which come before TensorFlow loads (so they run in either environment)."""

import pytest

from label_studio_ale.errors import AdapterError
from label_studio_ale.training_set import write_training_set
from tests.test_training_set import _sample


@pytest.fixture
def gull_set(tmp_path):
    samples = [_sample(i, tmp_path, [[5, 5, 30, 30]], [0]) for i in range(1, 21)]
    return write_training_set(tmp_path / "ds", samples, ["Gull", "nest"])[0]


def _detector(folder, classes):
    from label_studio_ale_plugins.tfod.detector import SPEC_FILE, WEIGHTS_FILE, DetectorSpec

    folder.mkdir()
    (folder / SPEC_FILE).write_text(DetectorSpec(tuple(classes)).to_json())
    (folder / WEIGHTS_FILE).write_bytes(b"")
    return str(folder)


def test_a_base_detector_whose_classes_share_none_with_the_labels_says_how_to_map_them(tmp_path, gull_set):
    from label_studio_ale_plugins.tfod.training import train_detector

    base = _detector(tmp_path / "cars", ["car", "truck"])
    with pytest.raises(AdapterError) as refused:
        train_detector(gull_set, base, tmp_path / "out", epochs=1)
    message = str(refused.value)
    assert f"BASE_MODEL={base} is a detector of car, truck, and none of them is a label of this project (Gull, nest)" in message
    assert '<Label value="Gull" predicted_values="car"/>' in message and "or set BASE_MODEL=retinanet" in message
    assert "grow its head" not in message


def test_a_base_detector_sharing_some_labels_is_grown_by_start_training(tmp_path, gull_set):
    from label_studio_ale_plugins.tfod.training import train_detector

    with pytest.raises(AdapterError, match="Start Training grows its head to the dataset's classes first"):
        train_detector(gull_set, _detector(tmp_path / "gulls", ["Gull"]), tmp_path / "out", epochs=1)
