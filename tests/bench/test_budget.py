"""A cycle's labelling under a cost budget: where it stops, the batch the extras shape, the pool check."""

import numpy as np
import pytest

from label_studio_ale.bench.budget import batch_size_for_cost, check_budget_cost, check_pool_cost, cost_prefix


def test_labelling_stops_at_the_image_that_reaches_the_cost():
    # costs with 2 per image: 3, 2, 6, 4 -> spent 3, 5, 11, 15
    boxes = [1, 0, 4, 2]
    assert cost_prefix(boxes, 2.0, 5) == 2  # reached exactly by the second image
    assert cost_prefix(boxes, 2.0, 6) == 3  # the crowded third image is finished, as an annotator would
    assert cost_prefix(boxes, 2.0, 1) == 1
    assert cost_prefix(boxes, 0.0, 5) == 3  # boxes alone: 1, 1, 5
    # a queue that costs less than the budget is labelled to its end; an empty one labels nothing
    assert cost_prefix(boxes, 2.0, 100) == 4
    assert cost_prefix([], 2.0, 10) == 0


def test_a_sparse_queue_buys_more_images_than_a_crowded_one():
    assert cost_prefix([1] * 50, 2.0, 30) == 10
    assert cost_prefix([4] * 50, 2.0, 30) == 5


def test_the_batch_extras_shape_the_images_the_budget_buys_at_the_predicted_cost():
    assert batch_size_for_cost([1, 3, 2, 2], 2.0, 40) == 10  # mean predicted cost 4
    assert batch_size_for_cost([0, 0], 0.5, 0.2) == 1  # at least one image
    assert batch_size_for_cost([0, 0], 0.0, 5) == 2  # nothing costs anything: the whole queue
    assert batch_size_for_cost(np.array([], dtype=int), 2.0, 10) == 5


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "10", True])
def test_a_bad_budget_cost_names_the_option(value):
    with pytest.raises(ValueError, match="budget_cost must be 0 .* or a positive number of boxes"):
        check_budget_cost(value)


def test_bad_box_counts_and_image_costs_are_refused():
    with pytest.raises(ValueError, match="boxes must be a 1-d array of counts >= 0"):
        cost_prefix([1, -1], 2.0, 3)
    with pytest.raises(ValueError, match="cost_per_image must be a finite number"):
        cost_prefix([1, 1], float("nan"), 3)


def test_the_pool_must_pay_every_cycle_whichever_images_the_initial_set_takes():
    boxes = [5, 1, 1, 1, 1]  # costs 7, 3, 3, 3, 3 with 2 per image
    check_pool_cost(boxes, 2.0, initial=1, cycles=2, budget_cost=6)  # 12 left besides the costliest
    with pytest.raises(ValueError, match=r"cost 19 boxes in all \(12 besides the costliest 1.*2 cycles of --budget-cost 6.5 need 13"):
        check_pool_cost(boxes, 2.0, initial=1, cycles=2, budget_cost=6.5)
