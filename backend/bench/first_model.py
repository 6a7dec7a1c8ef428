"""Each seed's first model on the built-in pool, as `ale bench al --preset small` trains it.

For measurements of what chooses the first cycle's batch
(`benchmarks/embedding_separation.py`, `benchmarks/first_batch_classes.py`):
the same initial set, first model and unlabelled pool as the bench's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import Settings
from .simulation import BenchConfig, BenchData, initial_model

SMALL = "small"


@dataclass(frozen=True)
class FirstModel:
    """A seed's first model: `settings` and `config` as the bench's, `initial` and `unlabeled` (m,) pool indices."""

    settings: Settings
    config: BenchConfig
    initial: list[int]
    metrics: dict
    adapter: object
    unlabeled: np.ndarray


def small_preset_data(cache: str | Path, settings: Settings) -> tuple[BenchData, str, str]:
    """The small preset's built-in pool, the name of its new class, and its base model (trained once and cached)."""
    from .cli import PRESETS
    from .sources import builtin_base_model, builtin_data

    preset = PRESETS[SMALL]
    data, new_class = builtin_data(cache, preset["pool"], preset["eval"], preset["image_size"])
    base = builtin_base_model(cache, settings, preset["base_images"], preset["base_epochs"], preset["image_size"], "cpu")
    return data, new_class, str(base)


def first_model(data: BenchData, new_class: str, base: str, seed: int, work: Path, settings: Settings, policies=("random",)) -> FirstModel:
    """Draw `seed`'s initial set as the small preset does, train its first model under `work` and load it."""
    from ..adapters import load_adapter
    from ..model_store import ModelStore
    from .cli import PRESETS

    preset = PRESETS[SMALL]
    config = BenchConfig(policies=tuple(policies), seeds=(seed,), initial=preset["initial"], budget=preset["budget"],
                         image_size=preset["image_size"], initial_epochs=0, batch=preset["batch"], new_class=new_class,
                         base_model=base)  # fmt: skip
    settings = settings.replace(image_size=config.image_size, train_batch=config.batch, base_model=base, promotion="always",
                                model_dir=str(Path(work) / "models"))  # fmt: skip
    new_index = data.names.index(new_class)
    eligible = [i for i, item in enumerate(data.pool) if new_index not in item.truth.labels]
    initial, metrics, first_dir, _ = initial_model(config, data, settings, seed, eligible, Path(work))
    weights = ModelStore(Path(first_dir).parent, 0).current().weights
    adapter = load_adapter(settings.replace(model_weights=str(weights), model_classes=()))
    unlabeled = np.setdiff1d(np.arange(len(data.pool)), initial)
    return FirstModel(settings, config, initial, metrics, adapter, unlabeled)
