"""Benchmark results -> summary statistics, a markdown table and a learning-curve plot.

Gains are measured per seed against the random policy of the same seed (same
initial set, same initial model), then averaged over seeds; they are given in
percentage points of mAP50, as in the ALE paper's tables. The cost side: the
images and boxes each policy's mean curve needs to reach random's final mean
mAP50, against what random labelled for it, the points each labelled
image and each labelled box bought (initial model to last cycle), and each
policy's final mAP50 against random's at the same number of labelled boxes
(what the same annotation money bought, for teams that pay per box). Under a
cost budget (`--budget-cost`), also the annotation cost each policy needs to
reach random's final: boxes plus COST_PER_IMAGE per image, the budget's own
measure. Where every cycle records what its images' pre-annotations
needed (`edits`), also the boxes the annotator drew, fixed or removed, and
how many of those each policy needs to reach random's final. Where the
results hold random's null streams (`random-null-<k>`), also what each
policy needs to reach the final of the streams' mean curve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..annotation_edits import EditCounts
from .simulation import BASELINE_POLICY

METRIC = "map50"
#: What "to reach random's final" is counted in, and the summary curve each reads.
REACH_CURVES = {"images": "images_curve", "boxes": "objects_curve", "cost": "cost_curve", "edits": "edits_curve"}


def summarise(results: dict, metric: str = METRIC) -> dict:
    """-> {"labelled": [n per cycle], "policies": {name: per-cycle means/sds and gains over random}}.

    "labelled" is the images every run had labelled per cycle; None where the
    runs differ (a cost budget), and each policy's "images_curve" says. Under a
    cost budget, "cost_per_image" is the run's COST_PER_IMAGE and each policy
    has a "cost_curve" (boxes + cost_per_image x images, per cycle).
    """
    runs = results["runs"]
    if not runs:
        raise ValueError("the results hold no finished runs")
    policies = list(dict.fromkeys(run["policy"] for run in runs))
    by_key = {(run["policy"], run["seed"]): run for run in runs}
    cycles = min(len(run["cycles"]) for run in runs)
    cost_per_image = _cost_per_image(results)
    curves = {key: run_curves(run, cycles, metric, cost_per_image) for key, run in by_key.items()}
    labelled = curves[(runs[0]["policy"], runs[0]["seed"])]["images"]
    shared = all(curve["images"] == labelled for curve in curves.values())
    summary = {"metric": metric, "labelled": labelled if shared else None, "cycles": cycles,
               "seeds": sorted({run["seed"] for run in runs}), "policies": {}}  # fmt: skip
    if cost_per_image is not None:
        summary["cost_per_image"] = cost_per_image
    # compared only where every run has them: a result written before they were recorded (or before reference
    # policies recorded them) has none
    summary["edits"] = all("edits" in curve for curve in curves.values())
    if not summary["edits"]:
        for curve in curves.values():
            curve.pop("edits", None)
    for name in policies:
        seeds = sorted(seed for policy, seed in by_key if policy == name)
        values = np.array([curves[(name, s)]["metric"] for s in seeds])
        row = {"seeds": len(seeds), "mean": values.mean(0).tolist(), "sd": _sd(values).tolist()}
        baseline_seeds = [s for s in seeds if (BASELINE_POLICY, s) in by_key]
        if baseline_seeds and name != BASELINE_POLICY:
            baseline = np.array([curves[(BASELINE_POLICY, s)]["metric"] for s in baseline_seeds])
            mine = np.array([curves[(name, s)]["metric"] for s in baseline_seeds])
            gains = (mine - baseline)[:, 1:] * 100  # cycle 0 is the shared initial model
            row["gain_final"] = {"mean": float(gains[:, -1].mean()), "sd": float(_sd(gains[:, -1]))} if gains.size else None
            row["gain_mean"] = {"mean": float(gains.mean()), "sd": float(_sd(gains.mean(1)))} if gains.size else None
        for unit, curve in REACH_CURVES.items():  # images_curve, objects_curve and, under a cost budget, cost_curve
            if unit in curves[(name, seeds[0])]:
                row[curve] = np.mean([curves[(name, s)][unit] for s in seeds], axis=0).tolist()
        row["labelled_objects"] = row["objects_curve"][-1]
        if summary["edits"]:
            row["edited_boxes"] = row["edits_curve"][-1]
        # what each labelled image and each labelled box bought: points of the metric from the initial model to the last
        gained = (row["mean"][-1] - row["mean"][0]) * 100
        images_spent = row["images_curve"][-1] - row["images_curve"][0]
        boxes = row["objects_curve"][-1] - row["objects_curve"][0]
        row["gain_per_image"] = gained / images_spent if images_spent else None
        row["gain_per_box"] = gained / boxes if boxes else None
        new_class = [by_key[(name, s)]["cycles"][cycles - 1].get("new_class_ap50") for s in seeds]
        if all(v is not None for v in new_class):
            row["new_class_ap50"] = float(np.mean(new_class))
            row["new_class_objects"] = float(
                np.mean([by_key[(name, s)]["cycles"][cycles - 1]["labelled_objects"][results["dataset"]["new_class"]] for s in seeds])
            )
        summary["policies"][name] = row
    _add_cost_to_reach_random(summary)
    _add_cost_to_reach_streams(summary, {name: sorted(s for p, s in by_key if p == name) for name in policies})
    _add_reach_by_seed(summary, curves)
    _add_gain_at_same_boxes(summary)
    return summary


def run_curves(run: dict, cycles: int, metric: str, cost_per_image: float | None = None) -> dict:
    """One run's first `cycles` cycles as curves, (cycles,) each: labelled "images" and "boxes", the `metric`
    ("metric"), with `cost_per_image` (a cost budget) the annotation "cost": boxes + cost_per_image x images,
    and where every cycle records its `edits`, the boxes drawn, fixed or removed so far ("edits")."""
    done = run["cycles"][:cycles]
    images = [c["labelled_images"] for c in done]
    boxes = [sum(c["labelled_objects"].values()) for c in done]
    curves = {"images": images, "boxes": boxes, "metric": [c[metric] for c in done]}
    if cost_per_image is not None:
        curves["cost"] = [b + cost_per_image * i for b, i in zip(boxes, images)]
    if all("edits" in c for c in done):
        curves["edits"] = np.cumsum([EditCounts(**c["edits"]).edited for c in done]).tolist()
    return curves


def _cost_per_image(results: dict) -> float | None:
    """COST_PER_IMAGE of a cost-budget run (None under an image budget); a ValueError if the results lack it."""
    if not (results.get("config") or {}).get("budget_cost"):
        return None
    value = (results.get("selection") or {}).get("COST_PER_IMAGE")
    if value is None:
        raise ValueError("a --budget-cost result must name COST_PER_IMAGE under 'selection': rerun it with this version of ale bench al")
    return float(value)


def labelled_to_reach(labelled: list[float], curve: list[float], target: float) -> float | None:
    """Where the (labelled, curve) polyline first reaches `target`, interpolated linearly; None if it never does.

    labelled, curve: (cycles,), labelled increasing.
    """
    for i, value in enumerate(curve):
        if value >= target:
            if i == 0:
                return float(labelled[0])
            x0, x1, y0, y1 = labelled[i - 1], labelled[i], curve[i - 1], curve[i]
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    return None


def _add_cost_to_reach_random(summary: dict) -> None:
    """Per policy: images and boxes labelled (mean curves) to reach random's final mean metric, and the saving.

    A saving of 0.27 is 27 % fewer than random needed; negative: more. What
    random needed is where its own curve first reaches that value: its last
    point, unless the curve dipped at the end.
    """
    random = summary["policies"].get(BASELINE_POLICY)
    if random is None or summary["cycles"] < 2:
        return
    for name, reach in _reach_against(summary, random).items():
        summary["policies"][name]["to_reach_random"] = reach


def _add_cost_to_reach_streams(summary: dict, seeds: dict[str, list]) -> None:
    """Where the results hold random's null streams (`random-null-<k>`, on the same seeds as random): per policy,
    the images and boxes to reach the final of the streams' mean curve, random's own among them.

    Random's draws are one sample: another stream of the same seeds lands some points away (`bench.null`). The
    streams' mean is the better estimate of what a random order buys. `seeds`: each policy's seeds.
    """
    from .null import is_null

    streams = [name for name in summary["policies"] if name == BASELINE_POLICY or is_null(name)]
    if BASELINE_POLICY not in streams or len(streams) < 2 or summary["cycles"] < 2:
        return
    if any(seeds[name] != seeds[BASELINE_POLICY] for name in streams):
        return  # streams over other seeds: their mean would mix seeds, not draws
    rows = [summary["policies"][name] for name in streams]
    keys = ["mean", *(REACH_CURVES[unit] for unit in _reach_units(summary))]
    mean = {key: np.mean([row[key] for row in rows], axis=0).tolist() for key in keys}
    summary["random_streams"] = streams
    for name, reach in _reach_against(summary, mean).items():
        summary["policies"][name]["to_reach_streams"] = reach


def _reach_against(summary: dict, baseline: dict) -> dict[str, dict]:
    """Per policy: what its mean curve labels to reach `baseline`'s final (a row's "mean" and curves), and the saving."""
    target = baseline["mean"][-1]
    units = _reach_units(summary)
    # what the baseline needed to first reach its own final value: its last point, unless its curve dipped at the end
    baseline_cost = {unit: labelled_to_reach(baseline[REACH_CURVES[unit]], baseline["mean"], target) for unit in units}
    reaches = {}
    for name, row in summary["policies"].items():
        reach = {}
        for unit in units:
            needed = labelled_to_reach(row[REACH_CURVES[unit]], row["mean"], target)
            saving = None if needed is None or not baseline_cost[unit] else 1 - needed / baseline_cost[unit]
            reach[unit] = {"needed": needed, "saving": saving}
        reaches[name] = {"target": target, **reach}
    return reaches


def _add_reach_by_seed(summary: dict, curves: dict) -> None:
    """Per policy and seed: the saving against that seed's own random, its final metric as the target.

    The mean curves' saving (`to_reach_random`) can hide how much it varies by
    seed; this keeps each seed's. Savings as in `to_reach_random` (0.27: 27 %
    fewer), None where that seed's run never reaches its random's final.
    `curves`: `run_curves` of every (policy, seed).
    """
    if summary["cycles"] < 2:
        return
    units = _reach_units(summary)
    for name, row in summary["policies"].items():
        seeds = [s for s in summary["seeds"] if (name, s) in curves and (BASELINE_POLICY, s) in curves]
        if name == BASELINE_POLICY or not seeds:
            continue
        by_seed = {"seeds": seeds} | {unit: [] for unit in units}
        for seed in seeds:
            random, mine = curves[(BASELINE_POLICY, seed)], curves[(name, seed)]
            for unit in units:
                needed = labelled_to_reach(mine[unit], mine["metric"], random["metric"][-1])
                # random's own first reach of its final (its last point, unless its curve dipped at the end):
                # a policy is never credited with what random labelled after it had got there
                total = labelled_to_reach(random[unit], random["metric"], random["metric"][-1])
                by_seed[unit].append(None if needed is None or not total else 1 - needed / total)
        row["to_reach_random_by_seed"] = by_seed


def _reach_units(summary: dict) -> tuple[str, ...]:
    """The units of "to reach random's final": images and boxes, the annotation cost under a cost budget, and
    the boxes edited where every run records them."""
    return ("images", "boxes") + (("cost",) if "cost_per_image" in summary else ()) + (("edits",) if summary.get("edits") else ())


def _add_gain_at_same_boxes(summary: dict) -> None:
    """Per policy: its final mean metric minus random's mean curve at the same labelled boxes, in points.

    Random's curve (mean metric against mean boxes labelled) is interpolated
    linearly; None for random itself and where the policy labelled more boxes
    than random ever did (what random would reach there was not measured).
    """
    random = summary["policies"].get(BASELINE_POLICY)
    if random is None:
        return
    boxes, values = random["objects_curve"], random["mean"]
    for name, row in summary["policies"].items():
        spent = row["objects_curve"][-1]
        inside = name != BASELINE_POLICY and boxes[0] <= spent <= boxes[-1]
        row["gain_same_boxes"] = float((row["mean"][-1] - np.interp(spent, boxes, values)) * 100) if inside else None


def _sd(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.std(0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1:])


def markdown_table(summary: dict) -> str:
    """One row per policy, best mean gain first: mAP50 per cycle (mean ± sd over seeds), gains over random.

    Boxes labelled (mean over seeds, after the last cycle) show the cost side:
    policies that favour crowded images buy their gains with more boxes to draw.
    """
    labelled = summary["labelled"]
    has_new = any("new_class_ap50" in row for row in summary["policies"].values())
    # under a cost budget the policies label different numbers of images: the columns are cycles
    cycles = [f"{n} img" for n in labelled] if labelled else [f"cycle {k}" for k in range(summary["cycles"])]
    header = ["policy"] + cycles + ["gain, last (pp)", "gain, mean (pp)", "boxes labelled"]
    header += ["boxes edited"] if summary.get("edits") else []
    header += [] if labelled else ["images labelled"]
    header += ["pp / image", "pp / box"]
    has_same_boxes = any(row.get("gain_same_boxes") is not None for row in summary["policies"].values())
    if has_same_boxes:
        header.append("gain at random's boxes (pp)")
    if has_new:
        header += ["new class AP50", "new-class boxes"]
    has_reach = any("to_reach_random" in row for row in summary["policies"].values())
    reach_units = _reach_units(summary)
    if has_reach:
        header += ["images to random's last", "boxes to random's last"]
        header += [f"cost to random's last (boxes + {summary['cost_per_image']:g}/img)"] if "cost" in reach_units else []
        header += ["edits to random's last"] if "edits" in reach_units else []
    streams = summary.get("random_streams")
    if streams:  # random's own draws and its null streams: the mean curve of them all
        header += [f"{unit} to the {len(streams)} random streams' last" for unit in reach_units]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]

    def order(item):
        gain = item[1].get("gain_mean")
        return -(gain["mean"] if gain else 0.0)

    for name, row in sorted(summary["policies"].items(), key=order):
        # one seed has no spread to show
        spread = len(summary["seeds"]) > 1
        cells = [name] + [f"{m:.3f} ± {s:.3f}" if spread else f"{m:.3f}" for m, s in zip(row["mean"], row["sd"])]
        for key in ("gain_final", "gain_mean"):
            gain = row.get(key)
            cells.append(("—" if not gain else f"{gain['mean']:+.1f} ± {gain['sd']:.1f}" if spread else f"{gain['mean']:+.1f}"))
        cells.append(f"{row['labelled_objects']:.0f}")
        if summary.get("edits"):
            cells.append(f"{row['edited_boxes']:.0f}")
        if not labelled:
            cells.append(f"{row['images_curve'][-1]:.0f}")
        cells += ["—" if row.get(k) is None else f"{row[k]:.2f}" for k in ("gain_per_image", "gain_per_box")]
        if has_same_boxes:
            # "—": random itself, or more boxes than random labelled
            cells.append("—" if row.get("gain_same_boxes") is None else f"{row['gain_same_boxes']:+.1f}")
        if has_new:
            cells += [f"{row.get('new_class_ap50', 0):.3f}", f"{row.get('new_class_objects', 0):.1f}"]
        if has_reach:
            reach = row.get("to_reach_random", {})
            own = name == BASELINE_POLICY  # random's own cost: nothing to compare with
            cells += [_reach_cell(reach.get(unit), own) for unit in reach_units]
        if streams:
            cells += [_reach_cell(row["to_reach_streams"].get(unit)) for unit in reach_units]
        lines.append("| " + " | ".join(cells) + " |")
    by_seed = by_seed_table(summary)
    return "\n".join(lines) + (f"\n\n{by_seed}" if by_seed else "")


def by_seed_table(summary: dict) -> str:
    """Each seed against its own random: the change in images and boxes to reach that random's final.

    Cells: per seed in seed order ('—' where not reached), then mean ± sd over
    the seeds that reach it, and how many do. Only policies compared on two
    seeds or more get a row (one seed has no spread to show); '' when none does.
    """
    rows = {
        name: row["to_reach_random_by_seed"]
        for name, row in summary["policies"].items()
        if len(row.get("to_reach_random_by_seed", {}).get("seeds", ())) > 1
    }
    if not rows:
        return ""
    units = _reach_units(summary)
    header = ["policy"] + [f"{unit} to each seed's random, by seed" for unit in units] + [f"{unit}, mean ± sd" for unit in units]
    header.append("seeds that reach it")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, by_seed in rows.items():
        per_seed = [", ".join("—" if v is None else f"{round(-100 * v):+d}" for v in by_seed[unit]) + " %" for unit in units]
        spread = []
        for unit in units:
            reached = np.array([v for v in by_seed[unit] if v is not None]) * -100
            spread.append(f"{round(reached.mean()):+d} ± {_sd(reached[:, None])[0]:.0f} %" if reached.size else "not reached")
        reaching = sum(v is not None for v in by_seed["images"])
        lines.append("| " + " | ".join([name] + per_seed + spread + [f"{reaching} of {len(by_seed['seeds'])}"]) + " |")
    return "\n".join(lines)


def _reach_cell(reach: dict | None, baseline: bool = False) -> str:
    """'70 (-27 %)': labelled to reach random's final metric, and how many fewer than random needed."""
    if not reach or reach["needed"] is None:
        return "not reached"
    saving = "" if reach["saving"] is None or baseline else f" ({-100 * reach['saving']:+.0f} %)"
    return f"{reach['needed']:.0f}{saving}"


def plot(summary: dict, results: dict, path: str | Path) -> Path:
    """Learning curves as a PNG: mAP50 and, with a new class, its AP50 against labelled images; mAP50 against labelled
    boxes and, where every run records its edits, against the boxes edited."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = summary["policies"]
    panels = [("mAP50 (evaluation set)", METRIC, "images")]
    new_class = results["dataset"].get("new_class")
    if new_class:
        panels.append((f"AP50 of the new class '{new_class}'", "new_class_ap50", "images"))
    panels.append(("mAP50 against the boxes it cost", METRIC, "boxes"))
    if summary.get("edits"):
        panels.append(("mAP50 against the boxes edited (drawn, fixed or removed)", METRIC, "edits"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for axis, (title, key, unit) in zip(axes[0], panels):
        for k, name in enumerate(policies):
            runs = [r for r in results["runs"] if r["policy"] == name]
            cycles = summary["cycles"]
            values = np.array([[c.get(key, 0.0) for c in r["cycles"][:cycles]] for r in runs])
            style = {"color": "black", "linewidth": 2.5, "linestyle": "--"} if name == BASELINE_POLICY else {
                "color": colours[k % len(colours)],
                "linewidth": 1.8 if name.startswith("ale-") else 1.2,
                "linestyle": "-" if name.startswith("ale-") else ":",
            }
            xs = policies[name][REACH_CURVES[unit]]
            axis.plot(xs, values.mean(0), marker="o", markersize=3, label=name, **style)
        per_seed = unit != "images" or summary["labelled"] is None  # the same for every run only for images under an image budget
        axis.set_xlabel(f"labelled {unit}" + (" (mean over seeds)" if per_seed else ""))
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"mean over {len(summary['seeds'])} seed(s)")
    axes[0][0].legend(fontsize=7, loc="upper left", ncol=2)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
