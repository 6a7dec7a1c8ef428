"""How a fine-tune runs faster on a CPU: the precision it computes in, and the memory layout and optimizer kernels.

For YOLOv5n at 128 px, batch 8, one thread, on a CPU with AMX, a forward
and backward pass took 113 ms in float32 and 80 ms with bfloat16 autocast and
channels-last convolutions, and ultralytics' Adam stepped each of ~220 tensors
in a Python loop (fused and foreach kernels are only its default on CUDA).
bfloat16 pays only where the CPU computes it natively (AVX512-BF16 or AMX);
elsewhere it is emulated and slower than float32, so `auto` picks it only
there. What a whole fine-tune gains, and what it costs in mAP, is measured by
`benchmarks/finetune_recipe.py --recipes small-data:fp32,small-data:bf16`
(numbers in the README).
"""

from __future__ import annotations

from contextlib import contextmanager

from label_studio_ale.settings import TRAIN_PRECISIONS

AUTO, FP32, BF16 = TRAIN_PRECISIONS


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles), as torch's own CPU checks see it."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # private in torch.cpu since 2.x; a release without them is treated as no native bf16 (float32, as before)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def training_precision(setting: str, device: str) -> str:
    """The precision a fine-tune computes in: fp32 or bf16, for TRAIN_PRECISION `setting` on torch `device`.

    `auto` is bf16 on a CPU with native bfloat16 and fp32 elsewhere (an
    accelerator keeps the float32 training it had).
    """
    if setting not in TRAIN_PRECISIONS:
        raise ValueError(f"TRAIN_PRECISION must be one of {', '.join(TRAIN_PRECISIONS)}, got {setting!r}")
    if setting != AUTO:
        return setting
    return BF16 if is_cpu(device) and cpu_has_native_bf16() else FP32


def check_precision(setting: str, device: str, cuda_native_bf16=None) -> None:
    """At start: TRAIN_PRECISION=bf16 only where a fine-tune can compute in it, the CPU or a CUDA GPU with native bfloat16.

    ultralytics refuses bfloat16 autocast on any other device at the first
    training batch, after the dataset is built; this says so before.
    `cuda_native_bf16`: () -> bool, torch's own check unless given.
    """
    if setting != BF16 or is_cpu(device):
        return
    if str(device).lower().startswith("cuda"):
        if cuda_native_bf16 is None:
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"TRAIN_PRECISION=bf16 with DEVICE={device}: torch sees no CUDA GPU here; set DEVICE=cpu, or TRAIN_PRECISION=auto")

            def cuda_native_bf16():
                return torch.cuda.is_bf16_supported(including_emulation=False)

        if cuda_native_bf16():
            return
        where = "this GPU computes bfloat16 only by emulation (it needs an Ampere or newer NVIDIA GPU)"
    else:
        where = f"training on {device} has no bfloat16 autocast"
    raise ValueError(f"TRAIN_PRECISION=bf16 with DEVICE={device}: {where}; set TRAIN_PRECISION=auto or fp32")


def is_cpu(device: str) -> bool:
    return str(device).lower() == "cpu"


def use_fast_cpu_kernels(trainer) -> None:
    """ultralytics `on_pretrain_routine_end` callback: channels-last weights and a fused optimizer step on the CPU.

    Runs once the model, its EMA copy and the optimizer exist; `Module.to`
    keeps the Parameter objects, so the optimizer still holds them.
    ultralytics saves checkpoints contiguous whatever the layout.
    """
    import torch

    if trainer.device.type != "cpu":
        return
    trainer.model.to(memory_format=torch.channels_last)
    if trainer.ema is not None:
        trainer.ema.ema.to(memory_format=torch.channels_last)
    # ultralytics' Adam(W) on the CPU loops over ~220 tensors a step (10.5 ms for YOLOv5n); torch's fused
    # CPU kernel takes 2.3 ms for the same update. Other optimizers get the foreach kernels.
    fused = isinstance(trainer.optimizer, torch.optim.Adam)
    for group in trainer.optimizer.param_groups:
        group["fused"], group["foreach"] = (True, False) if fused else (group.get("fused"), True)


def float32_loss(trainer) -> None:
    """ultralytics `on_pretrain_routine_end` callback under bf16: the loss is computed in float32.

    Autocast would hand it bfloat16 predictions, and its box decoding, IoUs
    and distribution focal loss need more than bfloat16's 8 bits of mantissa;
    the convolutions before it keep their bf16 speed.
    """
    model = trainer.model
    model.criterion = Float32Loss(getattr(model, "criterion", None) or model.init_criterion(), trainer.device.type)


class Float32Loss:
    """A detection criterion called with float32 predictions and autocast off; anything else is the criterion's own."""

    def __init__(self, criterion, device_type: str = "cpu"):
        self.criterion = criterion
        self.device_type = device_type

    def __call__(self, preds, batch):
        import torch

        with torch.autocast(self.device_type, enabled=False):
            return self.criterion(_as_float32(preds), batch)

    def __getattr__(self, name):
        if name in ("criterion", "device_type"):  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.criterion, name)


def _as_float32(value):
    """Every floating tensor in `value` (a tensor, or dicts, lists and tuples of them) as float32."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: _as_float32(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(item) for item in value)
    return value


@contextmanager
def cpu_bf16_autocast():
    """While training: ultralytics' autocast gives torch's CPU bfloat16 autocast for `amp="bf16"` on the CPU.

    ultralytics 8.4 (pinned in setup.cfg) accepts `amp="bf16"` but raises for
    it on any device but CUDA; torch itself supports CPU bf16 autocast. Only
    that one case is changed, and the original is restored after.
    """
    import torch
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.autocast

    def autocast(enabled, device: str = "cuda"):
        if enabled is torch.bfloat16 and device == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return original(enabled, device=device)

    trainer_module.autocast = autocast
    try:
        yield
    finally:
        trainer_module.autocast = original
