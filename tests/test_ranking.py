import numpy as np
import pytest

from label_studio_ale.detections import Detections
from label_studio_ale.ranking import BatchExtras, ls_scores, rank, select_order


def det(labels, n_classes=2):
    probs = np.zeros((len(labels), n_classes))
    for i, label in enumerate(labels):
        probs[i, label] = 0.9
    return Detections(np.tile([0.0, 0.0, 5.0, 5.0], (len(labels), 1)), probs, (10, 10))


def test_rank_is_descending_usefulness_with_task_id_ties():
    order = rank(np.array([0.2, 0.9, 0.2, 0.5]), np.array([30, 10, 20, 40]))
    assert order.tolist() == [1, 3, 2, 0]  # the 0.2 tie: task 20 before task 30


def test_ls_scores_most_useful_lowest_with_room_at_both_ends():
    assert ls_scores(np.array([2, 0, 1])).tolist() == [0.5, 0.75, 0.25]
    assert ls_scores(np.array([0])).tolist() == [0.5]
    assert ls_scores(np.array([], dtype=int)).tolist() == []


def test_without_extras_the_order_is_the_rank():
    u = np.array([0.1, 0.3, 0.2])
    assert select_order(u, np.array([1, 2, 3])).tolist() == [1, 2, 0]


def test_near_duplicates_leave_the_batch():
    u = np.array([0.9, 0.8, 0.7, 0.6])
    hashes = [0b1111, 0b1110, 0b0000_1111_0000, None]  # image 1 is 1 bit from image 0
    order = select_order(u, np.arange(4), hashes=hashes, extras=BatchExtras(batch_size=3, duplicate_distance=2))
    assert order.tolist() == [0, 2, 3, 1]
    off = select_order(u, np.arange(4), hashes=hashes, extras=BatchExtras(batch_size=3))
    assert off.tolist() == [0, 1, 2, 3]


def test_class_balance_fills_the_batch_towards_targets():
    # the most useful four are all class 0; class 1 waits behind them
    detections = [det([0]), det([0]), det([0]), det([0]), det([1]), det([1])]
    u = np.linspace(1, 0.5, 6)
    extras = BatchExtras(batch_size=4, class_balance={0: 0.5, 1: 0.5})
    order = select_order(u, np.arange(6), detections, extras=extras)
    head = order[:4].tolist()
    assert sorted(d for d in head if d >= 4) == [4, 5]  # both class-1 images made the batch
    assert head[0] == 0  # the most useful image still comes first
    assert sorted(order.tolist()) == list(range(6))


def test_empty_quota_brings_images_without_predictions_into_the_batch():
    detections = [det([0]), det([1]), det([0]), det([]), det([])]
    u = np.array([0.9, 0.8, 0.7, 0.0, 0.0])
    order = select_order(u, np.arange(5), detections, extras=BatchExtras(batch_size=3, empty_quota=0.3))  # ceil(0.9) = 1 slot
    assert order[:3].tolist() == [0, 1, 3] and order.tolist()[3:] == [2, 4]


def test_exploration_swaps_in_confident_images_reproducibly():
    u = np.linspace(1, 0, 20)
    extras = BatchExtras(batch_size=5, exploration=0.4, seed=1)
    first = select_order(u, np.arange(20), extras=extras)
    assert np.array_equal(first, select_order(u, np.arange(20), extras=extras))
    head = first[:5].tolist()
    assert head[:3] == [0, 1, 2]
    assert all(i >= 5 + 15 // 2 for i in head[3:])  # from the most confident half of the rest
    assert sorted(first.tolist()) == list(range(20))


def test_exploration_keeps_the_empty_quota_in_the_batch():
    """Exploration replaces the least useful of the batch, which are where the quota put its empty images."""
    detections = [det([0]) for _ in range(980)] + [det([]) for _ in range(20)]
    u = np.concatenate([np.linspace(1, 0.1, 980), np.zeros(20)])
    alone = select_order(u, np.arange(1000), detections, extras=BatchExtras(batch_size=50, empty_quota=0.1))
    both = select_order(u, np.arange(1000), detections, extras=BatchExtras(batch_size=50, empty_quota=0.1, exploration=0.2, seed=4))
    empty_in = lambda order: sum(len(detections[i]) == 0 for i in order[:50])  # noqa: E731
    assert empty_in(alone) == 5 and empty_in(both) == 5
    assert sum(i >= 50 and len(detections[i]) > 0 for i in both[:50]) == 10  # the ten exploration picks
    assert sorted(both.tolist()) == list(range(1000))


def test_exploration_draws_confident_predictions_not_empty_images():
    """In a pool of mostly empty frames, usefulness 0 fills the confident end; exploration looks at predictions."""
    detections = [det([0]) for _ in range(200)] + [det([]) for _ in range(800)]
    u = np.concatenate([np.linspace(1, 0.01, 200), np.zeros(800)])
    order = select_order(u, np.arange(1000), detections, extras=BatchExtras(batch_size=50, exploration=0.2, seed=0))
    picks = order[40:50].tolist()
    assert all(len(detections[i]) > 0 for i in picks)
    assert all(50 + 150 // 2 <= i < 200 for i in picks)  # the more confident half of the predicted tail
    # with no predicted image left outside the batch, the empty ones are all there is
    few = [det([0]) for _ in range(5)] + [det([]) for _ in range(10)]
    order = select_order(np.concatenate([np.linspace(1, 0.5, 5), np.zeros(10)]), np.arange(15), few, extras=BatchExtras(batch_size=5, exploration=0.4))
    assert all(i >= 5 for i in order[3:5].tolist())


def test_spread_order_counts_bits_without_numpy_2():
    from label_studio_ale.ranking import _bit_counts

    values = np.array([0, 1, 2**64 - 1, 0xF0F0, 2**63], dtype=np.uint64)
    assert _bit_counts(values).tolist() == [0, 1, 64, 8, 1]
    assert _bit_counts(values).tolist() == np.bitwise_count(values).tolist()


def test_bad_extras_are_named():
    with pytest.raises(ValueError, match="exploration"):
        BatchExtras(exploration=2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchExtras(batch_size=0)
    with pytest.raises(ValueError, match="class_balance"):
        BatchExtras(class_balance={0: -1})


@pytest.mark.parametrize(
    "extras",
    [BatchExtras(batch_size=4, exploration=1.0, seed=3), BatchExtras(batch_size=4, empty_quota=1.0), BatchExtras(batch_size=4, exploration=0.5, empty_quota=0.5)],
    ids=["exploration", "empty quota", "both"],
)
def test_unusable_images_are_last_whatever_the_extras_do(extras):
    """Images that could not be fetched have no boxes and no usefulness: neither extra may pick them."""
    usable = np.array([True] * 8 + [False] * 4)
    detections = [det([0]) for _ in range(6)] + [det([]), det([])] + [Detections.empty(2, (1, 1))] * 4
    u = np.concatenate([np.linspace(1, 0.2, 6), [0.0, 0.0], [-np.inf] * 4])
    task_ids = np.array([5, 6, 7, 8, 9, 10, 11, 12, 40, 30, 20, 10_000])
    order = select_order(u, task_ids, detections, extras=extras, usable=usable)
    assert sorted(order.tolist()) == list(range(12))
    assert not set(order[:4].tolist()) & {8, 9, 10, 11}
    assert order[8:].tolist() == [10, 9, 8, 11]  # the unusable ones, by task id
    # the usable ones are ordered exactly as they would be on their own
    alone = select_order(u[:8], task_ids[:8], detections[:8], extras=extras)
    assert order[:8].tolist() == alone.tolist()


def test_usable_must_fit_the_pool():
    with pytest.raises(ValueError, match="usable"):
        select_order(np.zeros(3), np.arange(3), usable=np.ones(2, dtype=bool))


def test_spread_order_visits_every_look_before_repeating_one():
    from label_studio_ale.ranking import spread_order

    sites = [0x0000_0000_FFFF_FFFF, 0xFFFF_FFFF_0000_0000, 0x00FF_00FF_00FF_00FF, 0xFF00_FF00_FF00_FF00]
    # three frames per site, imported site by site, each a bit or two from its site's look
    hashes = [site ^ (1 << frame) for site in sites for frame in range(3)]
    order, spread = spread_order(hashes + [None], np.arange(1, 14))
    first = order[:4].tolist()
    assert first[0] == 0 and sorted(i // 3 for i in first) == [0, 1, 2, 3]  # one frame of each site first
    assert spread[0] == 64 and spread[first[1]] >= spread[first[2]] >= spread[first[3]] > spread[order[4]]
    assert order[-1] == 12 and sorted(order.tolist()) == list(range(13))  # the unusable image is last
    # past the head, task id order
    capped, _ = spread_order(hashes, np.arange(1, 13), head=2)
    assert capped[:2].tolist() == first[:2] and capped[2:].tolist() == sorted(set(range(12)) - set(first[:2]))


def test_spread_order_of_nothing_and_of_identical_images():
    from label_studio_ale.ranking import spread_order

    assert spread_order([], np.array([], dtype=int))[0].tolist() == []
    order, spread = spread_order([7, 7, 7], np.array([30, 10, 20]))
    assert order.tolist() == [1, 2, 0] and spread.tolist() == [0, 64, 0]


def test_a_coreset_batch_keeps_away_from_the_labelled_images_too():
    # candidates by usefulness: 0 and 1 look like a labelled image, 2 and 3 are unlike anything labelled
    vectors = {0: [1.0, 0.0], 1: [0.98, 0.2], 2: [0.0, 1.0], 3: [-1.0, 0.0], 4: [0.0, -1.0]}
    usefulness = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    ids = np.arange(20, 25)
    lookup = lambda idx: [np.array(vectors[i]) for i in idx]  # noqa: E731
    extras = BatchExtras(batch_size=2, diversity_pool=2)
    labelled = np.array([[0.99, 0.1]])
    # without the labelled images: the most useful (0), then the farthest from it (3)
    assert select_order(usefulness, ids, extras=extras, embeddings=lookup).tolist() == [0, 3, 1, 2, 4]
    # with them: 3 is farthest from the labelled image (distance ~1.99), then 2 (1.41 from 3, ~1.27 from labelled)
    assert select_order(usefulness, ids, extras=extras, embeddings=lookup, labelled=labelled).tolist() == [3, 2, 0, 1, 4]
    # an empty labelled set (a project with nothing labelled yet) is the plain diverse batch
    assert select_order(usefulness, ids, extras=extras, embeddings=lookup, labelled=np.zeros((0, 0))).tolist() == [0, 3, 1, 2, 4]
    # unusable images still come last; among the usable candidates 4 is farthest from the labelled image (1.48), then 2
    usable = np.array([True, True, True, False, True])
    assert select_order(usefulness, ids, extras=extras, usable=usable, embeddings=lookup, labelled=labelled).tolist() == [4, 2, 0, 1, 3]


def test_a_diverse_batch_is_chosen_by_k_center_among_the_most_useful_candidates():
    # six images by usefulness; 0, 1, 2 look alike, 3 and 4 are elsewhere, 5 is far but beyond the candidate pool
    vectors = {0: [1.0, 0.0], 1: [0.99, 0.14], 2: [0.98, 0.2], 3: [0.0, 1.0], 4: [-1.0, 0.0], 5: [0.0, -1.0]}
    usefulness = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    ids = np.arange(10, 16)
    lookup_calls = []

    def lookup(indices):
        lookup_calls.append(list(indices))
        return [np.array(vectors[i]) for i in indices]

    extras = BatchExtras(batch_size=2, diversity_pool=2)
    order = select_order(usefulness, ids, embeddings=lookup, extras=extras).tolist()
    # candidates 0..3: the most useful (0), then the farthest from it (3); the other candidates follow in usefulness order
    assert order == [0, 3, 1, 2, 4, 5]
    assert lookup_calls == [[0, 1, 2, 3]], "only the candidates' embeddings are read"
    assert select_order(usefulness, ids, extras=BatchExtras(batch_size=2)).tolist() == [0, 1, 2, 3, 4, 5], "off: usefulness order"
    # candidates without an embedding follow the chosen batch
    partial = select_order(usefulness, ids, extras=extras, embeddings=lambda idx: [None if i == 0 else np.array(vectors[i]) for i in idx])
    assert partial.tolist()[:2] == [1, 3]
    with pytest.raises(ValueError, match="diversity_pool must be 0"):
        BatchExtras(diversity_pool=1)
