"""What results.json records of a benchmark run: each cycle's line, the base model by its content, the selection settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..annotation_edits import EditCounts
from ..settings import ENV_VARS, Settings

if TYPE_CHECKING:
    from .simulation import BenchData

#: Besides the policy's name, the settings (by environment name) that decide its picks; results.json names them.
SELECTION_SETTINGS = (
    "COST_PER_IMAGE", "NOVELTY_WEIGHT", "DIVERSITY_POOL", "DUPLICATE_DISTANCE", "CLASS_BALANCE", "EMPTY_QUOTA", "EXPLORATION_FRACTION",
)  # fmt: skip


def selection_settings(settings: Settings) -> dict:
    """The settings besides the policy's name that decide which images a policy picks, by their environment names.

    A `+cost` policy's order depends on COST_PER_IMAGE, a `+diverse` or
    `+coreset` one's on DIVERSITY_POOL: a result that does not name them cannot be repeated.
    """
    values = {name: getattr(settings, ENV_VARS[name][0]) for name in SELECTION_SETTINGS}
    # as it is written in the environment: label=share pairs
    values["CLASS_BALANCE"] = ",".join(f"{name}={share:g}" for name, share in values["CLASS_BALANCE"])
    return values


def model_identity(weights: str, factory=None) -> str:
    """`sha256:<16 hex>` of a weights file (`name@sha256:...` for a folder's files), or the name itself (a yaml).

    With an adapter class `factory` that has `weights_digest(path)`, a file is
    named by its weights instead, `weights-sha256:<16 hex>`: its bytes also
    hold the date it was written, so the same training run twice gives
    another file hash.
    """
    import hashlib

    path = Path(weights)
    if path.is_file():
        if hasattr(factory, "weights_digest"):
            return f"weights-sha256:{factory.weights_digest(str(path))}"
        return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + file.read_bytes())
        return f"{path.name}@sha256:{digest.hexdigest()[:16]}"
    return str(weights)


def cycle_record(
    cycle: int,
    labelled: list[int],
    metrics: dict,
    data: "BenchData",
    new_index: int | None,
    seconds: float,
    plan: dict | None = None,
    picked: list[int] | None = None,
    edits: EditCounts | None = None,
) -> dict:
    """One cycle's line of results.json; `plan` is the adapter's account of the cycle's fine-tune (`fine_tune`: epochs, steps).

    `picked`: the pool indices the cycle labelled, in queue order, recorded
    by file name (`picked`), so that a run's choices can be looked at.
    `edits`: what labelling them changed in the pre-annotations shown
    (`bench.edits`), a reference policy's included: it picks from the truth, but its images are shown the served model's boxes.
    """
    objects = np.zeros(len(data.names), dtype=np.int64)
    for i in labelled:
        objects += np.bincount(data.pool[i].truth.labels, minlength=len(data.names))
    record = {
        "cycle": cycle,
        "labelled_images": len(labelled),
        "labelled_objects": {name: int(n) for name, n in zip(data.names, objects)},
        "map": metrics["map"],
        "map50": metrics["map50"],
        "voc07_map50": metrics["voc07_map50"],
        "ap50": {name: row.get("map50", 0.0) for name, row in metrics.get("per_class", {}).items()},
        "seconds": round(seconds, 1),
    }
    if new_index is not None:
        record["new_class_ap50"] = record["ap50"].get(data.names[new_index], 0.0)
    if plan:
        record["fine_tune"] = plan
    if picked is not None:
        record["picked"] = [data.pool[i].path.name for i in picked]
    if edits is not None:
        record["edits"] = edits.as_dict()
    return record
