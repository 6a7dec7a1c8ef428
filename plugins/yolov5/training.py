"""A YOLO fine-tune on the CPU or an accelerator: ultralytics' trainer with the recipe's arguments and this backend's callbacks."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from .checkpoints import local_weights
from .offline import import_ultralytics


def train_yolo(
    data_yaml: str | Path,
    base: str | Path,
    out_dir: str | Path,
    *,
    epochs: int,
    image_size: int = 640,
    batch: int = 16,
    device: str = "cpu",
    seed: int = 0,
    on_epoch=None,
    allow_downloads: bool = False,
    overrides: dict | None = None,
    precision: str = "fp32",
    freeze: int = 0,
) -> Path:
    """Fine-tune `base` (.pt or .yaml) on an ultralytics dataset yaml. Returns the last epoch's weights.

    `overrides` are further ultralytics train arguments (the recipe: optimizer, warmup, ...).
    `precision`: fp32, or bf16 (autocast; on the CPU see `cpu_training`).
    `freeze` > 0: the model's first `freeze` layers keep `base`'s weights
    (TRAIN_FREEZE; 10 is YOLOv5's backbone); the rest, the head included, train.

    The validation split takes no part in choosing the weights: ultralytics
    would keep the epoch that scores best on it (`best.pt`), and the promotion
    gate then compares versions on those same images, favouring the new one.
    So validation runs once, after the last epoch, and `last.pt` is returned.
    `on_epoch(epoch, epochs, figures)` is called after each epoch (1-based)
    with the epoch's training losses and, after the last, ultralytics' own
    validation metrics.
    """
    import_ultralytics(allow_downloads)
    from ultralytics import YOLO

    from .cpu_training import BF16, FP32, cpu_bf16_autocast, float32_loss, use_fast_cpu_kernels
    from .recipe import check_freeze

    if precision not in (FP32, BF16):
        raise ValueError(f"precision must be {FP32} or {BF16}, got {precision!r}")
    base = local_weights(base, allow_downloads=allow_downloads, setting="BASE_MODEL")
    out_dir = Path(out_dir)
    model = YOLO(base)
    check_freeze(freeze, base, len(model.model.model))
    model.add_callback("on_pretrain_routine_end", use_fast_cpu_kernels)
    if precision == BF16:
        model.add_callback("on_pretrain_routine_end", float32_loss)
    if on_epoch is not None:
        # ultralytics reports once more after training (its final validation): that call is skipped
        model.add_callback("on_fit_epoch_end", lambda trainer: trainer.epoch < trainer.epochs and on_epoch(trainer.epoch + 1, trainer.epochs, _epoch_figures(trainer)))
    args = {
        "data": str(data_yaml),
        "epochs": epochs,
        "imgsz": image_size,
        "batch": batch,
        "device": device,
        "workers": 0,  # dataloader workers fork; keep it in-process (see design: fork after torch threads)
        "plots": False,  # plots would fetch a font
        "amp": BF16 if precision == BF16 else False,
        # a checkpoint after the last epoch only: the fine-tune is never resumed, and a
        # checkpoint per epoch cost 8 % of a CPU fine-tune (0.3 s each, ~30 epochs)
        "save": False,
        "seed": seed,
        "deterministic": True,
        "val": False,  # see above: validate after the last epoch only
        "project": str(out_dir.parent),
        "name": out_dir.name,
        "exist_ok": True,
        "verbose": False,
    } | ({"freeze": freeze} if freeze else {})
    with cpu_bf16_autocast() if precision == BF16 else nullcontext():
        model.train(**(args | dict(overrides or {})))
    return Path(model.trainer.last)


def _epoch_figures(trainer) -> dict:
    """An epoch's training losses (`train/...`); after the last epoch also ultralytics' validation (`metrics/...`, `val/...`)."""
    figures = {k: float(v) for k, v in trainer.label_loss_items(trainer.tloss, prefix="train").items()}
    if trainer.epoch + 1 >= trainer.epochs:
        figures |= {k: float(v) for k, v in (trainer.metrics or {}).items()}
    return figures
