"""Summary statistics and rendering of benchmark results."""

import pytest

from label_studio_ale.bench.report import markdown_table, plot, summarise


def _run(policy, seed, map50s, new_ap=None, old_per_cycle=3):
    cycles = []
    for c, value in enumerate(map50s):
        record = {"cycle": c, "labelled_images": 10 + 5 * c, "map50": value, "labelled_objects": {"old": old_per_cycle * c, "new": c}}
        if new_ap is not None:
            record["new_class_ap50"] = new_ap[c]
        cycles.append(record)
    return {"policy": policy, "seed": seed, "cycles": cycles}


RESULTS = {
    "dataset": {"new_class": "new"},
    "runs": [
        _run("random", 0, [0.30, 0.40, 0.50], [0, 0.1, 0.2]),
        _run("ale-entropy-sum", 0, [0.30, 0.45, 0.60], [0, 0.3, 0.5]),
        _run("random", 1, [0.20, 0.30, 0.40], [0, 0.0, 0.1]),
        _run("ale-entropy-sum", 1, [0.20, 0.30, 0.44], [0, 0.2, 0.3]),
    ],
}


def test_gains_are_per_seed_differences_to_random_in_points():
    summary = summarise(RESULTS)
    assert summary["labelled"] == [10, 15, 20]
    ale = summary["policies"]["ale-entropy-sum"]
    assert ale["mean"] == pytest.approx([0.25, 0.375, 0.52])
    # last cycle: +10 and +4 points -> mean 7, sample sd 4.243
    assert ale["gain_final"]["mean"] == pytest.approx(7.0)
    assert ale["gain_final"]["sd"] == pytest.approx(4.2426, abs=1e-3)
    # cycles 1..2 (cycle 0 is the shared initial model): seed 0 (5 + 10) / 2, seed 1 (0 + 4) / 2
    assert ale["gain_mean"]["mean"] == pytest.approx((7.5 + 2.0) / 2)
    assert ale["new_class_ap50"] == pytest.approx(0.4)
    assert ale["new_class_objects"] == pytest.approx(2.0)
    assert ale["labelled_objects"] == pytest.approx(8.0)
    assert "gain_final" not in summary["policies"]["random"]
    # (0.52 - 0.25) x 100 points over 10 more images and 8 more boxes (3 + 1 per cycle, two cycles)
    assert ale["gain_per_image"] == pytest.approx(2.7) and ale["gain_per_box"] == pytest.approx(27 / 8)


def test_the_table_puts_the_best_mean_gain_first_and_the_plot_is_a_png(tmp_path):
    table = markdown_table(summarise(RESULTS))
    lines = table.splitlines()
    assert lines[0].startswith("| policy | 10 img | 15 img | 20 img | gain, last (pp) | gain, mean (pp) | boxes labelled | pp / image | pp / box | gain at random's boxes (pp) | new class AP50")
    assert lines[2].startswith("| ale-entropy-sum | 0.250 ± 0.071 |")
    assert "+7.0 ± 4.2" in lines[2] and "| 2.70 | 3.38 | +7.0 |" in lines[2]
    assert lines[3].startswith("| random |") and "—" in lines[3]
    path = plot(summarise(RESULTS), RESULTS, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_without_runs_are_refused():
    with pytest.raises(ValueError, match="no finished runs"):
        summarise({"dataset": {}, "runs": []})


def test_one_seed_shows_no_spread():
    one_seed = {"dataset": RESULTS["dataset"], "runs": [r for r in RESULTS["runs"] if r["seed"] == 0]}
    lines = markdown_table(summarise(one_seed)).splitlines()
    assert lines[2].startswith("| ale-entropy-sum | 0.300 | 0.450 | 0.600 | +10.0 | +7.5 |")
    assert "±" not in "\n".join(lines)


def test_images_and_boxes_to_reach_randoms_final_map_come_from_the_mean_curves():
    summary = summarise(RESULTS)
    # random's final mean is 0.45 at 20 images; ale's mean curve 0.25, 0.375, 0.52 crosses it between 15 and 20 images
    ale = summary["policies"]["ale-entropy-sum"]["to_reach_random"]
    assert ale["target"] == pytest.approx(0.45)
    assert ale["images"]["needed"] == pytest.approx(15 + 5 * (0.45 - 0.375) / (0.52 - 0.375))
    assert ale["images"]["saving"] == pytest.approx(1 - ale["images"]["needed"] / 20)
    # boxes: 4 per cycle in the fixture (3 old + 1 new), so the same crossing at 4 + 4 * 0.517 boxes, of random's 8
    assert ale["boxes"]["needed"] == pytest.approx(4 + 4 * (0.45 - 0.375) / (0.52 - 0.375))
    assert summary["policies"]["random"]["to_reach_random"]["images"] == {"needed": 20.0, "saving": pytest.approx(0.0)}
    row = next(line for line in markdown_table(summary).splitlines() if line.startswith("| ale-entropy-sum"))
    assert row.endswith(f"| {ale['images']['needed']:.0f} (-12 %) | {ale['boxes']['needed']:.0f} (-24 %) |")


def test_each_seed_is_also_held_against_its_own_randoms_final():
    """The mean curves can hide the spread: per seed, the change in images and boxes to reach that seed's random."""
    summary = summarise(RESULTS)
    by_seed = summary["policies"]["ale-entropy-sum"]["to_reach_random_by_seed"]
    # seed 0: random ends at 0.50, ale crosses it between 15 (0.45) and 20 (0.60) images; seed 1: 0.40, between 0.30 and 0.44
    images = [15 + 5 * 0.05 / 0.15, 15 + 5 * 0.10 / 0.14]
    assert by_seed["seeds"] == [0, 1]
    assert by_seed["images"] == pytest.approx([1 - n / 20 for n in images])
    assert by_seed["boxes"] == pytest.approx([1 - (4 + 4 * 0.05 / 0.15) / 8, 1 - (4 + 4 * 0.10 / 0.14) / 8])
    assert "to_reach_random_by_seed" not in summary["policies"]["random"]
    table = markdown_table(summary).split("\n\n")[1].splitlines()
    assert table[0] == (
        "| policy | images to each seed's random, by seed | boxes to each seed's random, by seed "
        "| images, mean ± sd | boxes, mean ± sd | seeds that reach it |"
    )
    assert table[2] == "| ale-entropy-sum | -17, -7 % | -33, -14 % | -12 ± 7 % | -24 ± 13 % | 2 of 2 |"
    # a seed that never reaches its random's final is shown as such and left out of the mean
    short = {"dataset": RESULTS["dataset"], "runs": RESULTS["runs"][:3] + [_run("ale-entropy-sum", 1, [0.20, 0.30, 0.35], [0, 0.1, 0.2])]}
    row = markdown_table(summarise(short)).split("\n\n")[1].splitlines()[2]
    assert row == "| ale-entropy-sum | -17, — % | -33, — % | -17 ± 0 % | -33 ± 0 % | 1 of 2 |"


def test_a_copy_of_random_saves_nothing_where_randoms_curve_dips_at_the_end():
    """Random first reaches its final 0.45 at 12.5 images (between 0.40 and 0.50), then dips: it is charged 12.5, not
    the 20 it ended with, so a policy with random's very curve saves nothing, by seed and on the mean curves."""
    dipping = [0.40, 0.50, 0.45]
    results = {"dataset": {"new_class": "new"}, "runs": [_run("random", 0, dipping), _run("copy-of-random", 0, dipping)]}
    summary = summarise(results)
    copy = summary["policies"]["copy-of-random"]
    assert copy["to_reach_random"]["images"] == {"needed": pytest.approx(12.5), "saving": pytest.approx(0.0)}
    assert copy["to_reach_random"]["boxes"]["saving"] == pytest.approx(0.0)
    assert copy["to_reach_random_by_seed"]["images"] == pytest.approx([0.0]) and copy["to_reach_random_by_seed"]["boxes"] == pytest.approx([0.0])


def test_a_policy_that_never_reaches_random_says_so():
    from label_studio_ale.bench.report import labelled_to_reach

    assert labelled_to_reach([10, 20, 30], [0.1, 0.2, 0.3], 0.35) is None
    assert labelled_to_reach([10, 20, 30], [0.4, 0.5, 0.6], 0.35) == 10.0
    results = {"dataset": {}, "runs": [_run("random", 0, [0.3, 0.5]), _run("lc-max", 0, [0.3, 0.4])]}
    row = next(line for line in markdown_table(summarise(results)).splitlines() if line.startswith("| lc-max"))
    assert row.endswith("| not reached | not reached |")
    assert next(line for line in markdown_table(summarise(results)).splitlines() if line.startswith("| random")).endswith("| 15 | 4 |")


def test_the_gain_at_randoms_boxes_reads_randoms_curve_at_the_policys_boxes():
    results = {
        "dataset": {},
        "runs": [
            _run("random", 0, [0.2, 0.4, 0.6]),  # 0, 4, 8 boxes
            _run("sparse", 0, [0.2, 0.35, 0.5], old_per_cycle=1),  # 0, 2, 4 boxes: random had 0.4 at 4 boxes
            _run("crowded", 0, [0.2, 0.5, 0.7], old_per_cycle=7),  # 16 boxes: more than random ever labelled
        ],
    }
    summary = summarise(results)
    assert summary["policies"]["sparse"]["gain_same_boxes"] == pytest.approx(10.0)
    assert summary["policies"]["crowded"]["gain_same_boxes"] is None
    assert summary["policies"]["random"]["gain_same_boxes"] is None
    rows = {line.split(" | ")[0][2:]: line for line in markdown_table(summary).splitlines()[2:]}
    assert "| 3.00 | 7.50 | +10.0 |" in rows["sparse"]  # 30 points over 10 images and over 4 boxes
    assert "| 5.00 | 3.12 | — |" in rows["crowded"] and "| 4.00 | 5.00 | — |" in rows["random"]


def _budget_run(policy, seed, map50s, images, boxes):
    """A run whose cycles labelled `images` and `boxes` (one class), as a cost budget's do."""
    cycles = [
        {"cycle": c, "labelled_images": n, "map50": m, "labelled_objects": {"old": b}} for c, (m, n, b) in enumerate(zip(map50s, images, boxes))
    ]  # fmt: skip
    return {"policy": policy, "seed": seed, "cycles": cycles}


def test_under_a_cost_budget_the_columns_are_cycles_and_images_come_from_each_policys_runs():
    results = {
        "dataset": {},
        "runs": [
            _budget_run("random", 0, [0.2, 0.4, 0.6], [10, 20, 30], [0, 20, 40]),
            _budget_run("random", 1, [0.2, 0.4, 0.6], [10, 22, 32], [0, 20, 40]),
            # sparse images: more of them for the same cost, and random's final reached at 25 images, 28 boxes
            _budget_run("sparse", 0, [0.2, 0.5, 0.7], [10, 25, 40], [0, 16, 32]),
            _budget_run("sparse", 1, [0.2, 0.5, 0.7], [10, 25, 40], [0, 16, 32]),
        ],
    }
    summary = summarise(results)
    assert summary["labelled"] is None and summary["cycles"] == 3
    assert summary["policies"]["random"]["images_curve"] == [10, 21, 31]
    sparse = summary["policies"]["sparse"]
    assert sparse["to_reach_random"]["images"]["needed"] == pytest.approx(32.5)
    assert sparse["to_reach_random"]["images"]["saving"] == pytest.approx(1 - 32.5 / 31)
    assert sparse["to_reach_random"]["boxes"]["needed"] == pytest.approx(24.0)
    assert sparse["gain_per_image"] == pytest.approx(50 / 30)
    lines = markdown_table(summary).splitlines()
    assert lines[0].startswith("| policy | cycle 0 | cycle 1 | cycle 2 | gain, last (pp) | gain, mean (pp) | boxes labelled | images labelled |")
    row = next(line for line in lines if line.startswith("| sparse"))
    assert "| 32 | 40 | 1.67 |" in row and row.endswith("| 32 (+5 %) | 24 (-40 %) |")


def _cost_budget_results(**extra):
    runs = [
        _budget_run("random", 0, [0.2, 0.4, 0.6], [10, 20, 30], [0, 20, 40]),
        _budget_run("random", 1, [0.2, 0.4, 0.6], [10, 22, 32], [0, 20, 40]),
        _budget_run("sparse", 0, [0.2, 0.5, 0.7], [10, 25, 40], [0, 16, 32]),
    ]
    return {"dataset": {}, "config": {"budget_cost": 40.0}, "runs": runs, **extra}


def test_under_a_cost_budget_the_table_gives_the_cost_each_policy_needs_to_reach_random():
    summary = summarise(_cost_budget_results(selection={"COST_PER_IMAGE": 2.0}))
    assert summary["cost_per_image"] == 2.0
    # boxes + 2 per image, per cycle: random 0+20, 20+42, 40+62; sparse 0+20, 16+50, 32+80
    assert summary["policies"]["random"]["cost_curve"] == pytest.approx([20, 62, 102])
    sparse = summary["policies"]["sparse"]
    assert sparse["cost_curve"] == pytest.approx([20, 66, 112])
    # random's final 0.6 is halfway from cycle 1 (0.5) to cycle 2 (0.7): cost 66 + (112 - 66) / 2 = 89
    assert sparse["to_reach_random"]["cost"]["needed"] == pytest.approx(89.0)
    assert sparse["to_reach_random"]["cost"]["saving"] == pytest.approx(1 - 89 / 102)
    lines = markdown_table(summary).splitlines()
    assert lines[0].endswith("| images to random's last | boxes to random's last | cost to random's last (boxes + 2/img) |")
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert "\n\n" not in markdown_table(summary)  # sparse ran one seed: no by-seed table
    assert rows["sparse"].endswith("| 32 (+5 %) | 24 (-40 %) | 89 (-13 %) |")
    assert rows["random"].endswith("| 31 | 40 | 102 |")


def test_an_image_budget_has_no_cost_column_and_a_cost_budget_without_its_cost_per_image_is_refused():
    image_budget = _cost_budget_results(selection={"COST_PER_IMAGE": 2.0}, config={})
    summary = summarise(image_budget)
    assert "cost_per_image" not in summary and "cost" not in summary["policies"]["sparse"]["to_reach_random"]
    assert "cost to random's last" not in markdown_table(summary)
    with pytest.raises(ValueError, match="COST_PER_IMAGE"):
        summarise(_cost_budget_results())


def _with_edits(run, edited_per_cycle):
    """`run` with each cycle's `edits`: `edited` boxes drawn new and one shown box accepted."""
    cycles = [c | {"edits": {"accepted": 1, "moved": 0, "relabelled": 0, "deleted": 0, "added": n}} for c, n in zip(run["cycles"], edited_per_cycle)]
    return run | {"cycles": cycles}


def test_the_boxes_edited_so_far_are_a_curve_that_random_s_final_is_reached_on():
    edited = {"random": [4, 2, 2], "ale-entropy-sum": [4, 1, 1]}
    results = RESULTS | {"runs": [_with_edits(run, edited[run["policy"]]) for run in RESULTS["runs"]]}
    summary = summarise(results)
    assert summary["edits"] is True
    ale, random = summary["policies"]["ale-entropy-sum"], summary["policies"]["random"]
    # accepted boxes cost nothing: the curve sums the rest, cycle by cycle
    assert ale["edits_curve"] == [4, 5, 6] and random["edits_curve"] == [4, 6, 8]
    assert ale["edited_boxes"] == 6
    # the mean curve 0.25, 0.375, 0.52 crosses random's final 0.45 between 5 and 6 edited boxes, of random's 8
    needed = 5 + (0.45 - 0.375) / (0.52 - 0.375)
    assert ale["to_reach_random"]["edits"] == {"needed": pytest.approx(needed), "saving": pytest.approx(1 - needed / 8)}
    lines = markdown_table(summary).splitlines()
    assert "| boxes labelled | boxes edited |" in lines[0] and lines[0].endswith("| boxes to random's last | edits to random's last |")
    row = next(line for line in lines if line.startswith("| ale-entropy-sum"))
    assert row.endswith(f"| {needed:.0f} (-31 %) |") and "| 6 |" in row
    # each seed against its own random too
    assert set(ale["to_reach_random_by_seed"]) == {"seeds", "images", "boxes", "edits"}


def test_the_plot_gains_a_panel_against_the_boxes_edited(tmp_path):
    from PIL import Image

    edited = {"random": [4, 2, 2], "ale-entropy-sum": [4, 1, 1]}
    results = RESULTS | {"runs": [_with_edits(run, edited[run["policy"]]) for run in RESULTS["runs"]]}
    without = plot(summarise(RESULTS), RESULTS, tmp_path / "three.png")
    with_edits = plot(summarise(results), results, tmp_path / "four.png")
    # panels of equal width, side by side: images (mAP50, new class), boxes, and now edits
    assert Image.open(with_edits).width == round(Image.open(without).width * 4 / 3)


def test_edits_are_compared_only_where_every_run_records_them():
    runs = [_with_edits(run, [1, 1, 1]) for run in RESULTS["runs"][:3]] + RESULTS["runs"][3:]  # a reference policy has none
    summary = summarise(RESULTS | {"runs": runs})
    assert summary["edits"] is False
    assert "edits_curve" not in summary["policies"]["random"]
    assert "edits" not in summary["policies"]["ale-entropy-sum"]["to_reach_random"]
    assert "edit" not in markdown_table(summary)


def test_with_null_streams_each_policy_is_also_read_against_the_mean_of_randoms_streams():
    results = {
        "dataset": {"new_class": "new"},
        "runs": RESULTS["runs"] + [_run("random-null", 0, [0.30, 0.50, 0.60]), _run("random-null", 1, [0.20, 0.40, 0.50])],
    }
    summary = summarise(results)
    assert summary["random_streams"] == ["random", "random-null"]
    # the streams' mean curve: (0.25, 0.40, 0.50), reached after 20 images; ALE entropy-sum's (0.25, 0.375, 0.52)
    # crosses 0.50 at 15 + 5 x 0.125 / 0.145 images
    ale = summary["policies"]["ale-entropy-sum"]["to_reach_streams"]
    assert ale["target"] == pytest.approx(0.50)
    assert ale["images"]["needed"] == pytest.approx(15 + 5 * 0.125 / 0.145)
    assert ale["images"]["saving"] == pytest.approx(1 - (15 + 5 * 0.125 / 0.145) / 20)
    assert summary["policies"]["random"]["to_reach_streams"]["images"]["needed"] is None  # its 0.45 never gets there
    header = markdown_table(summary).splitlines()[0]
    assert header.endswith("| images to the 2 random streams' last | boxes to the 2 random streams' last |")
    # without null streams there is no such column
    assert "random streams" not in markdown_table(summarise(RESULTS)) and "random_streams" not in summarise(RESULTS)


def test_null_streams_over_other_seeds_than_randoms_are_not_averaged():
    results = {"dataset": {"new_class": "new"}, "runs": RESULTS["runs"] + [_run("random-null", 0, [0.30, 0.50, 0.60])]}
    summary = summarise(results)
    assert "random_streams" not in summary and "to_reach_streams" not in summary["policies"]["ale-entropy-sum"]
