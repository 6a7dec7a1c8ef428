"""What do the detector's image embeddings tell apart: the background, or what the annotator labels?

`+diverse` chooses each batch by k-center over the pooled neck features
(`label_studio_ale.embeddings`), and `+novelty` ranks by the distance to the
labelled set in them. Either can only help if images close in that space hold
similar objects. This measures it on `ale bench al`'s built-in pool (small
preset sizes, cached scenes and base model), with each seed's first model:
the model that chooses the first cycle's batch.

1. Leave-one-out nearest neighbour (cosine) over the unlabelled pool: how often
   an image's nearest neighbour shares its background photograph, its
   new-class presence, and its object count (0, 1, 2, 3+). The baseline, same
   images: the agreement of a random neighbour (sum of the squared shares).
   Lift = (agreement - baseline) / (1 - baseline): 0 is chance, 1 is perfect.
2. The first cycle's batch of ale-entropy-sum and of ale-entropy-sum+diverse
   (the bench's own `select_batch`), and a random batch: images holding the
   new class, new-class boxes, all boxes.

Usage: python benchmarks/embedding_separation.py [--seeds 0,1,2] [--out docs/benchmarks/embedding-separation]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POLICY = "ale-entropy-sum"


def main(argv=None) -> int:
    from label_studio_ale.bench.cli import DEFAULT_CACHE
    from label_studio_ale.bench.first_model import small_preset_data
    from label_studio_ale.bench.runs import RunPool
    from label_studio_ale.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="benchmarks/results/embedding-separation")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.monotonic()
    data, new_class, base = small_preset_data(args.cache, Settings())
    with tempfile.TemporaryDirectory() as work, RunPool(None) as pool:
        futures = [pool.submit(measure_seed, data, new_class, base, seed, Path(work) / f"seed{seed}") for seed in seeds]
        per_seed = [f.result() for f in futures]
    results = {
        "command": " ".join(["python", "benchmarks/embedding_separation.py", *(argv if argv is not None else sys.argv[1:])]),
        "dataset": data.description,
        "policy": POLICY,
        "seeds": per_seed,
        "mean": _mean(per_seed),
        "seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(_table(results))
    print(f"\nwritten: {out / 'results.json'}")
    return 0


def measure_seed(data, new_class: str, base: str, seed: int, work: Path) -> dict:
    """One seed's first model: nearest-neighbour agreement of its embeddings, and its first batches."""
    from label_studio_ale.bench.digits import scene_photo
    from label_studio_ale.bench.first_model import first_model
    from label_studio_ale.bench.simulation import detect_images, select_batch
    from label_studio_ale.predictor import Predictor
    from label_studio_ale.settings import Settings

    first = first_model(data, new_class, base, seed, work, Settings(), policies=(POLICY,))
    settings, config, adapter, unlabeled, metrics = first.settings, first.config, first.adapter, first.unlabeled, first.metrics
    new_index = data.names.index(new_class)
    weighted = []  # the alternative, from the same forward passes
    hook = adapter.model.model[-1].register_forward_hook(lambda module, args, out: weighted.append(score_weighted_embedding(args[0], out[0])))
    detections = detect_images(Predictor(settings.replace(policy=POLICY), adapter, None), data, unlabeled)
    hook.remove()
    embeddings = {
        "spatial mean (served)": np.stack([d.embedding for d in detections]).astype(np.float64),
        "class-score weighted": np.concatenate(weighted).astype(np.float64),
    }

    truths = [data.pool[i].truth for i in unlabeled]
    attributes = {
        "background photograph": np.array([scene_photo(int(i)) for i in unlabeled]),
        "holds the new class": np.array([int(new_index in t.labels) for t in truths]),
        "object count (0, 1, 2, 3+)": np.array([min(len(t.labels), 3) for t in truths]),
    }
    agreement = {}
    for kind, vectors in embeddings.items():
        neighbour = _nearest_neighbour(vectors)
        for name, values in attributes.items():
            observed = float(np.mean(values == values[neighbour]))
            shares = np.bincount(values) / len(values)
            chance = float(np.sum(shares**2))
            agreement[f"{kind}: {name}"] = {"nearest": observed, "random": chance, "lift": (observed - chance) / (1 - chance)}

    batches = {}
    ids = unlabeled + 1
    alternative = [dataclasses.replace(d, embedding=v.astype(np.float32)) for d, v in zip(detections, embeddings["class-score weighted"])]
    for name, pool in ((POLICY, detections), (f"{POLICY}+diverse", detections), (f"{POLICY}+diverse, class-score weighted", alternative), ("random", detections)):
        picked = select_batch(settings, name.split(",")[0], pool, ids, None, adapter.classes, config.budget, seed * 1000 + 1)
        chosen = [truths[p] for p in picked]
        batches[name] = {
            "images_with_new_class": int(sum(new_index in t.labels for t in chosen)),
            "new_class_boxes": int(sum(int(np.sum(t.labels == new_index)) for t in chosen)),
            "boxes": int(sum(len(t.labels) for t in chosen)),
            "background_0_share": float(np.mean([attributes["background photograph"][p] == 0 for p in picked])),
        }
    return {"seed": seed, "first_model_map50": metrics["map50"], "pool_images": len(unlabeled), "agreement": agreement, "batches": batches}


def score_weighted_embedding(maps, head_output) -> np.ndarray:
    """Pooled like `pooled_embedding`, but each location weighted by its top class score (B, 4 + nc, anchors).

    The spatial mean weighs every location alike, so the background photograph
    fills most of it; weighting by the head's class scores pools where it sees objects.
    """
    import torch

    scores = head_output[:, 4:, :].max(dim=1).values  # (B, anchors), P3 then P4 then P5 locations
    parts, start = [], 0
    for m in maps:
        flat = m.float().flatten(2)  # (B, C, H*W)
        w = scores[:, start : start + flat.shape[2]]
        start += flat.shape[2]
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        parts.append(torch.nn.functional.normalize((flat * w[:, None, :]).sum(dim=2), dim=1))
    return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1).cpu().numpy()


def _nearest_neighbour(vectors: np.ndarray) -> np.ndarray:
    """(n, D) -> (n,) index of each row's most cosine-similar other row."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argmax(similarity, axis=1)


def _mean(per_seed: list[dict]) -> dict:
    agreement = {
        name: {k: float(np.mean([s["agreement"][name][k] for s in per_seed])) for k in ("nearest", "random", "lift")}
        for name in per_seed[0]["agreement"]
    }
    batches = {
        name: {k: float(np.mean([s["batches"][name][k] for s in per_seed])) for k in per_seed[0]["batches"][name]}
        for name in per_seed[0]["batches"]
    }
    return {"agreement": agreement, "batches": batches}


def _table(results: dict) -> str:
    mean = results["mean"]
    lines = [
        f"nearest neighbour in the embedding, mean of {len(results['seeds'])} seeds",
        "| attribute | nearest neighbour agrees | random neighbour agrees | lift |",
        "|---|---:|---:|---:|",
    ]
    for name, row in mean["agreement"].items():
        lines.append(f"| {name} | {row['nearest']:.2f} | {row['random']:.2f} | {row['lift']:.2f} |")
    lines += ["", "the first cycle's batch", "| batch | images with the new class | new-class boxes | boxes | on photograph 0 |", "|---|---:|---:|---:|---:|"]
    for name, row in mean["batches"].items():
        lines.append(
            f"| {name} | {row['images_with_new_class']:.1f} | {row['new_class_boxes']:.1f} | {row['boxes']:.1f} | {row['background_0_share']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
