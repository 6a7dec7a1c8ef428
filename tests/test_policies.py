import math

import numpy as np
import pytest

from label_studio_ale.detections import Detections
from label_studio_ale.policies import (
    DEFAULT_POLICY,
    ConfidencePolicy,
    CustomPolicy,
    UncertaintyPolicy,
    get_policy,
    policy_names,
    single_object_confidence,
)

H_A = -(0.5 * math.log(0.5) + 1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3))
H_B = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
LC_A, LC_B = 5 / 6, 0.2

TWO = Detections([[0, 0, 10, 10], [0, 0, 20, 10]], [[0.6, 0.2], [0.9, 0.0]], (64, 64))
ONE = Detections([[0, 0, 10, 10]], [[0.6, 0.2]], (64, 64))
NONE = Detections.empty(2, (64, 64))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ale-entropy-sum", [(H_A + H_B) * math.sqrt(2), H_A, 0.0]),
        ("entropy-sum", [H_A + H_B, H_A, 0.0]),
        ("ale-entropy-max", [H_A * math.sqrt(2), H_A, 0.0]),
        ("entropy-mean", [(H_A + H_B) / 2, H_A, 0.0]),
        ("ale-lc-max", [LC_A * math.sqrt(2), LC_A, 0.0]),
        ("lc-sum", [LC_A + LC_B, LC_A, 0.0]),
        ("ale-lc-mean", [(LC_A + LC_B) / 2 * math.sqrt(2), LC_A, 0.0]),
        ("lc-min", [LC_B, LC_A, 0.0]),
        # the Conservation Metrics pipeline: usefulness = 1 - confidence; weighted by box area (100 and 200 px)
        ("min-confidence", [0.4, 0.4, 0.0]),
        ("mean-confidence", [0.25, 0.4, 0.0]),
        ("weighted-confidence", [1 - (0.6 * 100 + 0.9 * 200) / 300, 0.4, 0.0]),
    ],
)
def test_policy_values_by_hand_on_two_one_and_zero_boxes(name, expected):
    policy = get_policy(name)
    assert policy.name == name
    assert policy.usefulness([TWO, ONE, NONE]) == pytest.approx(expected)


def test_default_is_ale_entropy_sum_and_names_resolve():
    assert DEFAULT_POLICY == "ale-entropy-sum"
    for name in policy_names():
        assert get_policy(name).name == name
    assert isinstance(get_policy("ale-lc-sum"), UncertaintyPolicy) and isinstance(get_policy("min-confidence"), ConfidencePolicy)


def test_random_policy_is_seeded():
    a = get_policy("random", seed=3).usefulness([ONE] * 5)
    b = get_policy("random", seed=3).usefulness([ONE] * 5)
    c = get_policy("random", seed=4).usefulness([ONE] * 5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_seed_000_custom_policy_by_dotted_path():
    policy = get_policy("label_studio_ale.policies:single_object_confidence")
    assert isinstance(policy, CustomPolicy)
    # confidence 0 unless exactly one object -> those come first
    assert policy.usefulness([TWO, ONE, NONE]) == pytest.approx([0.0, -0.6, 0.0])
    assert single_object_confidence(ONE) == pytest.approx(0.6)


def test_unknown_and_broken_policies_are_clear_errors():
    with pytest.raises(ValueError, match="unknown; choose one of"):
        get_policy("entropy-median")
    with pytest.raises(ValueError, match="cannot import"):
        get_policy("no_such_module:f")
    with pytest.raises(ValueError, match="is not a function"):
        get_policy("label_studio_ale.policies:DEFAULT_POLICY")
    with pytest.raises(ValueError, match="non-finite"):
        CustomPolicy("nan", lambda d: float("nan")).usefulness([ONE])


def test_bad_suffixes_are_policy_errors_that_name_the_part():
    """Each is a PolicyError (the CLI's configuration error, not a traceback) quoting the whole POLICY."""
    from label_studio_ale.errors import PolicyError

    cases = {
        "random+rare": r"POLICY=random\+rare: .*put \+rare right after it",
        "ale-entropy-sum+cost+cost": r"\+cost appears 2 times; each suffix applies once",
        "entropy-mean+novelty+rare+novelty": r"\+novelty appears 2 times",
        "entropy-mean+coreset+diverse": r"\+coreset is \+diverse that also keeps away",
        "ale-entropy-sum+bogus": r"'\+bogus' is not a suffix.*\+cost, \+novelty",
        "entropy-median+cost": r"'entropy-median' is unknown",
        "entropy-median": r"unknown; choose one of.*suffixes \+cost",
    }
    for name, message in cases.items():
        with pytest.raises(PolicyError, match=message):
            get_policy(name)
    with pytest.raises(PolicyError, match=r"POLICY=entropy-mean\+cost: the cost per image must be a positive"):
        get_policy("entropy-mean+cost", cost_per_image=0)
    assert get_policy("entropy-mean+rare+novelty+cost+diverse").name == "entropy-mean+rare+novelty+cost+diverse"


def test_uncertainty_policy_is_vectorised_over_many_images():
    rng = np.random.default_rng(0)
    images = [Detections(np.tile([0, 0, 5, 5], (n, 1)), rng.uniform(0, 1, (n, 3)), (10, 10)) for n in (0, 3, 1, 0, 7)]
    policy = get_policy("ale-entropy-sum")
    together = policy.usefulness(images)
    one_by_one = [policy.usefulness([d])[0] for d in images]
    assert together == pytest.approx(one_by_one)
    assert together[0] == 0 and together[3] == 0


def test_the_cost_aware_option_prefers_cheap_images_at_similar_usefulness():
    crowded = Detections(np.tile([[0, 0, 9, 9]], (10, 1)), np.tile([[0.9, 0.05]], (10, 1)), (64, 64))  # 10 fairly sure boxes
    single = Detections([[0, 0, 9, 9]], [[0.5, 0.5]], (64, 64))  # 1 unsure box
    plain = get_policy("entropy-sum")
    aware = get_policy("entropy-sum+cost", cost_per_image=1.0)
    assert aware.name == "entropy-sum+cost" and aware.needs_class_vectors
    useful = plain.usefulness([crowded, single])
    assert useful[0] > useful[1]  # the crowded image is more useful...
    per_cost = aware.usefulness([crowded, single])
    assert per_cost[0] < per_cost[1]  # ...but less per unit of cost: 10 boxes + 1 against 1 box + 1
    np.testing.assert_allclose(per_cost, useful / np.array([11.0, 2.0]))
    # an empty image costs the constant alone; a negative usefulness (a custom policy) is multiplied by its cost
    assert aware.usefulness([Detections.empty(2, (8, 8))]).tolist() == [0.0]
    custom = get_policy(f"{__name__}:half+cost", cost_per_image=2.0)
    assert custom.usefulness([single, crowded]).tolist() == [-0.5 * 3, -0.5 * 12]
    with pytest.raises(ValueError, match="positive number of boxes"):
        get_policy("random+cost", cost_per_image=0)


def half(detections) -> float:
    return 0.5


def test_novelty_ranks_images_unlike_the_labelled_set_first_and_mixes_with_any_policy():
    from label_studio_ale.novelty import image_novelty

    near = ONE.with_embedding([1.0, 0.0])
    far = ONE.with_embedding([0.0, 1.0])
    blind = ONE  # a model that gives no embedding
    labelled = np.array([[1.0, 0.0], [0.8, 0.6]])  # spacing: the two are 0.632 apart
    values = image_novelty([near, far, blind], labelled)
    np.testing.assert_allclose(values, [0.0, math.dist([0, 1], [0.8, 0.6]) / math.dist([1, 0], [0.8, 0.6]), 1.0])
    assert image_novelty([near, far], np.zeros((0, 2))).tolist() == [1.0, 1.0], "nothing labelled yet"
    assert image_novelty([blind, blind], labelled).tolist() == [1.0, 1.0], "a model without embeddings: neutral"
    novelty = get_policy("novelty")
    assert novelty.name == "novelty" and not novelty.needs_class_vectors
    np.testing.assert_allclose(novelty.usefulness([near, far, blind], values), values)
    with pytest.raises(ValueError, match="needs each image's novelty"):
        novelty.usefulness([near])
    with pytest.raises(ValueError, match=r"novelty must be \(2,\)"):
        novelty.usefulness([near, far], values)
    # the mix: an equally uncertain image twice as novel counts twice as useful (weight 1), or as much (weight 0)
    plain = get_policy("entropy-sum").usefulness([near, far])
    mixed = get_policy("entropy-sum+novelty", novelty_weight=1.0)
    assert mixed.name == "entropy-sum+novelty" and mixed.needs_class_vectors
    np.testing.assert_allclose(mixed.usefulness([near, far], values[:2]), plain * np.maximum(values[:2], 1e-6))
    np.testing.assert_allclose(get_policy("entropy-sum+novelty", novelty_weight=0.0).usefulness([near, far], values[:2]), plain)
    with pytest.raises(ValueError, match="novelty weight"):
        get_policy("entropy-sum+novelty", novelty_weight=-1)


def test_suffixes_combine_and_the_diverse_form_keeps_the_usefulness():
    from label_studio_ale.policy_suffixes import is_diverse, needs_novelty

    policy = get_policy("ale-entropy-sum+novelty+diverse")
    assert policy.name == "ale-entropy-sum+novelty+diverse" and is_diverse(policy) and needs_novelty(policy)
    assert not is_diverse(get_policy("ale-entropy-sum")) and not needs_novelty(get_policy("ale-entropy-sum+cost"))
    outer = get_policy("lc-max+novelty+diverse+cost")
    assert outer.name == "lc-max+novelty+diverse+cost" and is_diverse(outer) and needs_novelty(outer), "every suffix passes the rest through"
    np.testing.assert_allclose(get_policy("lc-max+diverse").usefulness([ONE, TWO]), get_policy("lc-max").usefulness([ONE, TWO]))
    assert "novelty" in policy_names()


def test_the_coreset_form_is_a_diverse_form_that_needs_the_labelled_images():
    from label_studio_ale.policy_suffixes import is_coreset, is_diverse, needs_novelty

    policy = get_policy("ale-entropy-sum+coreset")
    assert policy.name == "ale-entropy-sum+coreset" and is_diverse(policy) and is_coreset(policy) and not needs_novelty(policy)
    np.testing.assert_allclose(policy.usefulness([ONE, TWO]), get_policy("ale-entropy-sum").usefulness([ONE, TWO]))
    outer = get_policy("entropy-mean+novelty+coreset+cost")
    assert outer.name == "entropy-mean+novelty+coreset+cost" and is_coreset(outer) and is_diverse(outer) and needs_novelty(outer)
    assert not is_coreset(get_policy("ale-entropy-sum+diverse")) and not is_coreset(get_policy("random"))


def test_rare_weights_each_box_by_how_rare_its_class_is_in_the_pool():
    # per box over the classes: (0.75, 0.25), (1, 0), (0.75, 0.25) -> shares (5/6, 1/6) -> rarity (0.6, 3)
    weights = [0.75 * 0.6 + 0.25 * 3, 0.6]
    policy = get_policy("entropy-mean+rare")
    assert policy.name == "entropy-mean+rare" and policy.needs_class_vectors
    np.testing.assert_allclose(
        policy.usefulness([TWO, ONE, NONE]), [(H_A * weights[0] + H_B * weights[1]) / 2, H_A * weights[0], 0.0]
    )
    # TWO alone: shares (7/8, 1/8) -> rarity (4/7, 4)
    np.testing.assert_allclose(
        get_policy("ale-lc-sum+rare").usefulness([TWO]), [(LC_A * (0.75 * 4 / 7 + 0.25 * 4) + LC_B * 4 / 7) * math.sqrt(2)]
    )
    assert get_policy("entropy-sum+rare").usefulness([NONE, NONE]).tolist() == [0.0, 0.0]


def test_rare_changes_the_order_towards_a_class_the_model_predicts_little():
    common = Detections(np.tile([[0, 0, 9, 9]], (8, 1)), np.tile([[0.9, 0.0]], (8, 1)), (64, 64))  # the pool is mostly class 0
    unsure_common = Detections([[0, 0, 9, 9]], [[0.5, 0.05]], (64, 64))  # more uncertain, class 0
    unsure_rare = Detections([[0, 0, 9, 9]], [[0.05, 0.75]], (64, 64))  # less uncertain, class 1
    pool = [common, unsure_common, unsure_rare]
    plain = get_policy("entropy-mean").usefulness(pool)
    rare = get_policy("entropy-mean+rare").usefulness(pool)
    assert plain[1] > plain[2], "uncertainty alone serves the common class first"
    assert rare[2] > rare[1], "weighted by rarity the rarely predicted class comes first"


def test_rare_applies_to_per_box_policies_only_and_combines_with_the_other_suffixes():
    from label_studio_ale.policy_suffixes import needs_localization

    for name in ("random+rare", "min-confidence+rare", "entropy-mean+cost+rare", "novelty+rare"):
        with pytest.raises(ValueError, match=r"per-box uncertainty policy.*put \+rare right after it"):
            get_policy(name)
    policy = get_policy("entropy-mean+rare+cost", cost_per_image=2.0)
    assert policy.name == "entropy-mean+rare+cost"
    np.testing.assert_allclose(policy.usefulness([TWO, ONE]), get_policy("entropy-mean+rare").usefulness([TWO, ONE]) / [4.0, 3.0])
    loc = get_policy("ale-loc-sum+rare")
    assert needs_localization(loc) and loc.needs_class_vectors, "a loc policy's weights still read the class scores"
