"""How many distinct scenes each policy's batches hold, in an `ale bench al --burst K` run.

A burst pool lists each scene's K frames one after another (`0000.png` ..),
so a picked image's scene is its index // K. Per policy, mean over seeds, each
cycle's batch: the scenes it holds, and how many of its images are frames
of a scene labelled in an earlier cycle (the initial set included).

    .venv/bin/python benchmarks/burst_picks.py docs/benchmarks/al-small-bursts/results.json

Prints a markdown table and writes it beside the results as `burst_picks.md`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def burst_of(results: dict) -> int:
    """K of the run's pool: the dataset's `burst`, or for a run recorded before it, its description."""
    dataset = results["dataset"]
    if "burst" in dataset:
        burst = int(dataset["burst"])
    else:
        found = re.search(r"bursts of (\d+) frames", dataset.get("description", ""))
        burst = int(found.group(1)) if found else 1
    if burst < 2:
        raise ValueError("this results.json is not a --burst run: its pool holds one frame a scene")
    return burst


def batch_scenes(results: dict, burst: int) -> dict[str, list[list[tuple[int, int, int]]]]:
    """policy -> per seed, per cycle after the first model: (images, distinct scenes, frames of scenes labelled before)."""
    out = defaultdict(list)
    for run in results["runs"]:
        if any("picked" not in cycle for cycle in run["cycles"]):
            raise ValueError("this results.json does not name the images each cycle labelled (`picked`): rerun it")
        seen = {_scene(name, burst) for name in run["cycles"][0]["picked"]}
        rows = []
        for cycle in run["cycles"][1:]:
            scenes = [_scene(name, burst) for name in cycle["picked"]]
            rows.append((len(scenes), len(set(scenes)), sum(scene in seen for scene in scenes)))
            seen |= set(scenes)
        out[run["policy"]].append(rows)
    return dict(out)


def markdown(per_policy: dict, burst: int) -> str:
    cycles = max(len(rows) for runs in per_policy.values() for rows in runs)
    head = "| policy | " + " | ".join(f"cycle {c + 1}: scenes / images" for c in range(cycles)) + " | frames of scenes labelled before, all cycles |"
    lines = [head, "|---|" + "---:|" * (cycles + 1)]
    for policy, runs in per_policy.items():
        table = np.array(runs, dtype=float)  # (seeds, cycles, 3)
        cells = [f"{table[:, c, 1].mean():.1f} / {table[:, c, 0].mean():.0f}" for c in range(table.shape[1])]
        lines.append(f"| {policy} | " + " | ".join(cells) + f" | {table[:, :, 2].sum(axis=1).mean():.1f} |")
    note = f"\nMean over {len(next(iter(per_policy.values())))} seeds; a scene is {burst} consecutive pool images."
    return "\n".join(lines) + note


def _scene(name: str, burst: int) -> int:
    return int(Path(name).stem) // burst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json of an `ale bench al --burst K` run")
    args = parser.parse_args(argv)
    path = Path(args.results)
    results = json.loads(path.read_text())
    burst = burst_of(results)
    table = markdown(batch_scenes(results, burst), burst)
    (path.parent / "burst_picks.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
