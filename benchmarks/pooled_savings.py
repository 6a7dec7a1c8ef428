"""Every run of the small preset's setup read together: what each policy saves over all the seeds of all base models.

Each machine trains its own base model from the same scenes, and a run reads
three or six seeds of one of them. The savings have moved by ten points from
one base model to the next, so no single run says how far a policy is from a
target. This reads every `ale bench al` result given, keeps the runs made
with the small preset's setup and the recipe a project gets (`preset_problem`
says why a file or run is left out), and pools them:

- a *pair* is one seed's first model: runs that start from the same first
  model (same seed, same cycle-0 mAP50 to every digit) are the same pair,
  whichever file holds them; a (pair, policy) found twice is kept once, and
  a second copy whose curve differs is counted as a conflict;
- per policy, the pairs where it ran beside random: their mean curves and the
  images and boxes it needs to reach random's final mean mAP50 (the project's
  own `summarise`, as every table reads a run), and the same per base model;
- a bootstrap (BOOTSTRAP_DRAWS draws, a fixed seed) that draws base models,
  then each drawn model's seeds, with replacement: the 95 % interval of each
  saving and the share of draws that reach the targets (TARGETS). A
  draw in which the policy never reaches random's final counts as below
  every target. The table shows them for rows of MIN_INTERVAL_BASES or more
  base models only (the results keep them, with "interval_shown").

Usage: python benchmarks/pooled_savings.py [RESULTS.json ...] [--out docs/benchmarks/pooled-small]
(default: every docs/benchmarks/al-small*/ results.json, nested folders included)
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The small preset's setup a pooled run must have (`ale bench al --preset small`, at most fewer policies or other seeds).
PRESET_CONFIG = {"initial": 24, "budget": 24, "image_size": 128, "batch": 8, "initial_epochs": 0, "epochs": 0, "promotion": "always"}
PRESET_DESCRIPTION = "built-in: scikit-learn handwritten digits on photographs, 128px, 320 pool + 120 evaluation scenes"
#: Cycles read from each run (a run with more is read up to here).
CYCLES = 3
#: Bootstrap draws (base models, then their pairs), and their seed (the same inputs give the same intervals).
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
#: The benchmark's targets: images saved by the best policy, boxes by at least one.
TARGETS = {"images": 0.40, "boxes": 0.25}
BASELINE = "random"
#: After a reference's name in the table (it is listed after the policies).
REFERENCE_MARK = " †"
#: After a null reference's name (random from another stream: listed after the policies, before the references).
NULL_MARK = " ‡"
#: The null band's last column: the saving against the mean curve of random and every null stream.
ALL_STREAMS = "all streams"
#: random's own draws, read against one of its null streams as the baseline.
OWN_RANDOM = "random (its own draws)"
#: Base models a row needs for its interval and draw shares to be shown: a bootstrap over one or two base models
#: can only mix those models' own estimates, and savings move by about ten points from one base model to the next.
MIN_INTERVAL_BASES = 3


def default_results() -> list[Path]:
    return sorted((ROOT / "docs" / "benchmarks").glob("al-small*/**/results.json"))


def preset_problem(results: dict) -> str | None:
    """Why a results file is not the small preset's setup with the default recipe and selection; None when it is."""
    from label_studio_ale.bench.records import selection_settings
    from label_studio_ale.settings import Settings

    config, dataset, training = results.get("config", {}), results.get("dataset", {}), results.get("training", {})
    for name, value in PRESET_CONFIG.items():
        if config.get(name) != value:
            return f"config {name} is {config.get(name)!r}, the preset's is {value!r}"
    if config.get("cycles", 0) < CYCLES:
        return f"{config.get('cycles')} cycles, fewer than {CYCLES}"
    if config.get("budget_cost"):
        return "a cost budget (--budget-cost)"
    if dataset.get("description") != PRESET_DESCRIPTION:
        return f"another pool: {dataset.get('description')!r}"
    if training.get("TRAIN_RECIPE") != "small-data" or training.get("TRAIN_MIN_STEPS") != 0:
        return f"another recipe: {training or 'not recorded'}"
    for name in ("TRAIN_CONTINUE_STEPS", "TRAIN_FREEZE"):
        if training.get(name, 0):
            return f"{name}={training[name]}"
    defaults = selection_settings(Settings())
    changed = {k: v for k, v in results.get("selection", {}).items() if defaults.get(k) != v}
    if changed or "selection" not in results:
        return f"selection settings {changed or 'not recorded'}"
    return None


def run_problem(run: dict, min_steps: int) -> str | None:
    """Why a run is not the recipe's: a cycle that does not record its fine-tune, or one shorter than `min_steps`."""
    for cycle in run["cycles"][1 : CYCLES + 1]:
        steps = (cycle.get("fine_tune") or {}).get("steps")
        if steps is None:
            return f"cycle {cycle['cycle']} does not record its fine-tune"
        if steps < min_steps:
            return f"cycle {cycle['cycle']} trained {steps} steps, fewer than the recipe's {min_steps}"
    return None


def pool_runs(paths: list[Path]) -> dict:
    """-> {"pairs": {pair: {"base", "seed"}}, "runs": {(pair, policy): run}, "skipped": [...], "conflicts": [...]}.

    A pair is named `<base model>/seed<k>`; a base model that files name two
    ways (the bytes of its file, its weights) goes by its weights' digest.
    """
    from label_studio_ale_plugins.yolov5.recipe import MIN_STEPS

    pairs, runs, skipped, conflicts = {}, {}, [], []
    same = _BaseModels()
    for path in paths:
        results = json.loads(Path(path).read_text())
        problem = preset_problem(results)
        if problem:
            skipped.append({"file": str(path), "why": problem})
            continue
        for run in results["runs"]:
            problem = run_problem(run, MIN_STEPS)
            if problem:
                skipped.append({"file": str(path), "policy": run["policy"], "seed": run["seed"], "why": problem})
                continue
            first = (run["seed"], run["cycles"][0]["map50"])  # the first model: shared by every policy of the seed
            base = results["config"]["base_model"]
            same.join(pairs.setdefault(first, base), base)  # one model named two ways (a file's hash, its weights')
            key = (first, run["policy"])
            kept = runs.setdefault(key, dict(run, cycles=run["cycles"][: CYCLES + 1]))
            if [c["map50"] for c in kept["cycles"]] != [c["map50"] for c in run["cycles"][: CYCLES + 1]]:
                conflicts.append({"pair": key[0], "policy": key[1], "file": str(path)})
    named = {first: {"base": same.name(base), "seed": first[0]} for first, base in pairs.items()}
    label = {first: f"{p['base']}/seed{p['seed']}" for first, p in named.items()}
    conflicts = [c | {"pair": label[c["pair"]]} for c in conflicts]
    return {
        "pairs": {label[first]: p for first, p in named.items()},
        "runs": {(label[first], policy): run for (first, policy), run in runs.items()},
        "skipped": skipped,
        "conflicts": conflicts,
    }


class _BaseModels:
    """Names of one base model: a pair (first model) found under two names joins them; the weights' digest names the group."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def _root(self, name: str) -> str:
        while self.parent.setdefault(name, name) != name:
            name = self.parent[name]
        return name

    def join(self, a: str, b: str) -> None:
        self.parent[self._root(a)] = self._root(b)

    def name(self, name: str) -> str:
        root = self._root(name)
        group = sorted(n for n in self.parent if self._root(n) == root)
        # runs name a base model by its weights now (weights-sha256:...); older ones by the file's bytes
        return next((n for n in group if n.startswith("weights-sha256:")), group[0])


def reach(runs: dict, pairs: list[str], policy: str, new_class: str = "digit-0", baseline: str | tuple[str, ...] = BASELINE) -> dict:
    """The images and boxes `policy`'s mean curve over `pairs` needs to reach `baseline`'s final mean mAP50 on them.

    -> {"images": saving, "boxes": saving, "final": mAP50, "random_final": mAP50}; a saving of 0.27 is 27 %
    fewer than the baseline labelled, None where the mean curve never reaches it. A pair may repeat (a bootstrap
    draw). `baseline`: random, or one of its null streams (random-null-<k>) read in its place, or several of
    them: their mean curve over every pair.
    """
    from label_studio_ale.bench.report import summarise

    streams = (baseline,) if isinstance(baseline, str) else tuple(baseline)
    name = OWN_RANDOM if policy == BASELINE else policy  # random itself, read against another stream
    listed = []
    for i, pair in enumerate(pairs):  # a drawn pair may repeat: each copy is its own seed to summarise
        # each stream of each pair its own seed: summarise's baseline curve is their mean
        listed += [dict(runs[(pair, stream)], seed=i * len(streams) + k, policy=BASELINE) for k, stream in enumerate(streams)]
        listed.append(dict(runs[(pair, policy)], seed=i * len(streams), policy=name))
    summary = summarise({"config": {}, "dataset": {"new_class": new_class}, "runs": listed})
    row, random = summary["policies"][name], summary["policies"][BASELINE]
    got = row["to_reach_random"]
    return {"images": got["images"]["saving"], "boxes": got["boxes"]["saving"], "final": row["mean"][-1], "random_final": random["mean"][-1]}


def pooled(pool: dict, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> dict:
    """Per policy run beside random: its pooled saving, the bootstrap interval and share of draws at each target, per base model."""
    by_policy = defaultdict(list)
    for pair, policy in pool["runs"]:
        if policy != BASELINE and (pair, BASELINE) in pool["runs"]:
            by_policy[policy].append(pair)
    table = {}
    for policy, pairs in sorted(by_policy.items()):
        # each policy its own stream: a run of another policy added to the files leaves this one's interval as it was
        rng = np.random.default_rng([seed, zlib.crc32(policy.encode())])
        pairs = sorted(pairs)
        by_base = defaultdict(list)
        for pair in pairs:
            by_base[pool["pairs"][pair]["base"]].append(pair)
        row = {"pairs": len(pairs), "base_models": sorted(by_base)}
        row |= reach(pool["runs"], pairs, policy)
        samples = _bootstrap(pool["runs"], by_base, policy, draws, rng)
        for unit, target in TARGETS.items():
            values = np.array(samples[unit])
            # no interpolation: a draw that never reaches random's final is -inf, and -inf - -inf is not a number
            low, high = np.quantile(values, [0.025, 0.975], method="inverted_cdf")
            row[f"{unit}_interval"] = [_finite(low), _finite(high)]
            row[f"{unit}_at_target"] = float((values >= target).mean())
        row["interval_shown"] = len(by_base) >= MIN_INTERVAL_BASES
        row["by_base_model"] = {base: reach(pool["runs"], own, policy) | {"pairs": len(own)} for base, own in sorted(by_base.items())}
        table[policy] = row
    return table


def null_band(pool: dict) -> dict:
    """Per base model with null streams: each policy's saving against random and against each of random's other streams.

    Random's draws depend on the seed, not the model, so every base model's random labels the same images: a
    saving read against them alone carries their luck on every base model. Read against the null streams
    (`random-null-<k>`, the same random from other draws), the spread shows how much of a saving is that luck.

    -> {base: {"streams": [random, nulls...], "pairs": n, "policies": {policy: {stream: {"images", "boxes"}}}}}, with
    ALL_STREAMS among each policy's streams: the saving against the mean curve of them all;
    on the pairs where random and every null stream of the base model ran; a policy is read on those of them it ran on
    only if it ran on all.
    """
    from label_studio_ale.bench.null import is_null, null_stream

    bases = defaultdict(set)
    for pair, policy in pool["runs"]:
        if is_null(policy):
            bases[pool["pairs"][pair]["base"]].add(policy)
    band = {}
    for base, nulls in sorted(bases.items()):
        streams = [BASELINE, *sorted(nulls, key=null_stream)]
        pairs = sorted(
            pair for pair, got in pool["pairs"].items() if got["base"] == base and all((pair, s) in pool["runs"] for s in streams)
        )
        if not pairs:
            continue
        policies = sorted({p for pair, p in pool["runs"] if pair in pairs and not is_null(p)})
        rows = {}
        for policy in policies:
            if not all((pair, policy) in pool["runs"] for pair in pairs):
                continue
            rows[policy] = {
                stream: {unit: got[unit] for unit in TARGETS}
                for stream in streams
                if stream != policy
                for got in [reach(pool["runs"], pairs, policy, baseline=stream)]
            }
            # the best estimate of a typical draw: the mean curve of every stream, random's own among them
            together = reach(pool["runs"], pairs, policy, baseline=tuple(streams))
            rows[policy][ALL_STREAMS] = {unit: together[unit] for unit in TARGETS}
        band[base] = {"streams": streams, "pairs": len(pairs), "policies": rows}
    return band


def band_markdown(band: dict) -> str:
    """Per base model with null streams: a table of each policy's saving of images and boxes against each stream."""
    from label_studio_ale.bench.oracle import is_reference

    lines = []
    for base, got in band.items():
        streams = [*got["streams"], ALL_STREAMS]
        lines += [
            "",
            f"Against each of random's streams, base model {base} ({got['pairs']} pairs): images / boxes to that stream's final mAP50 "
            "(random's draws are the same on every base model; the other streams show how lucky they are; "
            f"{ALL_STREAMS}: their mean curve, random's among them):",
            "",
            "| policy | " + " | ".join(streams) + " |",
            "|---|" + "---:|" * len(streams),
        ]
        ranked = sorted(got["policies"].items(), key=lambda item: (item[0] != BASELINE, is_reference(item[0]), item[0]))
        for policy, savings in ranked:
            cells = [
                "—" if stream not in savings else f"{_pct(savings[stream]['images'])} / {_pct(savings[stream]['boxes'])}"
                for stream in streams
            ]
            name = OWN_RANDOM if policy == BASELINE else f"{policy}{REFERENCE_MARK if is_reference(policy) else ''}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


def _bootstrap(runs: dict, by_base: dict[str, list[str]], policy: str, draws: int, rng) -> dict[str, list[float]]:
    """`draws` savings per unit, each from a draw of the base models (with replacement), then of each drawn model's pairs.

    `by_base`: each base model's pairs.

    Seeds of one base model vary less than base models do: drawing pairs alone
    would treat six seeds of one model as six models and narrow the interval.
    A policy that never reaches random's final in a draw gives -inf.
    """
    bases = sorted(by_base)
    samples = {unit: [] for unit in TARGETS}
    for _ in range(draws):
        drawn = []
        for b in rng.integers(0, len(bases), len(bases)):
            own = by_base[bases[b]]
            drawn += [own[i] for i in rng.integers(0, len(own), len(own))]
        got = reach(runs, drawn, policy)
        for unit in TARGETS:
            samples[unit].append(-np.inf if got[unit] is None else got[unit])
    return samples


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "not reached" if value is None else f"{-100 * value:+.0f} %".replace("-", "−")


def _interval(values: list) -> str:
    """[low, high] savings as "−30 to −19 %" (fewer than random: negative, as the tables write it)."""
    low, high = values
    if high is None:
        return "not reached"
    return f"{'not reached' if low is None else f'{-100 * low:+.0f}'} to {-100 * high:+.0f} %".replace("-", "−")


def markdown(table: dict) -> str:
    """One row per policy, most pairs first, references last: images and boxes to random's final (pooled), their 95 % interval, the share at target."""
    lines = [
        "| policy | pairs | base models | final mAP50 (random's) | images to random's last | 95 % interval | draws ≥ 40 % fewer "
        "| boxes to random's last | 95 % interval | draws ≥ 25 % fewer |",
        "|---|---:|---:|---|---:|---|---:|---:|---|---:|",
    ]
    from label_studio_ale.bench.null import is_null
    from label_studio_ale.bench.oracle import is_reference

    def mark(policy: str) -> str:
        return NULL_MARK if is_null(policy) else REFERENCE_MARK if is_reference(policy) else ""

    # the policies, most pairs first, then the null, then the references
    ranked = sorted(table.items(), key=lambda item: (2 * is_reference(item[0]) + is_null(item[0]), -item[1]["pairs"], item[0]))
    for policy, row in ranked:
        bases = len(row["base_models"])
        shown = row.get("interval_shown", bases >= MIN_INTERVAL_BASES)
        few = f"— ({bases} base model{'s' if bases > 1 else ''})"
        cells = {
            unit: (_interval(row[f"{unit}_interval"]), f"{row[f'{unit}_at_target']:.0%}") if shown else (few, "—")
            for unit in TARGETS
        }
        lines.append(
            f"| {policy}{mark(policy)} | {row['pairs']} | {bases} | {row['final']:.3f} ({row['random_final']:.3f}) "
            f"| {_pct(row['images'])} | {cells['images'][0]} | {cells['images'][1]} "
            f"| {_pct(row['boxes'])} | {cells['boxes'][0]} | {cells['boxes'][1]} |"
        )
    lines += [
        "",
        f"Intervals and draw shares are shown for rows of {MIN_INTERVAL_BASES} or more base models: savings move by about ten points "
        "from one base model to the next, and a bootstrap over one or two can only mix their own estimates (each is listed below).",
    ]
    if any(is_null(policy) for policy in table):
        lines += ["", f"{NULL_MARK.strip()} random again, from another stream of draws, beside random from the same first models: "
                  "the saving a policy shows by chance alone."]
    if any(is_reference(policy) for policy in table):
        lines += ["", f"{REFERENCE_MARK.strip()} a reference that reads the ground truth (`ale bench al`'s oracles): what a policy could save, not one a project can run."]
    lines += ["", "By base model (pairs; images and boxes to random's last on its seeds):", ""]
    lines += ["| policy | base model (pairs) | images | boxes |", "|---|---|---:|---:|"]
    for policy, row in ranked:
        for base, got in row["by_base_model"].items():
            lines.append(f"| {policy} | {base} ({got['pairs']}) | {_pct(got['images'])} | {_pct(got['boxes'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, help="results.json files (default: docs/benchmarks/al-small*/)")
    parser.add_argument("--out", type=Path, help="write results.json and table.md here")
    parser.add_argument("--draws", type=int, default=BOOTSTRAP_DRAWS)
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be a positive number of bootstrap draws, got {args.draws}")
    paths = args.results or default_results()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    pool = pool_runs(paths)
    if not any(policy == BASELINE for _, policy in pool["runs"]):
        print("no run of the small preset's setup with random beside it among the files given", file=sys.stderr)
        return 1
    table = pooled(pool, args.draws)
    band = null_band(pool)
    text = markdown(table) + band_markdown(band)
    print(text)
    print(f"{len(pool['pairs'])} pairs; {len(pool['skipped'])} files or runs left out; {len(pool['conflicts'])} conflicting repeats")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(text)
        record = {
            "files": [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else str(p) for p in paths],
            "pairs": sorted(pool["pairs"]),
            "skipped": pool["skipped"],
            "conflicts": pool["conflicts"],
            "draws": args.draws,
            "targets": TARGETS,
            "policies": table,
            "null_band": band,
        }
        (args.out / "results.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
