"""A reference selection that reads the ground truth: how much any policy could save on a benchmark.

`oracle-new-class` is not a policy a project can use (a sync never knows the
labels of the images it ranks). It picks the unlabeled images with the most
boxes of the new class, then the most boxes in all: the best a policy can do
at finding the class the first model never saw, which is what the policies
compete on in the benchmark. Run beside random, its curve bounds the
label saving the benchmark can show at its cycle size.
"""

from __future__ import annotations

import numpy as np

#: The bench-only reference; `ale bench al --policies random,oracle-new-class`.
ORACLE_NEW_CLASS = "oracle-new-class"
REFERENCE_POLICIES = (ORACLE_NEW_CLASS,)


def is_reference(name: str) -> bool:
    return name in REFERENCE_POLICIES


def new_class_first(labels: list[np.ndarray], new_index: int, budget: int) -> np.ndarray:
    """Per unlabeled image its (n_i,) true class ids -> (min(budget, m),) positions: most new-class boxes first.

    Ties go to the image with more boxes in all, then to the earlier position.
    """
    if budget < 1:
        raise ValueError(f"budget must be a positive number of images, got {budget}")
    new = np.array([int(np.count_nonzero(np.asarray(ids) == new_index)) for ids in labels], dtype=np.int64)
    total = np.array([len(ids) for ids in labels], dtype=np.int64)
    order = np.lexsort((np.arange(len(labels)), -total, -new))  # last key sorts first
    return order[:budget]
