"""The null reference: random from a second stream, so that its saving over random is chance alone."""

import numpy as np
import pytest

from label_studio_ale.bench.null import RANDOM_NULL, as_selection, is_null, null_seed, null_stream
from label_studio_ale.bench.simulation import BenchConfig, select_queue
from label_studio_ale.detections import Detections
from label_studio_ale.settings import Settings


def test_the_null_seed_is_fixed_per_seed_and_outside_every_bench_seed():
    seeds = [seed * 1000 + cycle for seed in range(6) for cycle in range(1, 4)]  # the bench's per-cycle seeds
    nulls = [null_seed(s) for s in seeds]
    assert nulls == [null_seed(s) for s in seeds]  # the same run gives the same null
    assert len(set(nulls)) == len(seeds)
    assert min(nulls) > 2**32  # no bench seed (seed * 1000 + cycle) reaches it


def test_a_negative_seed_or_stream_is_refused():
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        null_seed(-1)
    with pytest.raises(ValueError, match="stream must be a positive integer, got 0"):
        null_seed(3, 0)


def test_each_null_name_draws_from_its_own_stream():
    assert [null_stream(n) for n in (RANDOM_NULL, "random-null-1", "random-null-2", "random-null-12")] == [1, 1, 2, 12]
    assert len({null_seed(5, k) for k in (1, 2, 3)}) == 3
    for name in ("random-null-0", "random-null-x", "random-null-", "random"):
        assert not is_null(name)
        with pytest.raises(ValueError, match="is not a null reference"):
            null_stream(name)


def test_random_null_ranks_as_random_from_another_stream_and_every_other_policy_is_itself():
    assert as_selection(RANDOM_NULL, 7) == ("random", null_seed(7)) == ("random", null_seed(7, 1))
    assert as_selection("random-null-2", 7) == ("random", null_seed(7, 2))
    assert as_selection("random", 7) == ("random", 7)
    assert as_selection("ale-entropy-sum", 7) == ("ale-entropy-sum", 7)
    assert is_null(RANDOM_NULL) and not is_null("random")


def test_the_null_queue_is_a_random_queue_unlike_randoms_own():
    pool = [Detections(np.zeros((0, 4)), np.zeros((0, 2)), (64, 64)) for _ in range(40)]
    ids = np.arange(1, 41)

    def queue(name, seed):
        policy, seed = as_selection(name, seed)
        return select_queue(Settings(), policy, pool, ids, None, ["a", "b"], 8, seed)

    random, null = queue("random", 1001), queue(RANDOM_NULL, 1001)
    assert sorted(null) == sorted(random) == list(range(40))  # a whole queue, each image once
    assert list(null[:8]) != list(random[:8])
    assert list(null) == list(queue(RANDOM_NULL, 1001))


def test_the_bench_accepts_random_null_beside_random():
    config = BenchConfig(policies=("random", RANDOM_NULL, "random-null-2"))
    assert config.policies == ("random", RANDOM_NULL, "random-null-2")
