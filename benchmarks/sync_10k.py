"""End-to-end priority sync of a large project against a real Label Studio 1.23.2 (SQLite).

Starts LS from the test support (its own cached venv), imports N tasks, stores
pool detections for them (so the model does not run: this measures the sync),
then times two syncs per phase: list, predict (nothing missing), score, import,
switch, cleanup. The second sync also deletes the first one's N predictions.

Baseline, same run, same LS: one bare `import_predictions` of N ready-made
items in chunks of the same size - the floor any sync pays. Target: a sync of
10,000 tasks <= 60 s on a 2-core machine, from start to the
switched queue (list + predict + score + import + switch). Deleting the
previous version's predictions runs after the switch, outside the project
lock, and is reported separately ("cleanup"): LS deletes them one by one.

Usage: python benchmarks/sync_10k.py [--tasks 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_SECONDS = 60.0
from tests.support.projects import LABEL_CONFIG  # noqa: E402 (the label config of every test project)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="predictions per import request")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sync_10k.json"))
    args = parser.parse_args()

    from label_studio_sdk import LabelStudio

    from label_studio_ale.detection_store import StoredDetections
    from label_studio_ale.detections import Detections
    from label_studio_ale.jobs import sync_priorities
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.settings import Settings
    from tests.support.label_studio import start_label_studio

    workdir = Path(tempfile.mkdtemp(prefix="ale-bench-sync-"))
    print(f"starting Label Studio in {workdir} ...", flush=True)
    server = start_label_studio(workdir / "ls")
    try:
        ls = LabelStudio(base_url=server.url, api_key=server.token, timeout=600)
        project = ls.projects.create(title="sync benchmark", label_config=LABEL_CONFIG).id
        started = time.perf_counter()
        for start in range(0, args.tasks, 5_000):
            batch = [{"data": {"image": f"/data/upload/1/{i}.png"}} for i in range(start, min(args.tasks, start + 5_000))]
            ls.projects.import_tasks(id=project, request=batch)
        print(f"imported {args.tasks} tasks in {time.perf_counter() - started:.1f}s", flush=True)

        class StoredOnly:
            """The sync finds every detection stored, so it never calls predict."""

            classes = ("bird", "nest")
            version = "bench-model"

            def predict(self, images):
                raise AssertionError("the benchmark stores all detections up front")

        settings = Settings(
            label_studio_url=server.url,
            label_studio_api_key=server.token,
            model_dir=workdir / "models",
            import_chunk_size=args.chunk,
        )
        runtime = Runtime(settings, adapter_factory=StoredOnly)
        task_ids = [t.id for t in runtime.ls.unlabeled_tasks(project)]
        rng = np.random.default_rng(0)
        items = []
        for task_id in task_ids:
            n = int(rng.poisson(4))
            xy = rng.uniform(0, 500, size=(n, 2))
            boxes = np.hstack([xy, xy + rng.uniform(10, 100, size=(n, 2))])
            items.append(StoredDetections(task_id, Detections(boxes, rng.beta(0.5, 2, size=(n, 2)), (640, 640)), int(rng.integers(0, 2**63)), None))
        runtime.store.put_many(project, StoredOnly.version, items)

        # Baseline: the same number of predictions, imported bare.
        plain = [{"task": t, "result": [], "score": 0.5, "model_version": "baseline"} for t in task_ids]
        started = time.perf_counter()
        for start in range(0, len(plain), args.chunk):
            runtime.ls.import_predictions(project, plain[start : start + args.chunk])
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        runtime.ls.delete_model_version(project, "baseline")
        delete_seconds = time.perf_counter() - started
        print(f"baseline: bare import {baseline:.1f}s, LS deleting those predictions {delete_seconds:.1f}s", flush=True)

        runs = []
        for label in ("first sync", "second sync (replaces the first)"):
            started = time.perf_counter()
            # full: nothing changed, so only a forced full sync rewrites (see sync_scale.py for the other kinds)
            result = sync_priorities(project, runtime=runtime, progress=lambda *a: None, full=True)
            total = time.perf_counter() - started
            ready = total - result["phases"]["cleanup"]
            runs.append({"label": label, "total": total, "queue_ready": ready, "phases": result["phases"], "tasks": result["tasks"]})
            print(f"{label}: queue switched after {ready:.1f}s, {total:.1f}s with cleanup {result['phases']}", flush=True)
    finally:
        server.stop()

    worst = max(r["queue_ready"] for r in runs)
    report = {
        "tasks": args.tasks,
        "chunk": args.chunk,
        "baseline_import_seconds": baseline,
        "ls_delete_version_seconds": delete_seconds,
        "syncs": runs,
        "ratio_worst_queue_ready_to_baseline": worst / baseline,
        "target_seconds": TARGET_SECONDS,
        "meets_target": worst <= TARGET_SECONDS,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    phases = list(runs[0]["phases"])
    print(f"\n{args.tasks:,} tasks, imports of {args.chunk}; baseline bare import {baseline:.1f}s")
    print(f"{'run':<34}" + "".join(f"{p:>9}" for p in phases) + f"{'ready':>9}{'x base':>8}")
    for run in runs:
        cells = "".join(f"{run['phases'][p]:>9.2f}" for p in phases)
        print(f"{run['label']:<34}{cells}{run['queue_ready']:>9.1f}{run['queue_ready'] / baseline:>8.2f}")
    verdict = "met" if report["meets_target"] else "NOT met"
    print(f"target: {args.tasks:,} tasks ranked and switched in <= {TARGET_SECONDS:.0f}s: {verdict}  ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
