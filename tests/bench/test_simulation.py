"""The simulation loop: selection through the sync's ranking code, real (tiny) training, the CLI end to end."""

import json

import numpy as np
import pytest

from label_studio_ale.annotation_edits import EditCounts
from label_studio_ale.bench.cli import PRESETS
from label_studio_ale.bench.digits import DigitScenes
from label_studio_ale.bench.simulation import DEFAULT_POLICIES, BenchConfig, select_batch
from label_studio_ale.cli import main
from label_studio_ale.detections import Detections
from label_studio_ale.settings import Settings
from label_studio_ale.synthetic import make_scene, write_yolo_dataset


def _image(boxes: int, top: float) -> Detections:
    """`boxes` boxes whose class scores are (top, 1 - top)."""
    probs = np.tile([top, 1.0 - top], (boxes, 1))
    xyxy = np.tile([0.0, 0.0, 10.0, 10.0], (boxes, 1)) + np.arange(boxes)[:, None] * 12
    return Detections(xyxy, probs, (100, 100))


POOL = [_image(1, 0.55), _image(4, 0.9), _image(0, 0.0), _image(2, 0.6), _image(1, 0.99), _image(3, 0.5)]
IDS = np.arange(1, len(POOL) + 1)


@pytest.mark.parametrize(
    "policy, expected",
    [
        # most uncertainty in total: 3 boxes at 0.5, then the 4 boxes at 0.9
        # (0.6 nats each: the background mass 1 - max counts, see scoring)
        ("entropy-sum", [5, 1]),
        # the single most uncertain box decides
        ("entropy-max", [5, 0]),
        # the Conservation Metrics pipeline: lowest box confidence first
        ("min-confidence", [5, 0]),
    ],
)
def test_selection_uses_the_sync_policies(policy, expected):
    picked = select_batch(Settings(), policy, POOL, IDS, None, ("a", "b"), 2, seed=0)
    assert picked.tolist() == expected


def test_ale_weights_the_number_of_boxes_and_random_follows_its_seed():
    plain = select_batch(Settings(), "lc-mean", POOL, IDS, None, ("a", "b"), 2, seed=0).tolist()
    ale = select_batch(Settings(), "ale-lc-mean", POOL, IDS, None, ("a", "b"), 2, seed=0).tolist()
    # the lone 0.55 box is the more uncertain on average, but x sqrt(2) lifts the two 0.6 boxes above it
    assert plain == [5, 0] and ale == [5, 3]
    a = select_batch(Settings(), "random", POOL, IDS, None, ("a", "b"), 3, seed=1)
    assert np.array_equal(a, select_batch(Settings(), "random", POOL, IDS, None, ("a", "b"), 3, seed=1))
    assert len(set(a.tolist())) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policies": ("random", "nope")}, "POLICY='nope' is unknown"),
        ({"policies": ("random", "random")}, "lists a name twice"),
        ({"budget": 0}, "budget must be a positive integer"),
        ({"epochs": -1}, r"epochs must be 0 \(the training recipe decides\) or a positive integer"),
        ({"seeds": ()}, "seeds must be distinct"),
        ({"promotion": "sometimes"}, "promotion must be one of"),
        ({"budget_cost": -5.0}, "budget_cost must be 0"),
    ],
)
def test_bad_configurations_fail_before_any_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    """40 generated scenes of three shape classes as a YOLO folder."""
    root = tmp_path_factory.mktemp("shapes")
    scenes = [make_scene(seed, size=(64, 64), num_classes=3, max_objects=3, min_side=12, max_side=24) for seed in range(40)]
    write_yolo_dataset(root, scenes, ["ellipse", "box", "triangle"], split="train")
    (root / "data.yaml").write_text("names: [ellipse, box, triangle]\n")
    return root


@pytest.mark.slow
def test_bench_al_runs_every_policy_and_seed_and_writes_table_and_plot(shapes_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["bench", "al", "--data", str(shapes_dataset), "--new-class", "triangle", "--policies", "random,ale-entropy-sum",
         "--seeds", "0,1", "--initial", "6", "--budget", "4", "--cycles", "2", "--image-size", "64",
         "--initial-epochs", "1", "--epochs", "1", "--batch", "4", "--base-model", "yolov5n.yaml", "--jobs", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["jobs"] == 2
    # runs finish in any order; the file lists them by seed, then policy
    assert [(r["seed"], r["policy"]) for r in results["runs"]] == [(0, "random"), (0, "ale-entropy-sum"), (1, "random"), (1, "ale-entropy-sum")]
    assert results["dataset"]["classes"] == ["ellipse", "box", "triangle"]
    assert results["dataset"]["pool_images"] + results["dataset"]["evaluation_images"] == 40
    assert results["dataset"]["burst"] == 1  # a --data pool is taken as one image a scene
    runs = {(r["policy"], r["seed"]): r for r in results["runs"]}
    assert sorted(runs) == [("ale-entropy-sum", 0), ("ale-entropy-sum", 1), ("random", 0), ("random", 1)]
    for (policy, seed), run in runs.items():
        assert [c["labelled_images"] for c in run["cycles"]] == [6, 10, 14]
        # the new class is kept out of the initial set only
        assert run["cycles"][0]["labelled_objects"]["triangle"] == 0
        assert run["cycles"][0] == runs[("random", seed)]["cycles"][0]
        for c in run["cycles"]:
            assert 0.0 <= c["map50"] <= 1.0 and set(c["ap50"]) <= {"ellipse", "box", "triangle"}
            assert 0.0 <= c["seconds"] < results["seconds"]
            assert "new_class_ap50" in c
            # what the fine-tune got, from the adapter: one epoch (--epochs 1), a step per batch of 4 training images
            assert c["fine_tune"]["epochs"] == 1 and c["fine_tune"]["repeat"] == 1
            assert 1 <= c["fine_tune"]["steps"] <= -(-c["labelled_images"] // 4)
        # each cycle names the images it labelled: the initial set, then a budget of new ones
        picked = [c["picked"] for c in run["cycles"]]
        assert [len(names) for names in picked] == [6, 4, 4]
        assert len({name for names in picked for name in names}) == 14
        # and the boxes counted are those images' boxes
        label_files = shapes_dataset / "labels" / "train"
        drawn = sum(len((label_files / name).with_suffix(".txt").read_text().splitlines()) for names in picked for name in names)
        assert drawn == sum(run["cycles"][-1]["labelled_objects"].values())
        # what labelling each cycle's images changed in the boxes shown: every true box is submitted once; a base
        # model built from its yaml shows nothing, so the initial set's boxes are all drawn
        boxes = [sum(c["labelled_objects"].values()) for c in run["cycles"]]
        edits = [EditCounts(**c["edits"]) for c in run["cycles"]]
        assert edits[0] == EditCounts(added=boxes[0])
        assert [e.submitted for e in edits[1:]] == [b - a for a, b in zip(boxes, boxes[1:])]
    # the seeds draw different initial sets
    assert runs[("random", 0)]["cycles"][0]["labelled_objects"] != runs[("random", 1)]["cycles"][0]["labelled_objects"]
    table = (out / "table.md").read_text()
    assert "| ale-entropy-sum |" in table and "| random |" in table and "| 6 img | 10 img | 14 img |" in table
    assert "| boxes edited |" in table
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "written:" in capsys.readouterr().out
    assert results["command"].startswith("ale bench al --data ")
    # no model versions or work folders are left behind
    assert {p.name for p in out.iterdir()} == {"results.json", "table.md", "learning_curve.png"}

    assert main(["bench", "report", str(out / "results.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "table.md").read_text() == table


@pytest.mark.slow
def test_bench_al_runs_the_embedding_and_localization_policies_like_the_others(shapes_dataset, tmp_path):
    out = tmp_path / "out"
    policies = ["novelty", "ale-entropy-sum+novelty+diverse", "ale-entropy-sum+coreset", "ale-loc-sum", "entropy-sum+cost", "entropy-mean+rare+cost"]
    code = main(
        ["bench", "al", "--data", str(shapes_dataset), "--policies", ",".join(policies), "--seeds", "0", "--initial", "6",
         "--budget", "4", "--cycles", "1", "--image-size", "64", "--initial-epochs", "1", "--epochs", "1", "--batch", "4",
         "--base-model", "yolov5n.yaml", "--jobs", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    runs = {r["policy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert sorted(runs) == sorted(policies)
    for run in runs.values():
        assert [c["labelled_images"] for c in run["cycles"]] == [6, 10]


def one_tiny_cycle(dataset, new_class: str, policies: str, out) -> list[str]:
    """`ale bench al` arguments for one seed and one cycle of 4 images after 6, on 64 px, one epoch each."""
    return ["bench", "al", "--data", str(dataset), "--new-class", new_class, "--policies", policies,
            "--seeds", "0", "--initial", "6", "--budget", "4", "--cycles", "1", "--image-size", "64", "--initial-epochs", "1",
            "--epochs", "1", "--batch", "4", "--base-model", "yolov5n.yaml", "--jobs", "1", "--out", str(out)]  # fmt: skip


@pytest.mark.slow
def test_the_oracle_references_label_at_least_the_new_class_boxes_random_does(shapes_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("COST_PER_IMAGE", "3")  # the per-box oracle's cost of an image, named in the results
    out = tmp_path / "out"
    code = main(one_tiny_cycle(shapes_dataset, "triangle", "random,oracle-new-class,oracle-new-class-per-box", out))
    assert code == 0
    runs = {r["policy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    oracle, random = runs["oracle-new-class"]["cycles"], runs["random"]["cycles"]
    assert [c["labelled_images"] for c in oracle] == [6, 10]
    assert oracle[0] == random[0]  # the same first model and initial set
    # four images with the most triangles: at least one (the pool has some), never fewer than random's four
    assert oracle[1]["labelled_objects"]["triangle"] >= max(1, random[1]["labelled_objects"]["triangle"])
    assert "| oracle-new-class |" in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["selection"]["COST_PER_IMAGE"] == 3.0
    per_box = runs["oracle-new-class-per-box"]["cycles"]
    assert [c["labelled_images"] for c in per_box] == [6, 10] and per_box[0] == random[0]
    assert per_box[1]["labelled_objects"]["triangle"] > per_box[0]["labelled_objects"]["triangle"]  # it found some
    assert "| oracle-new-class-per-box |" in (out / "table.md").read_text()
    # a reference picks from the truth, but its images are shown the served model's boxes: it records its edits,
    # every true box of the images it labelled submitted once, and the table compares edits for every policy
    for run in runs.values():
        boxes = [sum(c["labelled_objects"].values()) for c in run["cycles"]]
        edits = [EditCounts(**c["edits"]) for c in run["cycles"]]
        assert [e.submitted for e in edits[1:]] == [b - a for a, b in zip(boxes, boxes[1:])]
    table = (out / "table.md").read_text()
    assert "| boxes edited |" in table and "| edits to random's last |" in table


@pytest.mark.slow
def test_the_mistake_references_label_where_the_served_model_is_wrong(shapes_dataset, tmp_path):
    out = tmp_path / "out"
    code = main(one_tiny_cycle(shapes_dataset, "none", "random,oracle-errors,oracle-errors-per-box", out))
    assert code == 0  # no new class needed: they read the model's mistakes, not a class
    runs = {r["policy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    first = runs["random"]["cycles"][0]
    mistakes = {}
    for name, run in runs.items():
        assert [c["labelled_images"] for c in run["cycles"]] == [6, 10] and run["cycles"][0] == first
        mistakes[name] = EditCounts(**run["cycles"][1]["edits"]).mistakes
    # the first batch is shown the first model's boxes, the ones the oracle ranked by: no four images hold more mistakes
    assert mistakes["oracle-errors"] >= max(1, mistakes["random"])
    assert mistakes["oracle-errors-per-box"] >= 1
    table = (out / "table.md").read_text()
    assert "| oracle-errors |" in table and "| oracle-errors-per-box |" in table


def test_the_oracle_needs_a_new_class(shapes_dataset, tmp_path, capsys):
    code = main(["bench", "al", "--data", str(shapes_dataset), "--policies", "random,oracle-new-class", "--out", str(tmp_path)])
    assert code == 2
    assert "oracle-new-class picks images of the new class: name one with --new-class" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_at_once_label_what_runs_in_turn_label(shapes_dataset, tmp_path):
    labelled = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        code = main(
            ["bench", "al", "--data", str(shapes_dataset), "--policies", "random", "--seeds", "0,1", "--initial", "6",
             "--budget", "4", "--cycles", "1", "--image-size", "64", "--initial-epochs", "1", "--epochs", "1", "--batch", "4",
             "--base-model", "yolov5n.yaml", "--jobs", str(jobs), "--out", str(out)]
        )  # fmt: skip
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        assert results["jobs"] == jobs
        labelled[jobs] = [[c["labelled_objects"] for c in run["cycles"]] for run in results["runs"]]
    # the same initial sets and the same random picks, seed by seed
    assert labelled[1] == labelled[2] and len(labelled[1]) == 2


@pytest.mark.slow
def test_under_a_cost_budget_each_cycle_labels_the_queue_until_its_cost_is_reached(shapes_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("COST_PER_IMAGE", "1")
    monkeypatch.setenv("TRAIN_MIN_STEPS", "300")  # named in the results (--epochs fixes the epochs here)
    monkeypatch.setenv("TRAIN_CONTINUE_STEPS", "150")
    monkeypatch.setenv("TRAIN_PRECISION", "fp32")
    out = tmp_path / "out"
    code = main(
        ["bench", "al", "--data", str(shapes_dataset), "--policies", "random,entropy-mean+cost,oracle-new-class-per-box",
         "--new-class", "triangle", "--seeds", "0", "--initial", "6", "--budget-cost", "9", "--cycles", "2",
         "--image-size", "64", "--initial-epochs", "1", "--epochs", "1", "--batch", "4", "--base-model", "yolov5n.yaml",
         "--jobs", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["budget_cost"] == 9.0 and results["selection"]["COST_PER_IMAGE"] == 1.0
    assert results["config"]["budget"] is None  # the preset's images a cycle played no part
    assert results["training"] == {
        "TRAIN_RECIPE": "small-data", "TRAIN_MIN_STEPS": 300, "TRAIN_CONTINUE_STEPS": 150, "TRAIN_PRECISION": "fp32", "TRAIN_FREEZE": 0
    }  # fmt: skip
    assert {c["fine_tune"]["precision"] for run in results["runs"] for c in run["cycles"][1:]} == {"fp32"}
    for run in results["runs"]:
        cost = [c["labelled_images"] + sum(c["labelled_objects"].values()) for c in run["cycles"]]
        for before, after in zip(cost, cost[1:]):
            # the image that reaches the cost is finished: at most one image (1 + 3 boxes) past it
            assert 9 <= after - before < 9 + 1 + 3, (run["policy"], cost)
    table = (out / "table.md").read_text()
    assert "| cycle 0 | cycle 1 | cycle 2 |" in table and "| cost to random's last (boxes + 1/img) |" in table


def test_a_cycle_is_sized_in_images_or_in_cost_not_both(shapes_dataset, tmp_path, capsys):
    code = main(["bench", "al", "--data", str(shapes_dataset), "--budget", "4", "--budget-cost", "9", "--out", str(tmp_path)])
    assert code == 2
    assert "--budget (images a cycle) and --budget-cost (annotation cost a cycle) both size a cycle: give one" in capsys.readouterr().err


def test_a_bare_gpu_index_is_refused_before_anything_is_trained(shapes_dataset, tmp_path, capsys):
    code = main(["bench", "al", "--data", str(shapes_dataset), "--device", "0", "--out", str(tmp_path)])
    assert code == 2
    assert "--device must be a torch device: cpu, cuda, cuda:N or mps, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    "sizes, message",
    [
        (["--initial", "30", "--budget", "20"], "lower --initial, --budget or --cycles"),
        (["--initial", "6", "--budget-cost", "500"], "2 cycles of --budget-cost 500 need 1000: lower --budget-cost or --cycles"),
    ],
)
def test_bench_al_explains_a_pool_too_small_for_the_configuration(shapes_dataset, tmp_path, capsys, sizes, message):
    code = main(
        ["bench", "al", "--data", str(shapes_dataset), "--policies", "random", "--seeds", "0", *sizes, "--cycles", "2",
         "--base-model", "yolov5n.yaml", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_bench_al_names_an_unknown_new_class(shapes_dataset, tmp_path, capsys):
    code = main(["bench", "al", "--data", str(shapes_dataset), "--new-class", "hexagon", "--out", str(tmp_path)])
    assert code == 2
    assert "new class 'hexagon' is not a class of the dataset (ellipse, box, triangle)" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_configuration(name):
    preset = PRESETS[name]
    config = BenchConfig(
        policies=preset["policies"] or DEFAULT_POLICIES,
        seeds=preset["seeds"],
        **{k: preset[k] for k in ("initial", "budget", "cycles", "image_size", "initial_epochs", "epochs", "batch")},
    )
    scenes = DigitScenes(size=preset["image_size"])
    assert config.labelled_after(config.cycles) < preset["pool"]
    assert scenes.scene(0, 0).image.size == (preset["image_size"],) * 2


def test_bursts_are_a_shape_of_the_built_in_pool_only(shapes_dataset, tmp_path, capsys):
    assert main(["bench", "al", "--data", str(shapes_dataset), "--burst", "4", "--out", str(tmp_path)]) == 2
    assert "--burst shapes the built-in dataset's pool; a --data pool is used as it is" in capsys.readouterr().err
    assert main(["bench", "al", "--burst", "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 2
    assert "--burst must be 1 (one frame a scene) or more frames a scene, got 0" in capsys.readouterr().err


def test_a_rarer_new_class_is_a_shape_of_the_built_in_pool_only(shapes_dataset, tmp_path, capsys):
    assert main(["bench", "al", "--data", str(shapes_dataset), "--new-class-share", "0.04", "--out", str(tmp_path)]) == 2
    assert "--new-class-share shapes the built-in dataset's pool; a --data pool is used as it is" in capsys.readouterr().err
    # refused before a base model is trained for nothing
    assert main(["bench", "al", "--new-class-share", "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 2
    assert "the new class's share of the objects must be between 0 and 1" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("weights.pt"))


def test_bench_al_explains_bad_seeds_and_policies(shapes_dataset, tmp_path, capsys):
    assert main(["bench", "al", "--data", str(shapes_dataset), "--seeds", "0,x", "--out", str(tmp_path)]) == 2
    assert "--seeds must be comma-separated integers, e.g. 0,1,2; got '0,x'" in capsys.readouterr().err
    assert main(["bench", "al", "--data", str(shapes_dataset), "--policies", "random,best", "--out", str(tmp_path)]) == 2
    assert "--policies 'best' is unknown" in capsys.readouterr().err
    assert main(["bench", "al", "--data", str(shapes_dataset), "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "jobs must be a positive integer (runs at once), got 0" in capsys.readouterr().err
    assert main(["bench", "report", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        (["--policies", "random,best"], "--policies 'best' is unknown; choose one of"),
        (["--policies", ","], "--policies names no policy"),
        (["--seeds", "0,0"], "--seeds must be distinct integers of 0 or more, e.g. 0,1,2; got '0,0'"),
        (["--seeds", "-1"], "--seeds must be distinct integers of 0 or more"),
        (["--promotion", "if-not-worse", "--budget-cost", "-3"], "budget_cost must be 0"),
    ],
)
def test_bench_al_refuses_bad_runs_before_the_built_in_data_and_base_model(tmp_path, capsys, options, message):
    """Checked before the built-in pool is generated and its base model trained (minutes on a CPU), not after."""
    code = main(["bench", "al", *options, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "POLICY=" not in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--initial", "--cycles", "--budget", "--batch"])
def test_bench_al_sizes_below_one_are_refused_by_the_parser(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exited:
        main(["bench", "al", option, "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert f"argument {option}: must be a positive integer, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_bench_out_that_is_a_file_is_refused_before_the_work(tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes")
    assert main(["bench", "al", "--cache", str(tmp_path / "cache"), "--out", str(taken)]) == 2
    assert f"--out {taken} is a file: give a folder for results.json" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and taken.read_text() == "someone's notes"
    results = tmp_path / "results.json"
    results.write_text("{}")
    assert main(["bench", "report", str(results), "--out", str(taken)]) == 2
    assert f"--out {taken} is a file" in capsys.readouterr().err


def test_bench_al_writes_its_final_results_atomically(shapes_dataset, tmp_path, monkeypatch):
    """The final results.json goes through the temp-file-then-replace writer the runs use: a kill mid-write keeps a whole file."""
    import label_studio_ale.bench.cli as bench_cli
    import label_studio_ale.bench.simulation as simulation

    written = []

    def write_json(path, results):
        written.append(path)
        original(path, results)

    original = simulation._write_json
    monkeypatch.setattr(simulation, "_write_json", write_json)
    monkeypatch.setattr(simulation, "simulate", lambda *args, **kwargs: {"runs": []})
    monkeypatch.setattr(bench_cli, "_render", lambda results, out: None)
    out = tmp_path / "out"
    code = main(["bench", "al", "--data", str(shapes_dataset), "--policies", "random", "--seeds", "0", "--base-model", "yolov5n.yaml", "--out", str(out)])
    assert code == 0 and written == [out / "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["runs"] == [] and results["command"].startswith("ale ") and "seconds" in results
    assert not list(out.glob("*.tmp"))


def test_results_name_the_base_model_by_its_content(tmp_path):
    from label_studio_ale.bench.records import model_identity

    weights = tmp_path / "cache" / "weights.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"the same weights")
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(b"the same weights")
    assert model_identity(str(weights)) == model_identity(str(copy)) and model_identity(str(weights)).startswith("sha256:")
    assert str(tmp_path) not in model_identity(str(weights))
    assert model_identity("yolov5n.yaml") == "yolov5n.yaml"


def test_results_name_the_settings_that_decide_the_picks():
    from label_studio_ale.bench.records import selection_settings

    settings = Settings(cost_per_image=3.5, diversity_pool=6, class_balance=(("bird", 0.5), ("nest", 0.25)))
    assert selection_settings(settings) == {
        "COST_PER_IMAGE": 3.5,
        "NOVELTY_WEIGHT": 1.0,
        "DIVERSITY_POOL": 6,
        "DUPLICATE_DISTANCE": -1,
        "CLASS_BALANCE": "bird=0.5,nest=0.25",
        "EMPTY_QUOTA": 0.0,
        "EXPLORATION_FRACTION": 0.0,
    }


def test_an_initial_set_always_holds_a_validation_image():
    from label_studio_ale.bench.simulation import with_a_validation_image
    from label_studio_ale.training_set import is_validation

    train_only = [i for i in range(200) if not is_validation(i + 1)][:12]
    fixed = with_a_validation_image(train_only, range(200))
    assert len(fixed) == 12 and sum(is_validation(i + 1) for i in fixed) == 1 and set(fixed) - set(train_only)
    already = train_only[:11] + [next(i for i in range(200) if is_validation(i + 1))]
    assert with_a_validation_image(sorted(already), range(200)) == sorted(already)


def test_pool_images_are_decoded_upright_as_evaluation_and_serving_decode_them(tmp_path):
    from PIL import Image

    from label_studio_ale.bench.simulation import _load
    from label_studio_ale.media import read_image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / "a.jpg", exif=exif)
    loaded = _load(tmp_path / "a.jpg")
    assert loaded.size == (32, 64) and loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), np.asarray(read_image(tmp_path / "a.jpg")))


def test_pool_predictions_decode_at_most_predict_chunk_pixels_at_once(tmp_path):
    """Never LOAD_CHUNK large frames in memory at once: a chunk closes once its images reach PREDICT_CHUNK_PIXELS."""
    from PIL import Image

    from label_studio_ale.bench.simulation import BenchData, detect_images
    from label_studio_ale.datasets import LabelledImage
    from label_studio_ale.evaluation import GroundTruth

    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    items = [LabelledImage(tmp_path / "big.png", GroundTruth(np.zeros((0, 4)), [], (400, 300))) for _ in range(10)]

    class Spy:
        settings = Settings(predict_chunk_pixels=400 * 300 * 3)
        calls: list = []

        def detect(self, images):
            self.calls.append(len(images))
            return [image.size for image in images]

    spy = Spy()
    assert detect_images(spy, BenchData(["bird"], items, items), list(range(10))) == [(400, 300)] * 10
    assert spy.calls == [3, 3, 3, 1]


def test_the_bench_trains_as_start_training_does_tiled_and_without_crowd_boxes(tmp_path, monkeypatch):
    """Large frames are cut into tiles under the server's tiling settings; crowd and difficult boxes are left out
    of training (evaluation counts them neither hit nor miss)."""
    from PIL import Image

    import label_studio_ale.training as training
    from label_studio_ale.bench.simulation import BenchData, train_labelled
    from label_studio_ale.datasets import LabelledImage
    from label_studio_ale.evaluation import GroundTruth

    Image.new("RGB", (4800, 200)).save(tmp_path / "wide.png")
    truth = GroundTruth([[10, 10, 40, 40], [100, 10, 140, 40]], [0, 0], (4800, 200), [False, True])
    items = [LabelledImage(tmp_path / "wide.png", truth) for _ in range(6)]
    written = {}

    def train_version(settings, store, dataset, names, work, seed=None):
        written["images"] = sorted(p.name for p in (work / "images" / "train").iterdir())
        written["labels"] = {p.name: p.read_text() for p in (work / "labels" / "train").iterdir()}

    monkeypatch.setattr(training, "train_version", train_version)
    train_labelled(Settings(), None, BenchData(["bird"], items, items), list(range(6)), tmp_path / "work", 0)
    assert "1_t0.png" in written["images"], "the 4800 px frame is tiled, as TILE_ABOVE tiles it for Start Training"
    assert written["labels"]["1_t0.txt"].count("\n") == 1 and written["labels"]["1.txt"].count("\n") == 1


def test_a_new_class_without_boxes_is_refused_rather_than_reported_as_ap_0(tmp_path):
    from label_studio_ale.bench.simulation import BenchData, _new_class_index
    from label_studio_ale.datasets import LabelledImage
    from label_studio_ale.evaluation import GroundTruth

    birds = [LabelledImage(tmp_path / "a.png", GroundTruth([[0, 0, 5, 5]], [0], (10, 10)))]
    crowd = [LabelledImage(tmp_path / "b.png", GroundTruth([[0, 0, 5, 5], [0, 0, 5, 5]], [0, 1], (10, 10), [False, True]))]
    both = [LabelledImage(tmp_path / "c.png", GroundTruth([[0, 0, 5, 5], [0, 0, 5, 5]], [0, 1], (10, 10)))]
    config = BenchConfig(new_class="nest")
    with pytest.raises(ValueError, match="new class 'nest' has no box in the pool: name a class with boxes in both, or --new-class none"):
        _new_class_index(config, BenchData(["bird", "nest"], birds + crowd, both))
    with pytest.raises(ValueError, match="new class 'nest' has no box in the evaluation set"):
        _new_class_index(config, BenchData(["bird", "nest"], both, birds))
    assert _new_class_index(config, BenchData(["bird", "nest"], both, both)) == 1


def test_eval_format_needs_eval_data(shapes_dataset, tmp_path, capsys):
    code = main(["bench", "al", "--data", str(shapes_dataset), "--eval-format", "coco", "--out", str(tmp_path)])
    assert code == 2
    assert "--eval-format is the format of --eval-data: give --eval-data too" in capsys.readouterr().err
