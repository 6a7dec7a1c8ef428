"""Does a fine-tune learn from a few labelled images? mAP50 against the number of labelled images, per recipe.

The data are `ale bench al`'s built-in digit scenes with its small preset's
sizes: the pool, the fixed evaluation set and the cached base model (which
knows three digits; the fourth is the new class). Per seed, the pool is put in
a random order and the first n images are labelled, so every size's images
include the smaller sizes' (a version trained on a superset of labels). For
each recipe, Start Training's own `train_version` fine-tunes the base model on
them (the head grown for the new class) and the version is evaluated on the
evaluation set.

Baseline, same images, same seeds: `--baseline` (default `ultralytics`: its
own defaults at TRAIN_EPOCHS=30, which is what Start Training did before the
small-data recipe). Reported per recipe and size: mAP50 mean and sd over the
seeds, mAP50-95, the new class's AP50 and labelled boxes, seconds per
fine-tune and their ratio to the baseline's (timed in the same run); whether
each recipe's mean mAP50 rises with every size; and the gain over the baseline.

With `--pseudo-labels`, a further experiment (semi-supervised): the small-data
version trained on n images labels the rest of the pool with its confident
boxes (score >= --pseudo-threshold), then is fine-tuned once more on the
labelled images plus those pseudo-labels; the control is fine-tuned once more
on the labelled images alone, the same number of steps. Reported as the gain
of pseudo-labels over the control.

A recipe may name its fewest optimizer steps, `small-data@400`: the
small-data recipe with TRAIN_MIN_STEPS=400, so one run sweeps the steps
(`--recipes small-data@200,small-data@600,small-data@1000 --baseline small-data@200`).
And the precision it trains in, `small-data:bf16` (TRAIN_PRECISION; default
auto): `--recipes small-data:fp32,small-data:bf16 --baseline small-data:fp32`
compares bfloat16 training with float32 on the same images, in time and mAP.
And the layers it keeps, `small-data+freeze10` (TRAIN_FREEZE=10, YOLOv5's
backbone): `--recipes small-data,small-data+freeze10 --baseline small-data`.
And the batch its steps take, `small-data@300x16` (TRAIN_BATCH=16 for 300
steps: as many images seen as 600 steps of the preset's batch of 8):
`--recipes small-data@600,small-data@300x16,small-data@600x16 --baseline small-data@600`.

Usage: python benchmarks/finetune_recipe.py [--recipes small-data,ultralytics] [--sizes 12,24,48,96]
           [--seeds 0,1,2] [--pseudo-labels] [--out docs/benchmarks/finetune] [--resume]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = "small"
#: The recipe Start Training used before: ultralytics' defaults, TRAIN_EPOCHS=30.
BASELINE = "ultralytics"
BASELINE_EPOCHS = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="small-data,ultralytics")
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--sizes", default="12,24,48,96", help="labelled images, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pseudo-labels", action="store_true", help="also measure pseudo-labels on the unlabeled pool")
    parser.add_argument("--pseudo-sizes", default="24,48")
    parser.add_argument("--pseudo-threshold", type=float, default=0.5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune"))
    parser.add_argument("--cache", default=None, help="ale bench al's cache (default: its own)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs already in --out's results.json (same base model) and add the missing ones"
    )
    parser.add_argument(
        "--base-model", help="start every fine-tune from this instead of the cached base model, e.g. yolov5n.yaml: from scratch"
    )
    args = parser.parse_args()

    from label_studio_ale.adapters import adapter_class
    from label_studio_ale.bench.cli import DEFAULT_CACHE, PRESETS
    from label_studio_ale.bench.records import model_identity
    from label_studio_ale.bench.sources import builtin_base_model, builtin_data
    from label_studio_ale.settings import Settings
    from label_studio_ale.training_set import is_validation

    recipes = [r for r in args.recipes.split(",") if r]
    for recipe in recipes:
        try:
            recipe_settings(Settings(), recipe)  # a misspelt recipe fails before the base model is trained
        except ValueError as error:
            parser.error(str(error))
    sizes = sorted(int(n) for n in args.sizes.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.baseline not in recipes:
        parser.error(f"--baseline {args.baseline} must be one of --recipes")
    preset = PRESETS[PRESET]
    cache = Path(args.cache or DEFAULT_CACHE)
    started = time.monotonic()
    data, new_class = builtin_data(cache, preset["pool"], preset["eval"], preset["image_size"])
    settings = Settings(image_size=preset["image_size"], train_batch=preset["batch"], promotion="always")
    base = args.base_model or builtin_base_model(cache, settings, preset["base_images"], preset["base_epochs"], preset["image_size"], "cpu", log=_log)
    settings = settings.replace(base_model=str(base))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "finetune_recipe",
        "data": data.description,
        "new_class": new_class,
        "base_model": model_identity(str(base), adapter_class(settings)),
        "baseline": args.baseline,
        "sizes": sizes,
        "seeds": seeds,
        "runs": [],
        "pseudo_labels": [],
    }
    done = _earlier_results(out / "results.json", results["base_model"]) if args.resume else {"runs": [], "pseudo_labels": []}
    with tempfile.TemporaryDirectory(prefix="finetune-", dir=out) as work:
        for seed in seeds:
            order = [int(i) for i in np.random.default_rng(seed).permutation(len(data.pool))]
            # every size needs a validation image (Start Training's split is by task id): the first one leads
            first_val = next(i for i in order if is_validation(i + 1))
            order = [first_val] + [i for i in order if i != first_val]
            width = max(len(name) for name in recipes)  # small-data@600 is wider than a plain recipe name
            for recipe in recipes:
                train = recipe_settings(settings, recipe)
                for n in sizes:
                    if earlier := [r for r in done["runs"] if (r["recipe"], r["seed"], r["images"]) == (recipe, seed, n)]:
                        results["runs"].append(earlier[0])
                        continue
                    record = _fine_tune(train, data, new_class, order[:n], Path(work), seed)
                    results["runs"].append({"recipe": recipe, "seed": seed, **record})
                    _log(f"seed {seed} {recipe:<{width}} {n:>4} images: mAP50 {record['map50']:.3f}, new class AP50 {record['new_class_ap50']:.3f} ({record['seconds']:.0f} s)")
                    _write(out / "results.json", results)
            if args.pseudo_labels:
                for n in sorted(int(x) for x in args.pseudo_sizes.split(",")):
                    if earlier := [
                        r
                        for r in done["pseudo_labels"]
                        if (r["seed"], r["images"], r["threshold"]) == (seed, n, args.pseudo_threshold) and "control_steps" in r
                    ]:
                        results["pseudo_labels"].append(earlier[0])
                        continue
                    record = _pseudo_label_experiment(settings, data, new_class, order, n, args.pseudo_threshold, Path(work), seed)
                    results["pseudo_labels"].append({"seed": seed, **record})
                    _log(f"seed {seed} pseudo-labels {n:>4} images: control {record['control_map50']:.3f}, pseudo {record['pseudo_map50']:.3f}")
                    _write(out / "results.json", results)
    results["seconds"] = round(time.monotonic() - started, 1)
    _write(out / "results.json", results)
    table = report(results)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


def recipe_settings(settings, recipe: str):
    """`settings` training with `recipe`: a TRAIN_RECIPE name, `ultralytics` at BASELINE_EPOCHS, or `small-data@STEPS`
    (`small-data@STEPSxBATCH` with TRAIN_BATCH=BATCH; default the preset's), each optionally with `:PRECISION`
    (a TRAIN_PRECISION: `small-data:fp32`, `small-data@600:bf16`; default auto) and `+freezeN` (TRAIN_FREEZE=N:
    `small-data+freeze10` keeps YOLOv5's backbone; default 0)."""
    from label_studio_ale.settings import TRAIN_PRECISIONS
    from label_studio_ale_plugins.yolov5.recipe import RECIPES, SMALL_DATA

    rest, plus, freeze = recipe.partition("+freeze")
    spec, colon, precision = rest.partition(":")
    name, at, steps = spec.partition("@")
    steps, x, batch = steps.partition("x")
    if (
        name not in RECIPES
        or (at and (name != SMALL_DATA or not steps.isdigit() or int(steps) < 1))
        or (x and (not batch.isdigit() or int(batch) < 1))
        or (colon and precision not in TRAIN_PRECISIONS)
        or (plus and (not freeze.isdigit() or int(freeze) < 1))
    ):
        raise ValueError(
            f"--recipes: {recipe!r} is not one of {', '.join(RECIPES)} or {SMALL_DATA}@STEPS (e.g. {SMALL_DATA}@600, "
            f"or {SMALL_DATA}@300x16 for 300 steps of 16 images), "
            f"optionally with :PRECISION, one of {', '.join(TRAIN_PRECISIONS)} (e.g. {SMALL_DATA}:fp32), "
            f"and +freezeLAYERS (e.g. {SMALL_DATA}+freeze10)"
        )
    return settings.replace(
        train_recipe=name,
        train_epochs=BASELINE_EPOCHS if name == BASELINE else 0,
        train_min_steps=int(steps or 0),
        train_precision=precision or settings.train_precision,
        train_freeze=int(freeze or 0),
        train_batch=int(batch) if x else settings.train_batch,
    )


def _fine_tune(settings, data, new_class: str, labelled: list[int], work: Path, seed: int, store_dir: Path | None = None) -> dict:
    from label_studio_ale.bench.simulation import evaluate_served, train_labelled
    from label_studio_ale.model_store import ModelStore

    store_dir = store_dir or work / f"models-{time.monotonic_ns()}"
    store = ModelStore(store_dir, 0)
    begun = time.monotonic()
    train_labelled(settings, store, data, labelled, work / "train", seed)
    seconds = time.monotonic() - begun
    metrics = evaluate_served(settings, store, data)
    new_index = data.names.index(new_class)
    record = {
        "images": len(labelled),
        "boxes": int(sum(len(data.pool[i].truth.labels) for i in labelled)),
        "new_class_boxes": int(sum(int((data.pool[i].truth.labels == new_index).sum()) for i in labelled)),
        "map50": metrics["map50"],
        "map": metrics["map"],
        "new_class_ap50": metrics["per_class"].get(new_class, {}).get("map50", 0.0),
        "epochs": store.current().manifest["epochs"],
        "steps": store.current().manifest.get("plan", {}).get("steps"),  # optimizer steps, as the adapter planned them
        "precision": store.current().manifest.get("plan", {}).get("precision"),  # what auto resolved to on this machine
        "seconds": round(seconds, 1),
    }
    if store_dir.name.startswith("models-"):
        shutil.rmtree(store_dir, ignore_errors=True)
    return record


def _pseudo_label_experiment(settings, data, new_class: str, order: list[int], n: int, threshold: float, work: Path, seed: int) -> dict:
    """small-data on n labelled images; then once more on them (control) or on them plus pseudo-labels of the rest."""
    from label_studio_ale.adapters import load_adapter
    from label_studio_ale.bench.simulation import BenchData, evaluate_served, train_labelled
    from label_studio_ale.datasets import LabelledImage, predict_items
    from label_studio_ale.evaluation import GroundTruth
    from label_studio_ale.model_store import ModelStore
    from label_studio_ale.predictor import Predictor
    from label_studio_ale.training_set import is_validation
    from label_studio_ale_plugins.yolov5.recipe import SMALL_DATA, plan

    settings = settings.replace(train_recipe=SMALL_DATA, train_epochs=0)
    labelled, unlabeled = order[:n], order[n:]
    first = ModelStore(work / f"pseudo-{seed}-{n}" / "first", 0)
    train_labelled(settings, first, data, labelled, work / "train", seed)
    adapter = load_adapter(settings.replace(model_weights=str(first.current().weights), model_classes=()))
    predictor = Predictor(settings.replace(score_threshold=threshold), adapter, None)
    pool = list(data.pool)
    pseudo_boxes = 0
    for start in range(0, len(unlabeled), 64):
        chunk = unlabeled[start : start + 64]
        for i, raw in zip(chunk, predict_items(adapter, [data.pool[j] for j in chunk], settings.predict_batch_size)):
            shown = predictor.shown(raw)
            pool[i] = LabelledImage(data.pool[i].path, GroundTruth(shown.xyxy, shown.labels, shown.image_size))
            pseudo_boxes += len(shown)
    with_pseudo = BenchData(data.names, pool, data.evaluation, data.description)
    results = {}
    # The control takes the recipe's steps on the labelled images (listed `repeat` times per epoch); the
    # pseudo-labelled run the same number of steps over its larger set, listed once.
    train_count = sum(not is_validation(i + 1) for i in labelled)
    recipe = plan(SMALL_DATA, train_count, settings.train_batch)
    steps = recipe.epochs * math.ceil(train_count * recipe.repeat / settings.train_batch)
    pseudo_per_epoch = math.ceil(sum(not is_validation(i + 1) for i in order) / settings.train_batch)
    pseudo_epochs = max(1, round(steps / pseudo_per_epoch))
    for name, source, images, epochs in (("control", data, labelled, 0), ("pseudo", with_pseudo, order, pseudo_epochs)):
        store = ModelStore(work / f"pseudo-{seed}-{n}" / name, 0)
        shutil.copytree(first.dir, store.dir, dirs_exist_ok=True)
        train_labelled(settings.replace(train_epochs=epochs), store, source, images, work / "train", seed)
        results[f"{name}_map50"] = evaluate_served(settings, store, data)["map50"]
    results["control_steps"] = steps
    results["pseudo_steps"] = pseudo_epochs * pseudo_per_epoch
    shutil.rmtree(work / f"pseudo-{seed}-{n}", ignore_errors=True)
    return {"images": n, "pseudo_images": len(unlabeled), "pseudo_boxes": pseudo_boxes, "threshold": threshold, **results}


def report(results: dict) -> str:
    """The markdown table: per recipe and size, mean ± sd over seeds, and the gain over the baseline."""
    by = {}
    for run in results["runs"]:
        by.setdefault((run["recipe"], run["images"]), []).append(run)
    recipes = list(dict.fromkeys(run["recipe"] for run in results["runs"]))
    sizes = sorted({run["images"] for run in results["runs"]})
    lines = [
        "| recipe | labelled images | epochs | mAP50 | gain over baseline (pp) | mAP50-95 | new-class boxes | new-class AP50 | seconds | time / baseline's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    means = {}
    for recipe in recipes:
        for n in sizes:
            runs = by.get((recipe, n), [])
            if not runs:
                continue
            maps = [r["map50"] for r in runs]
            means[(recipe, n)] = statistics.fmean(maps)
            baseline = by.get((results["baseline"], n), [])
            base = [r["map50"] for r in baseline]
            compared = recipe != results["baseline"] and len(base) == len(maps)
            gain = f"{100 * (statistics.fmean(maps) - statistics.fmean(base)):+.1f}" if compared else "—"
            seconds = _mean([r["seconds"] for r in runs])
            # the same seeds and images, timed in the same run: a ratio, not a machine's seconds
            ratio = f"{seconds / _mean([r['seconds'] for r in baseline]):.2f}" if compared else "—"
            lines.append(
                f"| {recipe} | {n} | {_mean([r['epochs'] for r in runs]):.0f} | {statistics.fmean(maps):.3f} ± {_sd(maps):.3f} | {gain} "
                f"| {_mean([r['map'] for r in runs]):.3f} | {_mean([r['new_class_boxes'] for r in runs]):.1f} "
                f"| {_mean([r['new_class_ap50'] for r in runs]):.3f} | {seconds:.0f} | {ratio} |"
            )
    lines.append("")
    for recipe in recipes:
        curve = [means[(recipe, n)] for n in sizes if (recipe, n) in means]
        drops = [f"{a}->{b}" for (a, x), (b, y) in zip(zip(sizes, curve), zip(sizes[1:], curve[1:])) if y < x]
        noise = _mean([_sd([r["map50"] for r in by[(recipe, n)]]) for n in sizes if (recipe, n) in by])
        lines.append(
            f"- {recipe}: mean mAP50 {' -> '.join(f'{v:.3f}' for v in curve)}; "
            f"{'rises with every size' if not drops else 'drops at ' + ', '.join(drops)} (sd between seeds ~{noise:.3f})"
        )
    if results.get("pseudo_labels"):
        gains = [r["pseudo_map50"] - r["control_map50"] for r in results["pseudo_labels"]]
        each = ", ".join(
            f"{r['images']} images seed {r['seed']}: {100 * (r['pseudo_map50'] - r['control_map50']):+.1f}" for r in results["pseudo_labels"]
        )
        threshold = results["pseudo_labels"][0]["threshold"]
        lines.append(
            f"- pseudo-labels (score >= {threshold}): gain over the control {100 * statistics.fmean(gains):+.1f} "
            f"± {100 * _sd(gains):.1f} pp over {len(gains)} runs ({each})"
        )
    return "\n".join(lines)


def _earlier_results(path: Path, base_model: str) -> dict:
    """The runs of an earlier, interrupted run into the same folder; none when its base model differs."""
    if not path.is_file():
        return {"runs": [], "pseudo_labels": []}
    earlier = json.loads(path.read_text())
    if earlier.get("base_model") != base_model:
        _log(f"--resume: {path} was measured from another base model ({earlier.get('base_model')}); starting over")
        return {"runs": [], "pseudo_labels": []}
    return earlier


def _mean(values) -> float:
    return statistics.fmean(values) if values else 0.0


def _sd(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _write(path: Path, results: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(results, indent=1))
    temp.replace(path)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
