import pytest
import torch

from label_studio_ale.bench.records import model_identity
from label_studio_ale.errors import AdapterError
from label_studio_ale_plugins.yolov5 import YoloV5Adapter
from label_studio_ale_plugins.yolov5.checkpoint_digest import weights_digest


def _resaved(weights, out, change=None):
    """`weights` written again to `out` with another date and training paths, `change(model)` applied if given."""
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    checkpoint["date"] = "2001-01-01T00:00:00"
    checkpoint["train_args"] = dict(checkpoint.get("train_args") or {}, data="/elsewhere/data.yaml", project="/elsewhere")
    if change is not None:
        change(checkpoint["ema"] or checkpoint["model"])
    torch.save(checkpoint, out)
    return out


def test_the_same_weights_written_on_another_day_have_the_same_digest(trained_weights, tmp_path):
    copy = _resaved(trained_weights, tmp_path / "copy.pt")
    assert copy.read_bytes() != trained_weights.read_bytes()
    assert model_identity(str(copy)) != model_identity(str(trained_weights))  # the file's bytes differ
    assert weights_digest(copy) == weights_digest(trained_weights)
    named = model_identity(str(copy), YoloV5Adapter)
    assert named == model_identity(str(trained_weights), YoloV5Adapter) == f"weights-sha256:{weights_digest(copy)}"
    assert str(tmp_path) not in named


def test_one_changed_weight_changes_the_digest(trained_weights, tmp_path):
    def nudge(model):
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 0.5

    changed = _resaved(trained_weights, tmp_path / "changed.pt", nudge)
    assert weights_digest(changed) != weights_digest(trained_weights)


def test_a_missing_file_is_an_adapter_error(tmp_path):
    with pytest.raises(AdapterError, match="no such file"):
        weights_digest(tmp_path / "missing.pt")
