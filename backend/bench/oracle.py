"""Reference selections that read the ground truth: how much any policy could save on a benchmark.

They are not policies a project can use (a sync never knows the labels of the
images it ranks); they are run beside random:

- `oracle-new-class`: the unlabeled images with the most boxes of the new
  class, then the most boxes in all: the best a policy can do at finding the
  class the first model never saw, which is what the policies compete on in
  the benchmark. Its curve bounds the image saving the benchmark can show at
  its cycle size.
- `oracle-new-class-per-box`: the images with the most new-class boxes per
  unit of annotation cost, boxes + `cost_per_image` (the `+cost` policies'
  measure), then the fewest boxes in all: the new class at the fewest boxes
  to draw. A reference for the box saving, not a bound: it buys the new class
  long past what the model needs and starves the old classes (README).
- `oracle-errors`: the unlabeled images on which the served model's
  pre-annotations are most wrong at mAP50's standard (a wrong label, a false
  box, a missed object: `EditCounts.mistakes`), then the most boxes in all:
  uncertainty sampling with the uncertainty known exactly.
- `oracle-errors-per-box`: the most of those mistakes per unit of annotation
  cost, then the fewest boxes: where the model is wrong at the fewest boxes
  to draw. What a box-lean policy could buy if it knew where the model errs;
  its distance from the best policy is what estimating that costs.
"""

from __future__ import annotations

import numpy as np

from .budget import image_costs

#: The bench-only reference; `ale bench al --policies random,oracle-new-class`.
ORACLE_NEW_CLASS = "oracle-new-class"
#: ... and `ale bench al --policies random,oracle-new-class-per-box`.
ORACLE_NEW_CLASS_PER_BOX = "oracle-new-class-per-box"
#: ... `--policies random,oracle-errors,oracle-errors-per-box`.
ORACLE_ERRORS = "oracle-errors"
ORACLE_ERRORS_PER_BOX = "oracle-errors-per-box"
NEW_CLASS_REFERENCES = (ORACLE_NEW_CLASS, ORACLE_NEW_CLASS_PER_BOX)
MISTAKE_REFERENCES = (ORACLE_ERRORS, ORACLE_ERRORS_PER_BOX)
REFERENCE_POLICIES = NEW_CLASS_REFERENCES + MISTAKE_REFERENCES


def is_reference(name: str) -> bool:
    return name in REFERENCE_POLICIES


def reads_mistakes(name: str) -> bool:
    """Whether the reference ranks by the served model's mistakes (it needs the pool's pre-annotations)."""
    return name in MISTAKE_REFERENCES


def reference_picks(
    name: str, labels: list[np.ndarray], new_index: int | None, budget: int, cost_per_image: float, mistakes: np.ndarray | None = None
) -> np.ndarray:
    """The positions in `labels` (per unlabeled image its true class ids) the reference `name` labels next.

    mistakes: (m,) per unlabeled image the served model's mistakes on it, for `MISTAKE_REFERENCES`.
    """
    if name in MISTAKE_REFERENCES:
        if mistakes is None or len(mistakes) != len(labels):
            raise ValueError(f"{name} ranks by the served model's mistakes: give one count per unlabeled image")
        if name == ORACLE_ERRORS:
            return most_mistakes_first(labels, mistakes, budget)
        return most_mistakes_per_box_first(labels, mistakes, budget, cost_per_image)
    if name in NEW_CLASS_REFERENCES and new_index is None:
        raise ValueError(f"{name} picks images of the new class: name one with --new-class")
    if name == ORACLE_NEW_CLASS:
        return new_class_first(labels, new_index, budget)
    if name == ORACLE_NEW_CLASS_PER_BOX:
        return new_class_per_box_first(labels, new_index, budget, cost_per_image)
    raise ValueError(f"{name!r} is not a reference selection; the references are {', '.join(REFERENCE_POLICIES)}")


def most_mistakes_first(labels: list[np.ndarray], mistakes: np.ndarray, budget: int) -> np.ndarray:
    """(m,) true class ids per image and (m,) mistakes -> (min(budget, m),) positions: most mistakes first.

    Ties go to the image with more boxes in all, then to the earlier position.
    """
    mistakes, total = _mistake_counts(labels, mistakes, budget)
    order = np.lexsort((np.arange(len(labels)), -total, -mistakes))  # last key sorts first
    return order[:budget]


def most_mistakes_per_box_first(labels: list[np.ndarray], mistakes: np.ndarray, budget: int, cost_per_image: float) -> np.ndarray:
    """(m,) true class ids per image and (m,) mistakes -> (min(budget, m),) positions: most mistakes per cost first.

    An image's cost is its boxes + `cost_per_image`: a false box on an empty
    image is a mistake at the cost of no box to draw. Ties go to the image
    with fewer boxes, then to the earlier position.
    """
    mistakes, total = _mistake_counts(labels, mistakes, budget)
    per_cost = np.divide(mistakes, image_costs(total, cost_per_image), out=np.zeros(len(labels)), where=mistakes > 0)
    order = np.lexsort((np.arange(len(labels)), total, -per_cost))  # last key sorts first
    return order[:budget]


def _mistake_counts(labels: list[np.ndarray], mistakes, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(m,) mistakes and (m,) boxes in all per image, once the budget and the counts are checked."""
    total = _checked_totals(labels, budget)
    mistakes = np.asarray(mistakes, dtype=np.int64)
    if mistakes.shape != (len(labels),) or (mistakes < 0).any():
        raise ValueError(f"mistakes must be ({len(labels)},) counts >= 0, one per image; got shape {mistakes.shape}")
    return mistakes, total


def new_class_first(labels: list[np.ndarray], new_index: int, budget: int) -> np.ndarray:
    """Per unlabeled image its (n_i,) true class ids -> (min(budget, m),) positions: most new-class boxes first.

    Ties go to the image with more boxes in all, then to the earlier position.
    """
    new, total = _box_counts(labels, new_index, budget)
    order = np.lexsort((np.arange(len(labels)), -total, -new))  # last key sorts first
    return order[:budget]


def new_class_per_box_first(labels: list[np.ndarray], new_index: int, budget: int, cost_per_image: float) -> np.ndarray:
    """Per unlabeled image its (n_i,) true class ids -> (min(budget, m),) positions: most new-class boxes per cost first.

    An image's cost is its boxes + `cost_per_image`. Ties go to the image with
    fewer boxes in all, then to the earlier position; an image without a box
    of the new class scores 0, whatever it costs.
    """
    new, total = _box_counts(labels, new_index, budget)
    per_cost = np.divide(new, image_costs(total, cost_per_image), out=np.zeros(len(labels)), where=new > 0)
    order = np.lexsort((np.arange(len(labels)), total, -per_cost))  # last key sorts first
    return order[:budget]


def _box_counts(labels: list[np.ndarray], new_index: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(m,) new-class boxes and (m,) boxes in all per image, once the budget is checked."""
    total = _checked_totals(labels, budget)
    new = np.array([int(np.count_nonzero(np.asarray(ids) == new_index)) for ids in labels], dtype=np.int64)
    return new, total


def _checked_totals(labels: list[np.ndarray], budget: int) -> np.ndarray:
    """(m,) boxes in all per image, once `budget` is checked to be a positive number of images."""
    if budget < 1:
        raise ValueError(f"budget must be a positive number of images, got {budget}")
    return np.array([len(ids) for ids in labels], dtype=np.int64)
