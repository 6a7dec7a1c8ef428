"""Where a class new to the model hides in its first model's predictions, and what that does to `+rare`.

`+rare` weights each box by how rare its class is in the pool's predictions
(`scoring.class_rarity`). A class the first model has never been trained on
gets next to no score, so its objects are boxed, if at all, as old classes.
This measures it on `ale bench al`'s built-in pool (small preset sizes,
cached scenes and base model), with each seed's first model: the model that
chooses the first cycle's batch.

1. The pool's predicted class shares and the rarity `+rare` gives each class.
2. Every ground-truth object of the unlabelled pool by the class of the
   predicted box that covers it (IoU >= 0.5, the best such box) or missed.
3. The first cycle's batch of each policy (the bench's own `select_batch`):
   new-class boxes and all boxes.

Usage: python benchmarks/first_batch_classes.py [--seeds 0,1,2,3,4,5] [--policies entropy-mean,entropy-mean+rare]
       [--out docs/benchmarks/first-batch-classes]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: A predicted box covers an object at this IoU or more (the mAP50 criterion).
MATCH_IOU = 0.5


def main(argv=None) -> int:
    from label_studio_ale.bench.cli import DEFAULT_CACHE
    from label_studio_ale.bench.first_model import small_preset_data
    from label_studio_ale.bench.runs import RunPool
    from label_studio_ale.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--policies", default="entropy-mean,entropy-mean+rare")
    parser.add_argument("--out", default="benchmarks/results/first-batch-classes")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    started = time.monotonic()
    data, new_class, base = small_preset_data(args.cache, Settings.from_env())
    with tempfile.TemporaryDirectory() as work, RunPool(None) as pool:
        futures = [pool.submit(measure_seed, data, new_class, base, policies, seed, Path(work) / f"seed{seed}") for seed in seeds]
        per_seed = [f.result() for f in futures]
    results = {
        "command": " ".join(["python", "benchmarks/first_batch_classes.py", *(argv if argv is not None else sys.argv[1:])]),
        "dataset": data.description,
        "classes": data.names,
        "new_class": new_class,
        "seeds": per_seed,
        "seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"\nwritten: {out / 'results.json'}, {out / 'table.md'}")
    return 0


def measure_seed(data, new_class: str, base: str, policies: list[str], seed: int, work: Path) -> dict:
    """One seed's first model: the pool's class shares and rarity, where each class's objects are boxed, the first batches."""
    from label_studio_ale.bench.first_model import first_model
    from label_studio_ale.bench.simulation import detect_images, pool_hashes, select_batch
    from label_studio_ale.predictor import Predictor
    from label_studio_ale.scoring import class_rarity, class_shares
    from label_studio_ale.settings import Settings

    first = first_model(data, new_class, base, seed, work, Settings.from_env(), policies)
    settings, config, adapter, unlabeled, metrics = first.settings, first.config, first.adapter, first.unlabeled, first.metrics
    new_index = data.names.index(new_class)
    detections = detect_images(Predictor(settings.replace(policy=policies[0]), adapter, None), data, unlabeled)
    truths = [data.pool[i].truth for i in unlabeled]
    probs = np.concatenate([d.class_probs for d in detections if len(d)])
    hashes = pool_hashes(settings, data.pool)
    batches = {}
    for name in policies:
        # as the bench's first cycle: task ids are pool index + 1, the seed of cycle 1 is seed x 1000 + 1
        picked = select_batch(settings, name, detections, unlabeled + 1, [hashes[i] for i in unlabeled] if hashes else None,
                              adapter.classes, config.budget, seed * 1000 + 1)  # fmt: skip
        chosen = [truths[p] for p in picked]
        batches[name] = {
            "images": sorted(data.pool[unlabeled[p]].path.name for p in picked),
            "new_class_boxes": int(sum(int(np.sum(t.labels == new_index)) for t in chosen)),
            "boxes": int(sum(len(t.labels) for t in chosen)),
        }
    return {
        "seed": seed,
        "first_model_map50": metrics["map50"],
        "pool_images": len(unlabeled),
        "predicted_boxes": len(probs),
        "class_shares": class_shares(probs).tolist(),
        "rarity": class_rarity(probs).tolist(),
        "highest_new_class_score": float(probs[:, new_index].max()) if len(probs) else 0.0,
        "objects_boxed_as": boxed_as(truths, detections, len(data.names)).tolist(),
        "first_batch": batches,
    }


def boxed_as(truths, detections, classes: int) -> np.ndarray:
    """Ground truth and detections per image -> (C, C + 1) objects of each true class by the class of the predicted box
    covering it best (IoU >= MATCH_IOU), the last column: no box covers it."""
    from label_studio_ale.boxes import box_iou

    counts = np.zeros((classes, classes + 1), dtype=np.int64)
    for truth, found in zip(truths, detections):
        if len(truth.labels) == 0:
            continue
        boxed_class = np.full(len(truth.labels), classes)  # missed unless a box covers it
        if len(found):
            iou = box_iou(np.asarray(truth.xyxy, dtype=np.float64), found.xyxy)  # (objects, boxes)
            best = iou.argmax(axis=1)
            covered = iou[np.arange(len(best)), best] >= MATCH_IOU
            boxed_class[covered] = found.labels[best[covered]]
        np.add.at(counts, (truth.labels, boxed_class), 1)
    return counts


def markdown(results: dict) -> str:
    names, new_class = results["classes"], results["new_class"]
    new = names.index(new_class)
    policies = list(results["seeds"][0]["first_batch"])
    head = (
        "| seed | first model mAP50 | predicted share: " + ", ".join(names) + " | rarity (`+rare`) | "
        f"{new_class} objects boxed as: " + ", ".join(names) + ", missed | "
        + " | ".join(f"{p}: first batch {new_class} boxes / boxes" for p in policies) + " |"
    )
    lines = [head, "|---|---:|---|---|---|" + "---:|" * len(policies)]
    for s in results["seeds"]:
        shares = ", ".join(f"{v:.2f}" for v in s["class_shares"])
        rarity = ", ".join(f"{v:.2f}" for v in s["rarity"])
        boxed = ", ".join(str(v) for v in s["objects_boxed_as"][new])
        batches = " | ".join(f"{s['first_batch'][p]['new_class_boxes']} / {s['first_batch'][p]['boxes']}" for p in policies)
        lines.append(f"| {s['seed']} | {s['first_model_map50']:.3f} | {shares} | {rarity} | {boxed} | {batches} |")
    highest = max(s["highest_new_class_score"] for s in results["seeds"])
    lines += ["", f"The first models' highest {new_class} score on any pool box: {highest:.2e}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
