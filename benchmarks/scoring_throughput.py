"""Scoring throughput of the selection policies, in boxes per second.

Baseline, same run, same boxes: one bare numpy entropy pass over the raw score
matrix (-sum p log p per row), the least any entropy policy must do. Target:
ALE entropy-sum >= 1,000,000 boxes/s.

Usage: python benchmarks/scoring_throughput.py [--images 20000] [--boxes-per-image 10] [--classes 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_BOXES_PER_SECOND = 1_000_000


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--boxes-per-image", type=int, default=10, help="mean; counts are Poisson, zeros included")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scoring_throughput.json"))
    args = parser.parse_args()

    from label_studio_ale.detections import Detections
    from label_studio_ale.policies import get_policy

    rng = np.random.default_rng(0)
    counts = rng.poisson(args.boxes_per_image, size=args.images)
    total = int(counts.sum())
    probs = rng.beta(0.5, 2.0, size=(total, args.classes))
    boxes = np.tile([0.0, 0.0, 10.0, 10.0], (total, 1))
    starts = np.concatenate([[0], np.cumsum(counts)])
    images = [Detections(boxes[a:b], probs[a:b], (64, 64)) for a, b in zip(starts[:-1], starts[1:])]

    def baseline():
        p = probs / probs.sum(axis=1, keepdims=True)
        return -(p * np.log(p)).sum(axis=1)

    rows = {"numpy entropy pass (baseline)": best_of(baseline, args.repeats)}
    for name in ("ale-entropy-sum", "ale-lc-max", "entropy-sum"):
        policy = get_policy(name)
        rows[f"{name} (arrays)"] = best_of(lambda: policy.usefulness_arrays(probs, counts), args.repeats)
    policy = get_policy("ale-entropy-sum")
    rows["ale-entropy-sum (list of Detections)"] = best_of(lambda: policy.usefulness(images), args.repeats)
    rows["min-confidence (list of Detections)"] = best_of(lambda: get_policy("min-confidence").usefulness(images), args.repeats)

    base = rows["numpy entropy pass (baseline)"]
    ale_rate = total / rows["ale-entropy-sum (arrays)"]
    report = {
        "images": args.images,
        "boxes": total,
        "classes": args.classes,
        "seconds": rows,
        "boxes_per_second": {k: total / v for k, v in rows.items()},
        "ratio_to_baseline": {k: v / base for k, v in rows.items()},
        "target_boxes_per_second": TARGET_BOXES_PER_SECOND,
        "meets_target": ale_rate >= TARGET_BOXES_PER_SECOND,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{total:,} boxes on {args.images:,} images, {args.classes} classes, best of {args.repeats}")
    print(f"{'path':<40}{'boxes/s':>14}{'x baseline time':>17}")
    for name, seconds in rows.items():
        print(f"{name:<40}{total / seconds:>14,.0f}{seconds / base:>17.2f}")
    verdict = "met" if report["meets_target"] else "NOT met"
    print(f"target: ale-entropy-sum >= {TARGET_BOXES_PER_SECOND:,} boxes/s: {verdict}  ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
