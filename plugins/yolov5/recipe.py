"""How Start Training fine-tunes a YOLO model on a project's labels: how long, and with which optimizer settings.

Measured on the built-in benchmark (`benchmarks/finetune_recipe.py`, numbers in
the README): on tens of labelled images ultralytics' defaults learn almost
nothing. They accumulate gradients up to a nominal batch of 64 images, so a
batch of 8 steps the optimizer once per 8 batches: 20 epochs of 48 images are
about 15 steps, and a new class is not learnt from 11 of its boxes (AP50 0.0;
0.50 from 7 with this recipe). `small-data` steps after every batch and trains for a number of
optimizer steps rather than epochs:

    steps = max(MIN_STEPS, MIN_EPOCHS x batches in the labelled set)

so a dozen images get as many steps as fifty, and a larger project still
sees every image MIN_EPOCHS times (TRAIN_MIN_STEPS replaces MIN_STEPS: fewer
for a faster, weaker fine-tune, more at proportionally more time). A small set
is listed several times per epoch (an epoch of at least EPOCH_BATCHES batches): the same steps in fewer,
longer epochs, which saves ultralytics' fixed cost per epoch. The warmup is
WARMUP_STEPS steps and mosaic augmentation stops for the last tenth of the
epochs, whatever their length. TRAIN_EPOCHS (when set) fixes the epochs of
the labelled set as it is instead; 1 gets no warmup, and the fine-tune warns
(`no_warmup_warning`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

SMALL_DATA = "small-data"
ULTRALYTICS = "ultralytics"
RECIPES = (SMALL_DATA, ULTRALYTICS)

#: Optimizer steps of a fine-tune on few images (see the module docstring). 600, not the
#: 200 measured first: in the benchmark's loop (docs/benchmarks/al-small-steps-200, -600)
#: models trained on 48-96 images gained 2-16 points of mAP50 from 3x the steps, at 3x the time.
MIN_STEPS = 600
#: Passes over the labelled set a larger project gets at least.
MIN_EPOCHS = 30
#: A small labelled set is repeated until an epoch has this many batches.
EPOCH_BATCHES = 20
#: Learning-rate warmup, in optimizer steps.
WARMUP_STEPS = 10
#: Share of the epochs, at the end, trained without mosaic (ultralytics: the last 10 of 100).
CLOSE_MOSAIC_SHARE = 0.1
#: Epochs of the `ultralytics` recipe when TRAIN_EPOCHS is not set (its own default is 100, from scratch).
ULTRALYTICS_EPOCHS = 30
#: ultralytics' nominal batch (`nbs`): without the recipe's override it accumulates gradients up to this many images.
NOMINAL_BATCH = 64
#: ultralytics' own warmup, in epochs, where the recipe does not set one.
ULTRALYTICS_WARMUP_EPOCHS = 3.0


@dataclass(frozen=True)
class Plan:
    """One fine-tune: `epochs` over the training split listed `repeat` times, with further ultralytics arguments."""

    epochs: int
    repeat: int = 1
    overrides: dict = field(default_factory=dict)

    def steps(self, train_images: int, batch: int) -> int:
        """Optimizer steps this plan takes on `train_images` in batches of `batch`.

        Exact for small-data (a step per batch); with ultralytics' accumulation
        up to `nbs` images a lower bound, as its warmup steps more often.
        """
        accumulate = max(round(self.overrides.get("nbs", NOMINAL_BATCH) / batch), 1)
        return self.epochs * self.batches_per_epoch(train_images, batch) // accumulate

    def batches_per_epoch(self, train_images: int, batch: int) -> int:
        """Batches in one epoch of the training split listed `repeat` times."""
        return math.ceil(train_images * self.repeat / batch)

    def warmup_batches(self, train_images: int, batch: int) -> int:
        """Batches ultralytics trains with a rising learning rate: none in a single epoch.

        ultralytics caps the warmup at epochs - 1, keeping the last epoch for
        regular training, so one epoch steps at the full rate from its first batch.
        """
        warmup_epochs = min(self.overrides.get("warmup_epochs", ULTRALYTICS_WARMUP_EPOCHS), max(self.epochs - 1, 0))
        return round(warmup_epochs * self.batches_per_epoch(train_images, batch))

    def summary(self, train_images: int, batch: int) -> dict:
        """What a version's manifest records of its fine-tune: epochs, listing repeats, optimizer steps."""
        return {"epochs": self.epochs, "repeat": self.repeat, "steps": self.steps(train_images, batch)}


def plan(recipe: str, train_images: int, batch: int, epochs: int = 0, min_steps: int = 0) -> Plan:
    """How to fine-tune on `train_images` images in batches of `batch`.

    `epochs` > 0 fixes the epochs; `min_steps` > 0 replaces MIN_STEPS (small-data only).
    """
    if recipe not in RECIPES:
        raise ValueError(f"TRAIN_RECIPE must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if min_steps < 0:
        raise ValueError(f"TRAIN_MIN_STEPS must be 0 (the recipe's {MIN_STEPS}) or a number of optimizer steps, got {min_steps}")
    if train_images < 1 or batch < 1:
        raise ValueError(f"need at least one training image and a positive batch, got {train_images} and {batch}")
    if recipe == ULTRALYTICS:
        return Plan(epochs or ULTRALYTICS_EPOCHS)
    labelled_batches = math.ceil(train_images / batch)
    repeat = 1
    while not epochs and math.ceil(train_images * repeat / batch) < EPOCH_BATCHES:
        repeat += 1
    per_epoch = math.ceil(train_images * repeat / batch)
    if not epochs:
        epochs = math.ceil(max(min_steps or MIN_STEPS, MIN_EPOCHS * labelled_batches) / per_epoch)
    return Plan(
        epochs,
        repeat,
        {
            "nbs": batch,  # an optimizer step after every batch: no accumulation towards 64 images
            "warmup_epochs": WARMUP_STEPS / per_epoch,
            "close_mosaic": max(1, round(CLOSE_MOSAIC_SHARE * epochs)),
            "cache": "ram",  # a labelled set is small; decoding it once saves a third of the time
        },
    )


def no_warmup_warning(plan: Plan, train_images: int, batch: int) -> str | None:
    """What a fine-tune without warmup (TRAIN_EPOCHS=1) risks, and what to set instead; None when it warms up."""
    if plan.warmup_batches(train_images, batch):
        return None
    # measured: a tiny detector that found 34 of 34 birds found 2 after 3 such steps
    return (
        f"TRAIN_EPOCHS={plan.epochs}: ultralytics trains a single epoch without learning-rate warmup, so its first steps "
        "move every weight by the full rate and can leave the model worse than it started (PROMOTION=if-not-worse keeps "
        "the serving version then); set TRAIN_EPOCHS=0 (the recipe decides) or 2 or more"
    )


def repeated_dataset(data_yaml: str | Path, repeat: int) -> Path:
    """A data yaml beside `data_yaml` whose training split lists each image `repeat` times (itself when 1)."""
    import yaml

    data_yaml = Path(data_yaml)
    if repeat == 1:
        return data_yaml
    spec = yaml.safe_load(data_yaml.read_text())
    root = Path(spec.get("path") or data_yaml.parent).resolve()
    images = sorted(p for p in (root / spec["train"]).iterdir() if p.is_file())  # absolute: ultralytics reads them as listed
    listing = data_yaml.parent / "train-repeated.txt"
    listing.write_text("".join(f"{image}\n" for image in images) * repeat)
    out = data_yaml.parent / "data-repeated.yaml"
    # absolute: ultralytics reads a relative entry against `path`, and a relative MODEL_DIR gives a relative work folder
    out.write_text(yaml.safe_dump(spec | {"train": str(listing.resolve())}, sort_keys=False))
    return out


def check_freeze(freeze: int, base: str | Path, layers: int) -> None:
    """TRAIN_FREEZE must leave the last layer (the detection head) training, and needs trained weights to keep."""
    from label_studio_ale.errors import ConfigError

    from .checkpoints import is_model_definition

    if freeze < 0:
        raise ConfigError("TRAIN_FREEZE", f"must be 0 (every layer trains) or a number of leading layers to keep, got {freeze}")
    if freeze and is_model_definition(base):
        raise ConfigError(
            "TRAIN_FREEZE",
            f"{freeze} keeps layers' trained weights, but {Path(base).name} is a model definition with none; "
            "set TRAIN_FREEZE=0 to train it from scratch, or BASE_MODEL to a .pt checkpoint",
        )
    if freeze >= layers:
        raise ConfigError(
            "TRAIN_FREEZE",
            f"{freeze} would freeze all {layers} layers of {Path(base).name}, its detection head (layer {layers - 1}) included, "
            f"so nothing would learn; use at most {layers - 1} (10 keeps YOLOv5's backbone)",
        )
