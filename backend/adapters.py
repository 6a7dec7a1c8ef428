"""Model adapters, found through the `label_studio_ale.adapters` entry-point group.

A third-party package adds an adapter by declaring, in its own metadata:

    [options.entry_points]
    label_studio_ale.adapters =
        mymodel = my_package.adapter:MyAdapter

and users select it with ADAPTER=mymodel. Entry points are loaded lazily, so
an adapter's heavy imports (torch, tensorflow) happen only when it is chosen.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from importlib.util import find_spec
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from .detections import Detections
from .errors import AdapterError, PolicyError
from .settings import Settings
from .tiling import sliced

ENTRY_POINT_GROUP = "label_studio_ale.adapters"


@runtime_checkable
class Adapter(Protocol):
    """What the backend needs from a detector.

    classes: class names, index i is column i of every `Detections.class_probs`
    version: a short string naming the weights (shown in LS as model_version)
    predict: RGB images -> one `Detections` per image, in pixels of that image,
             with every box's full class-score vector
    has_class_vectors (optional, default True): False when the model gives each
             box only its own score, so uncertainty policies cannot rank
    trained (optional, default True): False for a model that has learnt nothing
             yet (built from a config): the queue is then a spread-out order
    """

    classes: tuple[str, ...]
    version: str

    def predict(self, images: list[Image.Image]) -> list[Detections]: ...


@runtime_checkable
class Trainer(Protocol):
    """What Start Training needs from an adapter class, beside serving (all class-level).

    fresh_model: what a first training starts from when BASE_MODEL is unset
    base_classes(weights): the classes `weights` was trained for; None for a fresh model; AdapterError, naming
        the file and the fix, for weights the adapter cannot train from (another task's model, an unreadable file)
    grow(weights, classes, out, origin=None): weights for `classes` that keep what
        `weights` knows of the classes both share -> a path (file or folder) near
        `out`; `origin` maps a new class to the old class whose row it inherits
        when the names differ (a label's `predicted_values`), by name otherwise
    fine_tune(settings, weights, data_yaml, work, seed=, on_epoch=): fine-tune on an
        ultralytics-layout dataset -> the trained weights (file or folder) under `work`;
        `on_epoch(epoch, epochs, metrics)` after every epoch
    training_plan(settings, data_yaml) (optional): how fine_tune will train on it, a
        JSON-able dict (both adapters: epochs, repeat, optimizer steps);
        a version's manifest keeps it under "plan"
    """

    fresh_model: str

    def base_classes(self, weights: str) -> list[str] | None: ...

    def grow(
        self, weights: str, classes: list[str], out: Path, origin: dict[str, str] | None = None, report: dict | None = None
    ) -> Path: ...

    def fine_tune(self, settings: Settings, weights: str, data_yaml: Path, work: Path, *, seed: int = 0, on_epoch=None) -> Path: ...


def available_adapters() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


#: What `ale rank`, /versions and the sync say while the serving model is untrained.
UNTRAINED_NOTE = (
    "the model is untrained (built from a config, e.g. MODEL_WEIGHTS=yolov5n.yaml): its pre-annotations are noise and "
    "the queue is a spread-out order (farthest-first on image hashes) until the project's first Start Training, "
    "or serve a trained checkpoint"
)


def is_trained(adapter: Adapter) -> bool:
    return bool(getattr(adapter, "trained", True))


def check_policy_fits(adapter: Adapter, policy_name: str) -> None:
    """Refuse an uncertainty policy for a model that exports no per-class scores (its boxes carry one score each)."""
    from .policies import get_policy
    from .policy_suffixes import is_diverse, needs_novelty

    policy = get_policy(policy_name)
    if policy.needs_class_vectors and not getattr(adapter, "has_class_vectors", True):
        raise PolicyError(
            f"POLICY={policy_name} needs every box's per-class scores, but the model {adapter.version} does not export "
            "them (TF OD API: detection_multiclass_scores). Use a confidence policy (min-confidence, mean-confidence, "
            "weighted-confidence) or random, or re-export the model with its multiclass scores"
        )
    needs = [part for part, wanted in (("novelty", needs_novelty(policy)), ("a diverse batch", is_diverse(policy))) if wanted]
    if needs and not getattr(adapter, "has_embeddings", True):
        raise PolicyError(
            f"POLICY={policy_name} needs image embeddings (for {' and '.join(needs)}), but the model {adapter.version} "
            "exports none (a TF OD API export without an image_embedding output), so every image would look alike to it. Drop the "
            "+novelty, +diverse or +coreset part (or the novelty policy), or export the model with an image_embedding output"
        )


def check_adapter_settings(settings: Settings) -> None:
    """At start, before any model loads: what the adapter can check of the settings (e.g. that MODEL_WEIGHTS exists).

    First, that the framework the adapter serves with can be imported here: an adapter class may name it in
    `frameworks` (module names, e.g. ("ultralytics", "torch")) and say what to do without it in `framework_fix`.
    A yolov5 image given ADAPTER=tfod (or the reverse) is refused now, not when the model loads.
    Then the class's own `check_settings(settings)`, if it has one, raising AdapterError with the fix.
    """
    factory = adapter_class(settings)
    check_frameworks(settings.adapter, factory)
    check = getattr(factory, "check_settings", None)
    if check is not None:
        check(settings)


def check_frameworks(name: str, factory) -> None:
    """Refuse adapter `name` when a module of its class's `frameworks` is not importable in this environment."""
    missing = [module for module in getattr(factory, "frameworks", ()) if not _importable(module)]
    if missing:
        fix = getattr(factory, "framework_fix", None) or f"install its dependencies: pip install 'label-studio-ale[{name}]'"
        raise AdapterError(f"ADAPTER={name} needs {' and '.join(missing)}, which this environment lacks; {fix}")


def _importable(module: str) -> bool:
    """Whether `module` can be imported here, found without importing it (torch and TensorFlow take seconds)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module left in sys.modules without a spec
        return False


def load_adapter(settings: Settings) -> Adapter:
    """Load the adapter named by `settings.adapter` and build it from the settings.

    Large images are tiled (TILE_* settings) by a wrapper around it, so every
    caller (serving, the pool, evaluation) predicts them the same way.
    """
    adapter = adapter_class(settings).from_settings(settings)
    if not isinstance(adapter, Adapter):
        raise AdapterError(f"adapter {settings.adapter!r} does not provide classes, version and predict()")
    return sliced(adapter, settings.tiles(), settings.predict_batch_size)


def adapter_class(settings: Settings):
    """The class (entry point) named by `settings.adapter`, imported now."""
    found = available_adapters()
    if settings.adapter not in found:
        raise AdapterError(
            f"ADAPTER={settings.adapter!r} is not installed; available: {', '.join(sorted(found)) or 'none'}. "
            "Install the matching extra, e.g. pip install 'label-studio-ale[yolov5]'"
        )
    try:
        factory = found[settings.adapter].load()
    except ImportError as exc:
        raise AdapterError(
            f"adapter {settings.adapter!r} cannot be imported ({exc}); "
            f"install its dependencies: pip install 'label-studio-ale[{settings.adapter}]'"
        ) from None
    return factory
