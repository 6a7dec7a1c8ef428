"""Drone frames: memory of a priority sync over 45 MP frames, and the cost of sliced inference.

Generates 45 MP frames (8,200 x 5,500, JPEG) with small birds, uploads them to
a real Label Studio 1.23.2, and runs one full priority sync (fetch, tiled
prediction, ranking, import) over 10 and then 20 of them, each in a fresh
process whose peak resident memory (VmHWM) is read when it ends.

Baselines, same run: the peak memory of a process that only loads the same
model (the floor every sync pays), and untiled inference of the same frame
with the same model (seconds per megapixel; it finds nothing at this scale).

Targets: the peak of the 20-frame sync stays under BOUND_MB, and does not grow
from 10 to 20 frames by more than GROWTH_LIMIT (prediction holds at most
PREDICT_CHUNK_PIXELS decoded pixels plus the frames being fetched).

Usage: python benchmarks/large_frames.py [--frames 10 20] [--weights best.pt]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAME = (8200, 5500)  # 45.1 MP
OBJECTS = 80
#: The tiny detector is trained at 128 px; tiles are the model input.
IMAGE_SIZE = 128
BOUND_MB = 2500
GROWTH_LIMIT = 1.10
from tests.support.projects import LABEL_CONFIG  # noqa: E402 (the label config of every test project)


def child(args) -> None:
    """One measurement in this fresh process, set up as `ale worker` sets up its own; prints one JSON line."""
    from label_studio_ale.memory import peak_rss_mb, return_large_buffers_to_os
    from label_studio_ale.settings import Settings

    return_large_buffers_to_os()

    settings = Settings(
        label_studio_url=args.ls_url,
        label_studio_api_key=args.token,
        model_dir=Path(args.model_dir),
        model_weights=args.weights,
        image_size=IMAGE_SIZE,
        predict_batch_size=32,
    )
    if args.child == "floor":
        from label_studio_ale.adapters import load_adapter

        adapter = load_adapter(settings)
        adapter.predict([__import__("PIL.Image", fromlist=["Image"]).new("RGB", (IMAGE_SIZE, IMAGE_SIZE))])
        print(json.dumps({"peak_mb": peak_rss_mb()}))
        return
    if args.child == "speed":
        from PIL import Image

        from label_studio_ale.adapters import load_adapter

        with Image.open(args.frame) as opened:
            image = opened.convert("RGB")
        megapixels = image.width * image.height / 1e6
        out = {}
        for name, tile_above in (("tiled", settings.tile_above), ("untiled", 0)):
            adapter = load_adapter(settings.replace(tile_above=tile_above))
            adapter.predict([image])  # warm-up
            started = time.perf_counter()
            found = adapter.predict([image])[0]
            seconds = time.perf_counter() - started
            out[name] = {"seconds": seconds, "seconds_per_megapixel": seconds / megapixels, "boxes": int((found.scores >= 0.25).sum())}
        print(json.dumps(out))
        return
    from label_studio_ale.jobs import sync_priorities
    from label_studio_ale.runtime import Runtime

    started = time.perf_counter()
    result = sync_priorities(int(args.child), runtime=Runtime(settings), progress=lambda *a: None)
    print(json.dumps({
        "peak_mb": peak_rss_mb(),
        "seconds": time.perf_counter() - started,
        "status": result["status"],
        "tasks": result["tasks"],
        "failed": result["predicted"]["failed"],
        "phases": result["phases"],
    }))


def run_child(args, what: str, **extra) -> dict:
    command = [sys.executable, __file__, "--child", what, "--ls-url", args.ls_url, "--token", args.token,
               "--model-dir", args.model_dir, "--weights", args.weights]
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--weights", default="", help="a bird/nest checkpoint at 128 px (default: train the tests' tiny detector)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "large-frames" / "results.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ls-url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--frame", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    from label_studio_sdk import LabelStudio

    from label_studio_ale.ls_client import upload_images
    from label_studio_ale.synthetic import make_large_scene
    from tests.support.label_studio import start_label_studio

    workdir = Path(tempfile.mkdtemp(prefix="ale-bench-frames-"))
    if not args.weights:
        from tests.support.models import train_tiny_detector

        print("training the tiny bird detector ...", flush=True)
        args.weights = str(train_tiny_detector(workdir / "tiny"))
    frames = []
    for i in range(max(args.frames)):
        path = workdir / f"frame{i:02d}.jpg"
        scene = make_large_scene(100 + i, size=FRAME, objects=OBJECTS)
        scene.image.save(path, format="JPEG", quality=90)
        frames.append(path)
        print(f"frame {i + 1}/{max(args.frames)}: {path.stat().st_size / 1e6:.1f} MB", flush=True)
    print(f"starting Label Studio in {workdir} ...", flush=True)
    server = start_label_studio(workdir / "ls")
    args.ls_url, args.token, args.model_dir = server.url, server.token, str(workdir / "models")
    try:
        ls = LabelStudio(base_url=server.url, api_key=server.token, timeout=600)
        floor = run_child(args, "floor")
        speed = run_child(args, "speed", frame=frames[0])
        print(f"model floor {floor['peak_mb']:.0f} MB; tiled {speed['tiled']['seconds_per_megapixel']:.3f} s/MP, "
              f"untiled {speed['untiled']['seconds_per_megapixel']:.4f} s/MP", flush=True)
        syncs = []
        for count in args.frames:
            project = ls.projects.create(title=f"{count} drone frames", label_config=LABEL_CONFIG).id
            for path in frames[:count]:
                upload_images(ls, project, [(path.name, path.read_bytes())])
            measured = run_child(args, str(project))
            measured["frames"] = count
            syncs.append(measured)
            print(f"{count} frames: peak {measured['peak_mb']:.0f} MB, {measured['seconds']:.0f} s, {measured}", flush=True)
    finally:
        server.stop()

    largest, smallest = syncs[-1], syncs[0]
    growth = largest["peak_mb"] / smallest["peak_mb"]
    decoded_mb = FRAME[0] * FRAME[1] * 3 / 2**20
    report = {
        "frame": {"size": FRAME, "megapixels": FRAME[0] * FRAME[1] / 1e6, "objects": OBJECTS, "decoded_mb": decoded_mb},
        "image_size": IMAGE_SIZE,
        "model_floor_peak_mb": floor["peak_mb"],
        "syncs": syncs,
        "peak_growth": growth,
        "all_frames_decoded_mb": decoded_mb * largest["frames"],
        "speed": speed,
        "tiled_over_untiled_seconds_per_megapixel": speed["tiled"]["seconds_per_megapixel"] / speed["untiled"]["seconds_per_megapixel"],
        "targets": {"bound_mb": BOUND_MB, "growth_limit": GROWTH_LIMIT},
        "meets_targets": largest["peak_mb"] <= BOUND_MB and growth <= GROWTH_LIMIT,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'frames':>7}{'peak MB':>9}{'seconds':>9}{'failed':>8}")
    for run in syncs:
        print(f"{run['frames']:>7}{run['peak_mb']:>9.0f}{run['seconds']:>9.0f}{run['failed']:>8}")
    print(f"model floor {floor['peak_mb']:.0f} MB; {largest['frames']} frames decoded at once would be {decoded_mb * largest['frames']:.0f} MB")
    print(f"peak growth {smallest['frames']} -> {largest['frames']} frames: x{growth:.2f} (limit x{GROWTH_LIMIT})")
    print(f"sliced inference {speed['tiled']['seconds_per_megapixel']:.3f} s/MP ({speed['tiled']['boxes']} birds of {OBJECTS}), "
          f"untiled {speed['untiled']['seconds_per_megapixel']:.4f} s/MP ({speed['untiled']['boxes']} birds): "
          f"x{report['tiled_over_untiled_seconds_per_megapixel']:.0f}")
    verdict = "met" if report["meets_targets"] else "NOT met"
    print(f"targets: peak <= {BOUND_MB} MB and growth <= x{GROWTH_LIMIT}: {verdict}  ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
