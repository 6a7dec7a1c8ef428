"""Syncs at scale against a real Label Studio 1.23.2 (SQLite): full, incremental and idle, and pool prediction on 1 vs 2 workers.

Part 1, per project size N (default 10,000 and 50,000 tasks): detections are
stored up front (the model does not run: this measures the sync), then three
syncs, each in a fresh process so that its peak memory is its own:
- full: the first sync, which ranks and imports all N;
- idle: the same again with nothing changed;
- incremental: after importing N/100 new tasks (and storing their detections).
Per sync: seconds, writes to LS (predictions created and deleted, project
switches: counted from LS's model-versions before and after), and the
process's peak RSS (and its RSS after imports, before the sync).
Targets: idle 0 writes; incremental <= 10 % of the full sync's seconds; peak
memory growing sublinearly from the smallest to the largest N.

Part 2, pool prediction fanned out: a project of generated 640 px images is
synced through rq with PREDICT_JOB_TASKS small, once with one `ale worker`
and once with two (fresh project, nothing stored); seconds from enqueueing the
sync to the queue being written. Reported as the ratio 1 worker / 2 workers
(this machine has 2 cores, which both runs share).

Part 3, with --clusters K: the full sync of one project of --clusters-tasks
tasks (default 10,000) whose stored detections carry embeddings, once without
LS_CLUSTERS (baseline) and once with LS_CLUSTERS=K, each project fresh. LS's
bulk prediction import drops the `cluster` field, so the clustered sync
creates its predictions one request each: reported as the ratio of the two
syncs' seconds and the clustered import's milliseconds per task.

Part 4, with --novelty-labelled L: a project of --novelty-tasks unlabeled
tasks (default 10,000) and L labelled ones, every detection stored with an
embedding, synced under --novelty-policy (default ale-entropy-sum+novelty):
the full sync, then an incremental one after N/100 new tasks. Novelty
measures the pool against the labelled tasks' embeddings; reported as the
incremental / full seconds (the part 1 target, <= 10 %) and the phases.

Usage: python benchmarks/sync_scale.py [--sizes 10000,50000] [--fanout-images 96] [--clusters 8] [--novelty-labelled 5000]
("--sizes ''" skips part 1, "--fanout-images 0" part 2)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.projects import LABEL_CONFIG  # noqa: E402 (the label config of every test project)
NEW_SHARE = 0.01
INCREMENTAL_TARGET = 0.10
MODEL_VERSION = "bench-model"
#: Dimensions of the embeddings stored for the clusters and novelty parts (the served YOLO embeddings have a few hundred).
EMBEDDING_DIMS = 64
#: The policy of parts 1 and 3 (the backend's default), and of part 4.
DEFAULT_POLICY = "ale-entropy-sum"
NOVELTY_POLICY = "ale-entropy-sum+novelty"


class StoredOnly:
    """The sync finds every detection stored, so it never calls predict."""

    classes = ("bird", "nest")
    version = MODEL_VERSION

    def predict(self, images):
        raise AssertionError("the benchmark stores all detections up front")


def child(args) -> int:
    """One sync in this process: print its result, seconds and peak memory as JSON."""
    from label_studio_ale.jobs import sync_priorities
    from label_studio_ale.memory import peak_rss_mb
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.settings import Settings

    settings = Settings(label_studio_url=args.url, label_studio_api_key=os.environ["ALE_BENCH_TOKEN"], model_dir=Path(args.model_dir),
                        ls_clusters=args.ls_clusters, policy=args.policy)  # fmt: skip
    runtime = Runtime(settings, adapter_factory=StoredOnly)
    runtime.ls.project(args.project)  # the client's first use (imports) is not the sync's cost
    floor = peak_rss_mb()
    started = time.perf_counter()
    result = sync_priorities(args.project, runtime=runtime, progress=lambda *a: None)
    seconds = time.perf_counter() - started
    print(json.dumps({"status": result["status"], "seconds": seconds, "phases": result["phases"], "written": result.get("written"),
                      "peak_rss_mb": peak_rss_mb(), "rss_before_sync_mb": floor}))
    return 0


def store_detections(store, project: int, task_ids: list[int], seed: int, embeddings: bool = False) -> None:
    """Random boxes for every task; with `embeddings`, unit vectors around a few centres as the image embedding."""
    from label_studio_ale.detection_store import StoredDetections
    from label_studio_ale.detections import Detections

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, EMBEDDING_DIMS))
    for start in range(0, len(task_ids), 5_000):
        items = []
        for task_id in task_ids[start : start + 5_000]:
            n = int(rng.poisson(4))
            xy = rng.uniform(0, 500, size=(n, 2))
            boxes = np.hstack([xy, xy + rng.uniform(10, 100, size=(n, 2))])
            embedding = None
            if embeddings:
                vector = centres[rng.integers(len(centres))] + rng.normal(scale=0.5, size=EMBEDDING_DIMS)
                embedding = (vector / np.linalg.norm(vector)).astype(np.float32)
            found = Detections(boxes, rng.beta(0.5, 2, size=(n, 2)), (640, 640), embedding=embedding)
            items.append(StoredDetections(task_id, found, int(rng.integers(0, 2**63)), None))
        store.put_many(project, MODEL_VERSION, items)


def import_tasks(ls, client, project: int, first: int, count: int) -> list[int]:
    """Import `count` tasks (images that are never fetched). -> the ids of every unlabeled task of the project."""
    for start in range(first, first + count, 5_000):
        batch = [{"data": {"image": f"/data/upload/1/{i}.png"}} for i in range(start, min(first + count, start + 5_000))]
        ls.projects.import_tasks(id=project, request=batch)
    return [t.id for t in client.unlabeled_tasks(project)]


def stocked_project(ls, client, model_dir: Path, title: str, n: int, embeddings: bool = False):
    """A new project of `n` tasks whose detections are stored under `model_dir`. -> (store, project id, task ids)."""
    from label_studio_ale.detection_store import SqliteDetectionStore

    store = SqliteDetectionStore(model_dir / "detections.sqlite")
    project = ls.projects.create(title=title, label_config=LABEL_CONFIG).id
    ids = import_tasks(ls, client, project, 0, n)
    store_detections(store, project, ids, seed=n, embeddings=embeddings)
    return store, project, ids


def ls_writes(before: dict[str, int], after: dict[str, int], served_before: str, served_after: str) -> dict:
    created = sum(max(0, after.get(v, 0) - before.get(v, 0)) for v in after)
    deleted = sum(max(0, before.get(v, 0) - after.get(v, 0)) for v in before)
    switches = int(served_before != served_after)
    return {"created": created, "deleted": deleted, "switches": switches, "total": created + deleted + switches}


def run_sync(server, project: int, model_dir: Path, client, ls_clusters: int = 0, policy: str = DEFAULT_POLICY) -> dict:
    before, served_before = client.model_versions(project), client.project(project).model_version
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--url", server.url, "--project", str(project), "--model-dir", str(model_dir),
         "--ls-clusters", str(ls_clusters), "--policy", policy],  # fmt: skip
        env={**os.environ, "ALE_BENCH_TOKEN": server.token},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"sync process failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["writes"] = ls_writes(before, client.model_versions(project), served_before, client.project(project).model_version)
    return result


def clients(server):
    """-> (the SDK client, the backend's LabelStudioClient) of `server`, with a timeout that a 50,000-task import needs."""
    from label_studio_sdk import LabelStudio

    from label_studio_ale.ls_client import LabelStudioClient

    return LabelStudio(base_url=server.url, api_key=server.token, timeout=900), LabelStudioClient(server.url, server.token, timeout=900)


def scale_part(server, sizes: list[int], workdir: Path) -> list[dict]:
    ls, client = clients(server)
    rows = []
    for n in sizes:
        model_dir = workdir / f"models-{n}"
        started = time.perf_counter()
        store, project, ids = stocked_project(ls, client, model_dir, f"sync scale {n}", n)
        print(f"{n:,} tasks imported and their detections stored in {time.perf_counter() - started:.1f}s", flush=True)
        full = run_sync(server, project, model_dir, client)
        print(f"  full: {full['status']} {full['seconds']:.1f}s writes {full['writes']} peak {full['peak_rss_mb']:.0f} MB", flush=True)
        idle = run_sync(server, project, model_dir, client)
        print(f"  idle: {idle['status']} {idle['seconds']:.1f}s writes {idle['writes']} peak {idle['peak_rss_mb']:.0f} MB", flush=True)
        new = max(1, int(n * NEW_SHARE))
        known = set(ids)
        added = [t for t in import_tasks(ls, client, project, n, new) if t not in known]
        store_detections(store, project, added, seed=n + 1)
        incremental = run_sync(server, project, model_dir, client)
        print(f"  incremental (+{len(added)}): {incremental['status']} {incremental['seconds']:.1f}s writes {incremental['writes']} "
              f"peak {incremental['peak_rss_mb']:.0f} MB", flush=True)
        rows.append({"tasks": n, "new_tasks": len(added), "full": full, "idle": idle, "incremental": incremental,
                     "incremental_to_full_seconds": incremental["seconds"] / full["seconds"]})
    return rows


def clusters_part(server, k: int, n: int, workdir: Path) -> dict:
    """The full sync of `n` tasks with embeddings, without LS clusters and with `k`, each on a fresh project."""
    ls, client = clients(server)
    runs = {}
    for clusters in (0, k):
        model_dir = workdir / f"models-clusters-{clusters}"
        _, project, _ = stocked_project(ls, client, model_dir, f"sync clusters {clusters}", n, embeddings=True)
        runs[clusters] = run_sync(server, project, model_dir, client, ls_clusters=clusters)
        served = client.project(project).model_version
        found = [p for p in ls.predictions.list(project=project) if p.model_version == served]
        runs[clusters]["with_cluster"] = sum(1 for p in found if p.cluster is not None)
        r = runs[clusters]
        print(f"  LS_CLUSTERS={clusters}: {r['status']} {r['seconds']:.1f}s writes {r['writes']} peak {r['peak_rss_mb']:.0f} MB", flush=True)
    plain, clustered = runs[0], runs[k]
    return {
        "tasks": n,
        "clusters": k,
        "plain": plain,
        "clustered": clustered,
        "clustered_to_plain_seconds": clustered["seconds"] / plain["seconds"],
        "clustered_import_ms_per_task": 1000 * clustered["phases"]["import"] / n,
        "plain_import_ms_per_task": 1000 * plain["phases"]["import"] / n,
    }


def novelty_part(server, n: int, labelled: int, policy: str, workdir: Path) -> dict:
    """Full and incremental sync under a policy that measures the pool against `labelled` labelled tasks."""
    from label_studio_ale.detection_store import SqliteDetectionStore

    ls, client = clients(server)
    model_dir = workdir / "models-novelty"
    store = SqliteDetectionStore(model_dir / "detections.sqlite")
    project = ls.projects.create(title=f"sync novelty {labelled}", label_config=LABEL_CONFIG).id
    started = time.perf_counter()
    for start in range(0, labelled, 5_000):
        batch = [{"data": {"image": f"/data/upload/1/l{i}.png"}, "annotations": [{"result": []}]} for i in range(start, min(labelled, start + 5_000))]
        ls.projects.import_tasks(id=project, request=batch)
    labelled_ids = [t.id for t in client.labelled_tasks(project)]
    ids = import_tasks(ls, client, project, 0, n)
    store_detections(store, project, labelled_ids + ids, seed=n, embeddings=True)
    print(f"{n:,} tasks and {len(labelled_ids):,} labelled imported, detections stored in {time.perf_counter() - started:.1f}s", flush=True)
    full = run_sync(server, project, model_dir, client, policy=policy)
    print(f"  full: {full['status']} {full['seconds']:.1f}s writes {full['writes']} phases {full['phases']}", flush=True)
    known = set(ids)
    added = [t for t in import_tasks(ls, client, project, n, max(1, int(n * NEW_SHARE))) if t not in known]
    store_detections(store, project, added, seed=n + 1, embeddings=True)
    incremental = run_sync(server, project, model_dir, client, policy=policy)
    print(f"  incremental (+{len(added)}): {incremental['status']} {incremental['seconds']:.1f}s writes {incremental['writes']} "
          f"phases {incremental['phases']}", flush=True)
    return {"tasks": n, "labelled": len(labelled_ids), "new_tasks": len(added), "policy": policy, "embedding_dims": EMBEDDING_DIMS,
            "full": full, "incremental": incremental, "incremental_to_full_seconds": incremental["seconds"] / full["seconds"]}


def fanout_part(server, images: int, per_job: int, workdir: Path) -> dict:
    """1 worker vs 2, with torch's default threads (both workers share this machine's cores), and with one
    thread per worker (each worker stands for a machine of its own with one core)."""
    variants = {"default_threads": _fanout(server, images, per_job, workdir, None), "one_thread_per_worker": _fanout(server, images, per_job, workdir, 1)}
    return {"images": images, "per_job": per_job, "cpu_cores": os.cpu_count(), **variants}


def _fanout(server, images: int, per_job: int, workdir: Path, threads: int | None) -> dict:
    from redis import Redis

    from label_studio_ale.jobqueue import QUEUE_SYNC, RedisJobQueue
    from label_studio_ale.jobs import queued_sync
    from label_studio_ale.synthetic import make_scene
    from tests.support.backend import run_worker
    from tests.support.label_studio import upload_images
    from tests.support.redis_server import start_redis

    ls, _ = clients(server)
    files = []
    for seed in range(images):
        buffer = io.BytesIO()
        make_scene(seed, size=(640, 640), max_objects=8, min_side=20, max_side=60).image.save(buffer, format="PNG")
        files.append((f"f{seed}.png", buffer.getvalue()))
    redis_server = start_redis()
    results = {}
    try:
        for workers in (1, 2):
            project = ls.projects.create(title=f"fan-out {workers} threads {threads}", label_config=LABEL_CONFIG).id
            upload_images(ls, project, files)
            env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.token, "MODEL_DIR": str(workdir / f"fanout-{workers}-{threads}"),
                   "MODEL_WEIGHTS": "yolov5n.yaml", "MODEL_CLASSES": "bird,nest", "REDIS_URL": redis_server.url,
                   "PREDICT_JOB_TASKS": str(per_job), "PREDICT_BATCH_SIZE": "8"}
            if threads is not None:
                env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
            from contextlib import ExitStack

            with ExitStack() as stack:
                for _ in range(workers):
                    stack.enter_context(run_worker(env, workdir, queues="sync,predict"))
                started = time.perf_counter()
                first = _wait(jobs, jobs.enqueue(QUEUE_SYNC, queued_sync, project, retry=True))
                follow = _wait(jobs, first["follow_up"]) if first["status"] == "predicting" else first
                seconds = time.perf_counter() - started
            if follow["status"] != "synced":
                raise RuntimeError(f"the fanned-out sync ended {follow['status']}")
            results[workers] = {"seconds": seconds, "chunks": len(first.get("chunks", []))}
            print(f"fan-out: {images} images, {workers} worker(s), threads {threads or 'default'}: {seconds:.1f}s", flush=True)
    finally:
        redis_server.stop()
    return {"one_worker_seconds": results[1]["seconds"], "two_workers_seconds": results[2]["seconds"], "chunks": results[1]["chunks"],
            "speedup_two_workers": results[1]["seconds"] / results[2]["seconds"]}


def _wait(jobs, job_id: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while (info := jobs.info(job_id)) is None or info.status not in ("finished", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not done")
        time.sleep(0.2)
    if info.status != "finished":
        raise RuntimeError(f"job {job_id} failed: {info.error}")
    return info.result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--fanout-images", type=int, default=96)
    parser.add_argument("--fanout-per-job", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=0, help="also measure a full sync with LS_CLUSTERS=K (0: skip)")
    parser.add_argument("--clusters-tasks", type=int, default=10_000)
    parser.add_argument("--novelty-labelled", type=int, default=0, help="also measure syncs under a novelty policy with L labelled tasks (0: skip)")
    parser.add_argument("--novelty-tasks", type=int, default=10_000)
    parser.add_argument("--novelty-policy", default=NOVELTY_POLICY)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "sync-scale" / "results.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--ls-clusters", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--policy", default=DEFAULT_POLICY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from tests.support.label_studio import start_label_studio

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="ale-bench-scale-"))
    print(f"starting Label Studio in {workdir} ...", flush=True)
    server = start_label_studio(workdir / "ls")
    try:
        os.environ["ALE_BENCH_TOKEN"] = server.token
        scale = scale_part(server, sizes, workdir)
        fanout = fanout_part(server, args.fanout_images, args.fanout_per_job, workdir) if args.fanout_images else None
        clusters = clusters_part(server, args.clusters, args.clusters_tasks, workdir) if args.clusters else None
        novelty = novelty_part(server, args.novelty_tasks, args.novelty_labelled, args.novelty_policy, workdir) if args.novelty_labelled else None
    finally:
        server.stop()

    targets = {}
    if scale:
        small, large = scale[0], scale[-1]
        growth = large["full"]["peak_rss_mb"] / small["full"]["peak_rss_mb"]
        targets = {
            "idle_writes_zero": all(r["idle"]["writes"]["total"] == 0 for r in scale),
            "incremental_at_most_10pct_of_full": all(r["incremental_to_full_seconds"] <= INCREMENTAL_TARGET for r in scale),
            "peak_memory_growth_full": growth,
            "task_growth": large["tasks"] / small["tasks"],
            "peak_memory_sublinear": growth < large["tasks"] / small["tasks"],
        }
    if novelty:
        targets["novelty_incremental_at_most_10pct_of_full"] = novelty["incremental_to_full_seconds"] <= INCREMENTAL_TARGET
    report = {"sizes": sizes, "runs": scale, "fanout": fanout, "clusters": clusters, "novelty": novelty, "targets": targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if scale:
        print(f"\n{'tasks':>8} {'sync':<12} {'status':<10} {'seconds':>8} {'writes':>8} {'peak MB':>8}")
    for row in scale:
        for kind in ("full", "idle", "incremental"):
            r = row[kind]
            print(f"{row['tasks']:>8,} {kind:<12} {r['status']:<10} {r['seconds']:>8.1f} {r['writes']['total']:>8,} {r['peak_rss_mb']:>8.0f}")
        print(f"{'':>8} incremental / full seconds: {row['incremental_to_full_seconds']:.3f} (target <= {INCREMENTAL_TARGET})")
    if scale:
        print(f"peak memory of the full sync x{growth:.2f} for x{report['targets']['task_growth']:.0f} tasks")
    if fanout:
        for name in ("default_threads", "one_thread_per_worker"):
            f = fanout[name]
            print(f"pool prediction, {fanout['images']} images, {name}: 1 worker {f['one_worker_seconds']:.1f}s, "
                  f"2 workers {f['two_workers_seconds']:.1f}s: x{f['speedup_two_workers']:.2f} on {fanout['cpu_cores']} cores")
    if clusters:
        print(f"full sync of {clusters['tasks']:,} tasks: {clusters['plain']['seconds']:.1f}s, with LS_CLUSTERS={clusters['clusters']} "
              f"{clusters['clustered']['seconds']:.1f}s: x{clusters['clustered_to_plain_seconds']:.1f}; import "
              f"{clusters['plain_import_ms_per_task']:.2f} ms per task in bulk, {clusters['clustered_import_ms_per_task']:.2f} ms one request each")
    if novelty:
        print(f"{novelty['policy']}, {novelty['tasks']:,} tasks, {novelty['labelled']:,} labelled: full {novelty['full']['seconds']:.1f}s, "
              f"incremental (+{novelty['new_tasks']}) {novelty['incremental']['seconds']:.1f}s: "
              f"incremental / full seconds {novelty['incremental_to_full_seconds']:.3f} (target <= {INCREMENTAL_TARGET})")
    print(f"({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
