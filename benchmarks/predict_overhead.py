"""Per-image predict time of the backend versus plain ultralytics, same images, same model.

backend  = Predictor.detect (adapter: letterbox, forward, NMS keeping class
           vectors; then threshold, NMS, tag limit) + conversion to LS results
baseline = YOLO(weights).predict(images, imgsz, conf) - ultralytics' own path

Both run on decoded in-memory images in batches of the same size, interleaved,
after a warm-up; the ratio of medians is reported. A third row times the full
HTTP /predict (images fetched from a loopback server) for context.

Usage: python benchmarks/predict_overhead.py [--images 24] [--size 640x480] [--repeats 5] [--weights W.pt]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_RATIO = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="640x480", help="image width x height")
    parser.add_argument("--imgsz", type=int, default=640, help="model input size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--weights", help=".pt to use; default: a yolov5n built from yaml, saved once")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_overhead.json"))
    args = parser.parse_args()

    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ale-bench-yolo-"))
    from label_studio_ale_plugins.yolov5 import YoloV5Adapter
    from label_studio_ale_plugins.yolov5.offline import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    from label_studio_ale.app import create_app
    from label_studio_ale.ls_format import detections_to_results, match_labels, parse_label_config
    from label_studio_ale.predictor import Predictor
    from label_studio_ale.settings import Settings
    from label_studio_ale.synthetic import make_scene
    from tests.support.http import serve_files

    width, height = (int(v) for v in args.size.lower().split("x"))
    weights = args.weights or _untrained_checkpoint()
    images = [make_scene(seed, size=(width, height), max_objects=5, max_side=80).image for seed in range(args.images)]

    settings = Settings(image_size=args.imgsz, predict_batch_size=args.batch, score_threshold=args.conf, allowed_media_hosts=("127.0.0.1",))
    adapter = YoloV5Adapter.from_settings(settings.replace(model_weights=str(weights)))
    predictor = Predictor(settings, adapter, fetcher=None)
    config_xml = _label_config(adapter.classes)
    config = parse_label_config(config_xml)
    label_map = match_labels(adapter.classes, config)
    baseline_model = YOLO(str(weights))

    def backend():
        for detections in predictor.detect(images):
            detections_to_results(detections, label_map, config)

    def baseline():
        for start in range(0, len(images), args.batch):
            baseline_model.predict(images[start : start + args.batch], imgsz=args.imgsz, conf=args.conf, verbose=False)

    pngs = {}
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs[f"/{index}.png"] = buffer.getvalue()

    with serve_files(pngs) as base:
        client = create_app(settings, adapter_factory=lambda: adapter).test_client()
        tasks = [{"id": i, "data": {"image": f"{base}/{i}.png"}} for i in range(len(images))]

        def http_predict():
            response = client.post("/predict", json={"tasks": tasks, "label_config": config_xml})
            if response.status_code != 200:
                raise RuntimeError(response.get_data(as_text=True))

        runs = {"backend": backend, "baseline": baseline, "http": http_predict}
        for run in runs.values():  # warm-up: first-call allocations, lazy imports
            run()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) / len(images))

    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["backend"] / median["baseline"]
    report = {
        "images": len(images),
        "image_size": [width, height],
        "imgsz": args.imgsz,
        "batch": args.batch,
        "repeats": args.repeats,
        "weights": str(weights),
        "per_image_seconds": median,
        "all_runs": times,
        "ratio_backend_over_baseline": ratio,
        "ratio_http_over_baseline": median["http"] / median["baseline"],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{len(images)} images {width}x{height}, imgsz {args.imgsz}, batch {args.batch}, median of {args.repeats}")
    print(f"{'path':<34}{'ms/image':>10}{'ratio':>8}")
    print(f"{'ultralytics YOLO.predict':<34}{median['baseline'] * 1000:>10.1f}{1.0:>8.2f}")
    print(f"{'backend detect + LS results':<34}{median['backend'] * 1000:>10.1f}{ratio:>8.2f}")
    print(f"{'HTTP /predict incl. image fetch':<34}{median['http'] * 1000:>10.1f}{report['ratio_http_over_baseline']:>8.2f}")
    print(f"target: backend/baseline <= {TARGET_RATIO}: {'met' if report['meets_target'] else 'NOT met'}  ({out})")
    return 0


def _untrained_checkpoint() -> Path:
    """yolov5n with random weights, saved as a .pt both paths can load (speed does not depend on training)."""
    from ultralytics import YOLO

    path = Path(tempfile.mkdtemp(prefix="ale-bench-")) / "yolov5n-random.pt"
    YOLO("yolov5n.yaml").save(str(path))
    return path


def _label_config(classes) -> str:
    labels = "".join(f'<Label value="{name}"/>' for name in classes)
    return f'<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">{labels}</RectangleLabels></View>'


if __name__ == "__main__":
    sys.exit(main())
