"""benchmarks/pooled_savings.py: which runs are the small preset's, how pairs are found across files, and the pooled reading."""

import json

import pytest

from label_studio_ale.bench.records import selection_settings
from label_studio_ale.settings import Settings
from tests.support.benchmark_scripts import load_benchmark

WEIGHTS = "weights-sha256:aaaaaaaaaaaaaaaa"
FILE_HASH = "sha256:bbbbbbbbbbbbbbbb"


@pytest.fixture(scope="module")
def pooled_savings():
    return load_benchmark("pooled_savings")


def cycle(k, images, boxes, map50, steps=600):
    record = {"cycle": k, "labelled_images": images, "labelled_objects": {"digit-1": boxes - 1, "digit-0": 1}, "map50": map50}
    return record | ({"fine_tune": {"steps": steps}} if k else {})


def run(policy, seed, first, maps, boxes, steps=600):
    """A run whose cycle 0 is the seed's first model (mAP50 `first`), then three cycles of 24 images."""
    return {
        "policy": policy,
        "seed": seed,
        "cycles": [cycle(0, 24, boxes[0], first)] + [cycle(k, 24 * (k + 1), boxes[k], maps[k - 1], steps) for k in (1, 2, 3)],
    }


def results(base, runs, **changes):
    config = {"initial": 24, "budget": 24, "cycles": 3, "image_size": 128, "batch": 8, "initial_epochs": 0, "epochs": 0,
              "promotion": "always", "budget_cost": 0.0, "base_model": base}  # fmt: skip
    document = {
        "config": config | changes.pop("config", {}),
        "dataset": {"description": "built-in: scikit-learn handwritten digits on photographs, 128px, 320 pool + 120 evaluation scenes",
                    "new_class": "digit-0"},  # fmt: skip
        "selection": selection_settings(Settings()),
        "training": {"TRAIN_RECIPE": "small-data", "TRAIN_MIN_STEPS": 0, "TRAIN_CONTINUE_STEPS": 0, "TRAIN_FREEZE": 0},
        "runs": runs,
    }
    for key, value in changes.items():
        document[key] = document[key] | value
    return document


RANDOM = dict(maps=[0.7, 0.8, 0.9], boxes=[50, 100, 150, 200])
# reaches random's final 0.9 at 72 images (25 % fewer than 96) and 130 boxes (35 % fewer than 200)
BETTER = dict(maps=[0.8, 0.9, 0.95], boxes=[50, 90, 130, 170])


def write(tmp_path, name, document):
    path = tmp_path / name / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(document))
    return path


def test_the_committed_preset_is_the_preset_and_other_setups_are_named(pooled_savings):
    preset = results(WEIGHTS, [])
    assert pooled_savings.preset_problem(preset) is None
    assert "TRAIN_CONTINUE_STEPS=450" in pooled_savings.preset_problem(results(WEIGHTS, [], training={"TRAIN_CONTINUE_STEPS": 450}))
    assert "batch" in pooled_savings.preset_problem(results(WEIGHTS, [], config={"batch": 16}))
    assert "cost budget" in pooled_savings.preset_problem(results(WEIGHTS, [], config={"budget_cost": 100.0}))
    bursts = results(WEIGHTS, [], dataset={"description": "built-in: ... 320 pool (80 scenes in bursts of 4 frames) + 120 evaluation scenes"})
    assert "another pool" in pooled_savings.preset_problem(bursts)
    assert "DUPLICATE_DISTANCE" in pooled_savings.preset_problem(results(WEIGHTS, [], selection={"DUPLICATE_DISTANCE": 5}))
    # a run from before the results named their training settings cannot be told from the 200-step recipe
    assert "another recipe" in pooled_savings.preset_problem(results(WEIGHTS, [], training={"TRAIN_MIN_STEPS": 200}))


def test_a_shorter_or_unrecorded_fine_tune_is_left_out(pooled_savings):
    assert pooled_savings.run_problem(run("random", 0, 0.5, **RANDOM), 600) is None
    assert "fewer than the recipe's 600" in pooled_savings.run_problem(run("random", 0, 0.5, **RANDOM, steps=450), 600)
    unrecorded = run("random", 0, 0.5, **RANDOM)
    del unrecorded["cycles"][2]["fine_tune"]
    assert "cycle 2 does not record its fine-tune" in pooled_savings.run_problem(unrecorded, 600)


def test_one_first_model_in_two_files_is_one_pair_named_by_its_weights(pooled_savings, tmp_path):
    older = write(tmp_path, "a", results(FILE_HASH, [run("random", 0, 0.5, **RANDOM)]))
    newer = write(tmp_path, "b", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("entropy-mean", 0, 0.5, **BETTER),
                                                   run("random", 1, 0.6, **RANDOM)]))  # fmt: skip
    pool = pooled_savings.pool_runs([older, newer])
    assert sorted(pool["pairs"]) == [f"{WEIGHTS}/seed0", f"{WEIGHTS}/seed1"]
    assert sorted(pool["runs"]) == [(f"{WEIGHTS}/seed0", "entropy-mean"), (f"{WEIGHTS}/seed0", "random"), (f"{WEIGHTS}/seed1", "random")]
    assert pool["conflicts"] == [] and pool["skipped"] == []


def test_a_repeat_that_differs_is_a_conflict_and_the_first_copy_is_kept(pooled_savings, tmp_path):
    first = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM)]))
    again = write(tmp_path, "b", results(WEIGHTS, [run("random", 0, 0.5, maps=[0.7, 0.8, 0.91], boxes=RANDOM["boxes"])]))
    skipped = write(tmp_path, "c", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM)], training={"TRAIN_FREEZE": 10}))
    pool = pooled_savings.pool_runs([first, again, skipped])
    assert pool["conflicts"] == [{"pair": f"{WEIGHTS}/seed0", "policy": "random", "file": str(again)}]
    assert pool["runs"][(f"{WEIGHTS}/seed0", "random")]["cycles"][-1]["map50"] == 0.9
    assert pool["skipped"] == [{"file": str(skipped), "why": "TRAIN_FREEZE=10"}]


def test_the_saving_is_read_on_the_mean_curves_of_the_pairs(pooled_savings, tmp_path):
    path = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("entropy-mean", 0, 0.5, **BETTER)]))
    pool = pooled_savings.pool_runs([path])
    got = pooled_savings.reach(pool["runs"], [f"{WEIGHTS}/seed0"], "entropy-mean")
    assert got["images"] == pytest.approx(0.25) and got["boxes"] == pytest.approx(0.35)
    assert (got["final"], got["random_final"]) == (0.95, 0.9)


def test_the_bootstrap_interval_spans_the_pairs_and_counts_the_draws_at_target(pooled_savings, tmp_path):
    # seed 0 saves 25 % of images; seed 1 never reaches its random's final
    worse = dict(maps=[0.6, 0.7, 0.8], boxes=[50, 90, 130, 170])
    path = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("entropy-mean", 0, 0.5, **BETTER),
                                                  run("random", 1, 0.6, **RANDOM), run("entropy-mean", 1, 0.6, **worse)]))  # fmt: skip
    pool = pooled_savings.pool_runs([path])
    table = pooled_savings.pooled(pool, draws=400, seed=0)
    row = table["entropy-mean"]
    assert (row["pairs"], row["base_models"]) == (2, [WEIGHTS])
    # pooled: random ends at 0.9, the policy's mean curve 0.7/0.8/0.875: not reached
    assert row["images"] is None and row["boxes"] is None
    # a draw of seed 0 twice reaches it (25 % of images, 35 % of boxes); a quarter of the draws
    assert row["images_interval"] == [None, pytest.approx(0.25)] and row["boxes_interval"] == [None, pytest.approx(0.35)]
    assert 0.15 < row["boxes_at_target"] < 0.35 and row["images_at_target"] == 0.0
    assert pooled_savings.pooled(pool, draws=400, seed=0) == table  # the same draws for the same inputs
    # and the same draws for this policy when the runs of a policy read before it join the files
    more = write(tmp_path, "b", results(WEIGHTS, [run("ale-entropy-sum", 0, 0.5, **BETTER), run("ale-entropy-sum", 1, 0.6, **worse)]))
    assert pooled_savings.pooled(pooled_savings.pool_runs([path, more]), draws=400, seed=0)["entropy-mean"] == row
    # one base model: the table shows no interval (the bootstrap could only mix its own seeds)
    assert "| entropy-mean | 2 | 1 | 0.875 (0.900) | not reached | — (1 base model) | — | not reached | — (1 base model) | — |" in pooled_savings.markdown(table)
    assert row["interval_shown"] is False


def test_the_committed_runs_pool_without_conflicts(pooled_savings):
    pool = pooled_savings.pool_runs(pooled_savings.default_results())
    assert pool["conflicts"] == []
    bases = {pair["base"] for pair in pool["pairs"].values()}
    # the preset's own table is among them, its seeds 3-5 joined from a file that named the model by its bytes
    assert {f"weights-sha256:bf1aeda8657aa131/seed{k}" for k in range(6)} <= set(pool["pairs"])
    assert not any(base.startswith("sha256:b6abea22") for base in bases)


def test_a_missing_file_is_refused_by_name(pooled_savings, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pooled_savings.main([str(tmp_path / "nothing.json")])
    assert "no such results file" in capsys.readouterr().err


def test_the_bootstrap_draws_base_models_then_their_seeds(pooled_savings, tmp_path):
    # base model A: two seeds that save 25 % of images; base model B: one seed that saves half (random's 0.9 at 48 images)
    best = dict(maps=[0.9, 0.95, 0.97], boxes=[50, 80, 110, 140])
    a = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("entropy-mean", 0, 0.5, **BETTER),
                                               run("random", 1, 0.6, **RANDOM), run("entropy-mean", 1, 0.6, **BETTER)]))  # fmt: skip
    b = write(tmp_path, "b", results(FILE_HASH, [run("random", 0, 0.7, **RANDOM), run("entropy-mean", 0, 0.7, **best)]))
    pool = pooled_savings.pool_runs([a, b])
    row = pooled_savings.pooled(pool, draws=400, seed=0)["entropy-mean"]
    assert row["base_models"] == [FILE_HASH, WEIGHTS] and row["pairs"] == 3
    assert row["by_base_model"][WEIGHTS]["images"] == pytest.approx(0.25) and row["by_base_model"][FILE_HASH]["images"] == pytest.approx(0.5)
    # a draw of A twice gives A's saving, of B twice B's: the interval runs between the models' own
    assert row["images_interval"] == [pytest.approx(0.25), pytest.approx(0.5)]
    assert 0.15 < row["images_at_target"] < 0.45  # at least B twice (a quarter of the draws), and some mixed draws
    # which is why two base models show no interval in the table; a third shows one
    assert "| — (2 base models) | — |" in pooled_savings.markdown({"entropy-mean": row})
    c = write(tmp_path, "c", results("weights-sha256:cccccccccccccccc", [run("random", 0, 0.8, **RANDOM), run("entropy-mean", 0, 0.8, **BETTER)]))
    three = pooled_savings.pooled(pooled_savings.pool_runs([a, b, c]), draws=400, seed=0)
    assert three["entropy-mean"]["interval_shown"] and "| −25 to −50 % |" in pooled_savings.markdown(three)


def test_the_null_and_the_references_are_read_like_a_policy_and_marked_after_them(pooled_savings, tmp_path):
    path = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("oracle-errors-per-box", 0, 0.5, **BETTER),
                                                  run("random-null", 0, 0.5, **RANDOM), run("entropy-mean", 0, 0.5, **RANDOM)]))  # fmt: skip
    table = pooled_savings.pooled(pooled_savings.pool_runs([path]), draws=50, seed=0)
    assert table["oracle-errors-per-box"]["boxes"] == pytest.approx(0.35)
    assert table["random-null"]["images"] == table["random-null"]["boxes"] == 0.0  # the same curve: no saving
    rows = [line.split(" | ")[0] for line in pooled_savings.markdown(table).splitlines() if line.startswith("| ") and " | 1 | 1 | " in line]
    assert rows == ["| entropy-mean", "| random-null ‡", "| oracle-errors-per-box †"]
    assert "† a reference that reads the ground truth" in pooled_savings.markdown(table)
    assert "‡ random again, from another stream of draws" in pooled_savings.markdown(table)


def test_the_null_band_reads_every_policy_against_random_and_each_of_its_other_streams(pooled_savings, tmp_path):
    # random-null does better than random: BETTER's curve is the null's; the policy matches the null exactly
    path = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("random-null", 0, 0.5, **BETTER),
                                                  run("entropy-mean", 0, 0.5, **BETTER), run("random", 1, 0.6, **RANDOM),
                                                  run("random-null", 1, 0.6, **BETTER), run("entropy-mean", 1, 0.6, **BETTER),
                                                  run("lc-mean", 0, 0.5, **BETTER)]))  # fmt: skip
    band = pooled_savings.null_band(pooled_savings.pool_runs([path]))
    got = band[WEIGHTS]
    assert got["streams"] == ["random", "random-null"] and got["pairs"] == 2
    policy = got["policies"]["entropy-mean"]
    assert policy["random"] == {"images": pytest.approx(0.25), "boxes": pytest.approx(0.35)}  # as against random alone
    assert policy["random-null"] == {"images": 0.0, "boxes": 0.0}  # no better than another draw of random
    # against the mean curve of both streams (final 0.925 after 96 images and 185 boxes): reached halfway from
    # 72 images (0.9) to 96 (0.95), at 84 images and 150 boxes
    assert policy["all streams"] == {"images": pytest.approx(1 - 84 / 96), "boxes": pytest.approx(1 - 150 / 185)}
    # random's own draws against the null stream: they never reach its final 0.95, nor the mean's 0.925
    assert got["policies"]["random"] == {"random-null": {"images": None, "boxes": None}, "all streams": {"images": None, "boxes": None}}
    assert "lc-mean" not in got["policies"], "a policy read on some of the pairs only is left out"
    text = pooled_savings.band_markdown(band)
    assert "| random (its own draws) | — | not reached / not reached | not reached / not reached |" in text
    assert "| entropy-mean | −25 % / −35 % | −0 % / −0 % | −12 % / −19 % |" in text


def test_without_null_streams_there_is_no_band(pooled_savings, tmp_path):
    path = write(tmp_path, "a", results(WEIGHTS, [run("random", 0, 0.5, **RANDOM), run("entropy-mean", 0, 0.5, **BETTER)]))
    band = pooled_savings.null_band(pooled_savings.pool_runs([path]))
    assert band == {} and pooled_savings.band_markdown(band) == ""
