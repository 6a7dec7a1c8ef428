"""benchmarks/burst_picks.py: distinct scenes per batch of a --burst run, counted by hand on a small case."""

import json

import pytest

from tests.support.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def burst_picks():
    return load_benchmark("burst_picks")


def _run(policy, seed, *picked):
    return {"policy": policy, "seed": seed, "cycles": [{"picked": [f"{i:04d}.png" for i in names]} for names in picked]}


def results(*runs, description="built-in: ..., 16 pool (4 scenes in bursts of 4 frames) + 8 evaluation scenes"):
    return {"dataset": {"description": description}, "runs": list(runs)}


def test_scenes_and_frames_of_scenes_labelled_before_are_counted_per_cycle(burst_picks, tmp_path):
    # bursts of 4: images 0-3 are scene 0, 4-7 scene 1, 8-11 scene 2, 12-15 scene 3
    run = results(
        _run("a", 0, [0], [1, 2, 4], [5, 8, 12]),  # cycle 1: scenes {0, 1}, two frames of scene 0 (labelled); cycle 2: {1, 2, 3}, one of scene 1
        _run("a", 1, [15], [0, 4, 8], [13, 9, 10]),  # cycle 1: 3 scenes, none before; cycle 2: scenes {3, 2}, all 3 seen
    )
    assert burst_picks.burst_of(run) == 4
    counts = burst_picks.batch_scenes(run, 4)
    assert counts == {"a": [[(3, 2, 2), (3, 3, 1)], [(3, 3, 0), (3, 2, 3)]]}
    table = burst_picks.markdown(counts, 4)
    assert "| a | 2.5 / 3 | 2.5 / 3 | 3.0 |" in table
    path = tmp_path / "results.json"
    path.write_text(json.dumps(run))
    assert burst_picks.main([str(path)]) == 0
    assert (tmp_path / "burst_picks.md").read_text().startswith("| policy | cycle 1: scenes / images")


def test_the_burst_is_read_from_the_dataset_record_before_the_description(burst_picks):
    recorded = {"dataset": {"description": "built-in: 320 pool + 120 evaluation scenes", "burst": 3}, "runs": []}
    assert burst_picks.burst_of(recorded) == 3
    assert burst_picks.burst_of(results()) == 4  # a run recorded before the field: its description


def test_a_run_without_bursts_or_picks_is_refused_with_the_reason(burst_picks):
    with pytest.raises(ValueError, match="not a --burst run"):
        burst_picks.burst_of(results(description="built-in: 320 pool + 120 evaluation scenes"))
    with pytest.raises(ValueError, match="not a --burst run"):
        burst_picks.burst_of({"dataset": {"description": "my pool, bursts of 4 frames", "burst": 1}, "runs": []})
    no_picks = results({"policy": "a", "seed": 0, "cycles": [{"map50": 0.5}]})
    with pytest.raises(ValueError, match="does not name the images each cycle labelled"):
        burst_picks.batch_scenes(no_picks, 4)
