"""plugins/yolov5/cpu_training.py: which precision a fine-tune computes in, and the CPU's layout and optimizer kernels."""

from types import SimpleNamespace

import pytest
import torch

from label_studio_ale.settings import Settings
from label_studio_ale_plugins.yolov5 import cpu_training
from label_studio_ale_plugins.yolov5.cpu_training import Float32Loss, check_precision, cpu_bf16_autocast, training_precision, use_fast_cpu_kernels


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, native):
    monkeypatch.setattr(cpu_training, "cpu_has_native_bf16", lambda: native)
    assert training_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert training_precision("auto", "CPU") == ("bf16" if native else "fp32")
    # an accelerator keeps the float32 training it had
    assert training_precision("auto", "cuda:0") == "fp32"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_explicit_precision_is_kept_on_every_device(monkeypatch, device):
    monkeypatch.setattr(cpu_training, "cpu_has_native_bf16", lambda: False)
    assert training_precision("fp32", device) == "fp32" and training_precision("bf16", device) == "bf16"


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "mps"])
@pytest.mark.parametrize("setting", ["auto", "fp32"])
def test_auto_and_fp32_train_on_every_device(setting, device):
    check_precision(setting, device, cuda_native_bf16=lambda: False)


def test_bf16_is_refused_where_ultralytics_would_refuse_it_at_the_first_batch():
    check_precision("bf16", "cpu")  # torch's CPU autocast, emulated or not
    check_precision("bf16", "cuda:1", cuda_native_bf16=lambda: True)
    with pytest.raises(ValueError, match=r"TRAIN_PRECISION=bf16 with DEVICE=cuda:0: this GPU computes bfloat16 only by emulation.*TRAIN_PRECISION=auto or fp32"):
        check_precision("bf16", "cuda:0", cuda_native_bf16=lambda: False)
    with pytest.raises(ValueError, match=r"DEVICE=mps: training on mps has no bfloat16 autocast"):
        check_precision("bf16", "mps")


def test_the_adapter_refuses_bf16_on_a_device_without_it_at_start():
    from label_studio_ale.adapters import check_adapter_settings
    from label_studio_ale.errors import AdapterError

    check_adapter_settings(Settings(model_weights="yolov5n.yaml", train_precision="bf16"))  # the CPU
    with pytest.raises(AdapterError, match=r"TRAIN_PRECISION=bf16 with DEVICE=mps"):
        check_adapter_settings(Settings(model_weights="yolov5n.yaml", train_precision="bf16", device="mps"))
    if not torch.cuda.is_available():
        with pytest.raises(AdapterError, match=r"DEVICE=cuda:0: torch sees no CUDA GPU here; set DEVICE=cpu, or TRAIN_PRECISION=auto"):
            check_adapter_settings(Settings(model_weights="yolov5n.yaml", train_precision="bf16", device="cuda:0"))


def test_an_unknown_precision_names_the_setting_and_its_values():
    with pytest.raises(ValueError, match=r"TRAIN_PRECISION must be one of auto, fp32, bf16, got 'half'"):
        training_precision("half", "cpu")


def test_native_bf16_reads_torchs_own_cpu_checks(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_training.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_training.cpu_has_native_bf16()
    # a torch without the checks: no native bf16 assumed, float32 as before
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not cpu_training.cpu_has_native_bf16()


def test_settings_default_to_auto():
    assert Settings().train_precision == "auto"


def test_the_cpu_bf16_autocast_is_torchs_and_ultralytics_own_is_restored_after():
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.autocast
    with pytest.raises(RuntimeError, match="bfloat16"):  # ultralytics alone refuses CPU bf16
        original(torch.bfloat16, device="cpu")
    with cpu_bf16_autocast():
        with trainer_module.autocast(torch.bfloat16, device="cpu"):
            out = torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3))
        assert out.dtype == torch.bfloat16
        with trainer_module.autocast(False, device="cpu"):  # every other case is ultralytics' own
            assert torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3)).dtype == torch.float32
    assert trainer_module.autocast is original


def test_the_original_autocast_is_restored_when_training_fails():
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.autocast
    with pytest.raises(KeyError):
        with cpu_bf16_autocast():
            raise KeyError("training failed")
    assert trainer_module.autocast is original


def _trainer(device: str, optimizer=torch.optim.AdamW):
    # as in YOLO, no bias before a BatchNorm: its gradient would be ~0, of a sign that rounding decides
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    ema = SimpleNamespace(ema=torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)))
    optimizer = optimizer([{"params": list(model.parameters())[:2]}, {"params": list(model.parameters())[2:]}], lr=0.01)
    return SimpleNamespace(device=torch.device(device), model=model, ema=ema, optimizer=optimizer)


@pytest.mark.parametrize("optimizer", [torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD])
def test_on_the_cpu_the_weights_go_channels_last_and_the_optimizer_steps_all_tensors_at_once(optimizer):
    trainer = _trainer("cpu", optimizer)
    params = list(trainer.model.parameters())
    use_fast_cpu_kernels(trainer)
    # the optimizer still holds the model's own parameters, now channels-last
    assert [p for group in trainer.optimizer.param_groups for p in group["params"]] == params
    assert trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.ema.ema[0].weight.is_contiguous(memory_format=torch.channels_last)
    # Adam(W): torch's fused CPU kernel; anything else: the foreach kernels
    adam = optimizer is not torch.optim.SGD
    assert all(group["fused"] is (True if adam else None) and group["foreach"] is not adam for group in trainer.optimizer.param_groups)
    # and a step trains: the loss falls
    x = torch.rand(4, 3, 10, 10)
    losses = []
    for _ in range(5):
        loss = trainer.model(x).square().mean()
        losses.append(float(loss.detach()))
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert losses[-1] < losses[0]


def test_an_accelerators_training_is_left_as_it_was():
    trainer = _trainer("cuda")  # nothing runs on it: the callback only reads the device type
    use_fast_cpu_kernels(trainer)
    assert trainer.model[0].weight.is_contiguous() and not trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(group["foreach"] is None and group["fused"] is None for group in trainer.optimizer.param_groups)


def test_the_fused_step_updates_the_weights_as_the_per_tensor_loop_does():
    torch.manual_seed(0)
    fused, loop = _trainer("cpu"), _trainer("cpu")
    loop.model.load_state_dict(fused.model.state_dict())
    use_fast_cpu_kernels(fused)
    loop.model.to(memory_format=torch.channels_last)  # the same layout: only the optimizer's kernel differs
    x = torch.rand(4, 3, 10, 10)
    for trainer in (fused, loop):
        for _ in range(3):
            trainer.model(x).square().mean().backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
    # the kernels round differently (vector width, fused multiply-adds): 3e-7 apart on an AVX512 CPU after
    # three steps, where a wrong update rule would be about a step (lr 0.01) apart
    for a, b in zip(fused.model.parameters(), loop.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _Criterion:
    def __init__(self):
        self.seen, self.updated = [], 0

    def __call__(self, preds, batch):
        self.seen.append((preds["scores"].dtype, [f.dtype for f in preds["feats"]], preds["index"].dtype, torch.is_autocast_enabled("cpu")))
        return preds["scores"].sum(), {"n": batch}

    def update(self):
        self.updated += 1


def test_under_bf16_autocast_the_loss_gets_float32_predictions_and_no_autocast():
    criterion = _Criterion()
    loss = Float32Loss(criterion)
    conv = torch.nn.Conv2d(3, 4, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(torch.rand(1, 3, 4, 4))
        assert out.dtype == torch.bfloat16
        total, items = loss({"scores": out, "feats": (out, out), "index": torch.arange(3)}, batch=7)
    assert criterion.seen == [(torch.float32, [torch.float32, torch.float32], torch.int64, False)]
    assert total.dtype == torch.float32 and items == {"n": 7}
    total.backward()  # the gradient reaches the bf16 convolution through the cast
    assert conv.weight.grad is not None
    # the trainer's calls to the criterion's own methods reach it
    assert hasattr(loss, "update")
    loss.update()
    assert criterion.updated == 1


@pytest.mark.slow
def test_a_bf16_fine_tune_computes_its_convolutions_in_bf16_and_saves_float_weights_that_predict(tmp_path):
    """A real CPU fine-tune at precision bf16: the training convolutions run in bfloat16, the weights come back as the
    usual checkpoint (contiguous, no bf16 tensors), the adapter loads it and predicts, and ultralytics is as it was."""
    import ultralytics.engine.trainer as trainer_module
    from PIL import Image

    from label_studio_ale.synthetic import make_scene, write_yolo_dataset
    from label_studio_ale_plugins.yolov5 import YoloV5Adapter, train_yolo

    data = tmp_path / "data"
    write_yolo_dataset(data, [make_scene(i, size=(64, 64), min_side=12, max_side=24) for i in range(16)], ["bird", "nest"], "train")
    write_yolo_dataset(data, [make_scene(100 + i, size=(64, 64), min_side=12, max_side=24) for i in range(2)], ["bird", "nest"], "val")
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n  0: bird\n  1: nest\n")
    dtypes = set()

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d) and module.training and torch.is_grad_enabled():
            dtypes.add(output.dtype)

    original = trainer_module.autocast
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        weights = train_yolo(data / "data.yaml", "yolov5n.yaml", tmp_path / "run", epochs=2, image_size=64, batch=4, precision="bf16")
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}
    assert trainer_module.autocast is original
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    tensors = checkpoint["model"].state_dict().values()
    assert all(t.dtype != torch.bfloat16 and t.is_contiguous() for t in tensors)
    adapter = YoloV5Adapter(str(weights), image_size=64)
    assert list(adapter.classes) == ["bird", "nest"]
    (detections,) = adapter.predict([Image.new("RGB", (64, 64), "grey")])
    assert detections.image_size == (64, 64) and detections.embedding is not None


def test_train_yolo_refuses_an_unknown_precision(tmp_path):
    from label_studio_ale_plugins.yolov5 import train_yolo

    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'auto'"):
        train_yolo(tmp_path / "data.yaml", "yolov5n.yaml", tmp_path / "run", epochs=1, precision="auto")
