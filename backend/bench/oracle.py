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
"""

from __future__ import annotations

import numpy as np

from .budget import image_costs

#: The bench-only reference; `ale bench al --policies random,oracle-new-class`.
ORACLE_NEW_CLASS = "oracle-new-class"
#: ... and `ale bench al --policies random,oracle-new-class-per-box`.
ORACLE_NEW_CLASS_PER_BOX = "oracle-new-class-per-box"
REFERENCE_POLICIES = (ORACLE_NEW_CLASS, ORACLE_NEW_CLASS_PER_BOX)


def is_reference(name: str) -> bool:
    return name in REFERENCE_POLICIES


def reference_picks(name: str, labels: list[np.ndarray], new_index: int, budget: int, cost_per_image: float) -> np.ndarray:
    """The positions in `labels` (per unlabeled image its true class ids) the reference `name` labels next."""
    if name == ORACLE_NEW_CLASS:
        return new_class_first(labels, new_index, budget)
    if name == ORACLE_NEW_CLASS_PER_BOX:
        return new_class_per_box_first(labels, new_index, budget, cost_per_image)
    raise ValueError(f"{name!r} is not a reference selection; the references are {', '.join(REFERENCE_POLICIES)}")


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
    if budget < 1:
        raise ValueError(f"budget must be a positive number of images, got {budget}")
    new = np.array([int(np.count_nonzero(np.asarray(ids) == new_index)) for ids in labels], dtype=np.int64)
    return new, np.array([len(ids) for ids in labels], dtype=np.int64)
