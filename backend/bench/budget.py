"""What a benchmark cycle labels: a number of images, or images up to an annotation cost.

A team that pays per image labels the first `budget` images of the queue. A
team that pays per box spends an amount: it labels the queue in order until
the boxes drawn, plus `cost_per_image` per image opened (COST_PER_IMAGE, the
`+cost` policies' and the per-box oracle's measure), reach it. The image that
reaches the amount is finished, as an annotator would finish it. Under a cost
budget a policy that serves sparse images labels more of them per cycle, and
one that serves crowded images fewer, which is what the same money buys.
"""

from __future__ import annotations

import numpy as np


def check_budget_cost(budget_cost: float) -> None:
    """ValueError naming the option unless `budget_cost` is 0 (count images) or a positive finite cost."""
    if isinstance(budget_cost, bool) or not isinstance(budget_cost, (int, float)) or not np.isfinite(budget_cost) or budget_cost < 0:
        raise ValueError(f"budget_cost must be 0 (each cycle labels --budget images) or a positive number of boxes, got {budget_cost!r}")


def image_costs(boxes, cost_per_image: float) -> np.ndarray:
    """(m,) boxes per image -> (m,) what annotating each costs, in boxes."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 1 or (boxes < 0).any():
        raise ValueError(f"boxes must be a 1-d array of counts >= 0, got shape {boxes.shape}")
    if not np.isfinite(cost_per_image) or cost_per_image < 0:
        raise ValueError(f"cost_per_image must be a finite number of boxes >= 0, got {cost_per_image}")
    return boxes + cost_per_image


def cost_prefix(boxes_in_order, cost_per_image: float, budget_cost: float) -> int:
    """How many images of a queue a cycle labels: (m,) true boxes of the images in queue order -> n <= m.

    The shortest prefix whose cost reaches `budget_cost`; all m where the
    queue costs less (a pool that runs out labels what is left).
    """
    spent = np.cumsum(image_costs(boxes_in_order, cost_per_image))
    return int(min(np.searchsorted(spent, budget_cost, side="left") + 1, len(spent)))


def batch_size_for_cost(predicted_boxes, cost_per_image: float, budget_cost: float) -> int:
    """The batch size the batch extras (diversity, exploration, quotas) shape under a cost budget.

    (m,) boxes the model predicts per unlabeled image -> images the budget buys
    at their mean predicted cost, at least 1. The selection never reads the
    ground truth; only the labelling that follows does (`cost_prefix`).
    """
    costs = image_costs(predicted_boxes, cost_per_image)
    mean = costs.mean() if costs.size else cost_per_image
    return max(1, int(round(budget_cost / mean))) if mean > 0 else max(1, costs.size)


def check_pool_cost(boxes, cost_per_image: float, initial: int, cycles: int, budget_cost: float) -> None:
    """ValueError unless the pool can pay every cycle whichever `initial` images the initial set takes.

    boxes: (m,) true boxes per pool image. The initial set may take the
    costliest images, so only what the rest costs counts.
    """
    costs = np.sort(image_costs(boxes, cost_per_image))
    rest = costs[: max(0, costs.size - initial)].sum()
    if rest < cycles * budget_cost:
        raise ValueError(
            f"the pool's images cost {costs.sum():.0f} boxes in all ({rest:.0f} besides the costliest {initial}, "
            f"with COST_PER_IMAGE={cost_per_image:g}); {cycles} cycles of --budget-cost {budget_cost:g} need {cycles * budget_cost:.0f}: "
            f"lower --budget-cost or --cycles, or use a larger dataset"
        )
