"""Concurrent /predict against a real `ale serve` (gunicorn) on loopback: throughput, p50/p95 latency, errors.

Images come from a loopback HTTP server (an allowed media host), one task per
request, as Label Studio sends them when annotators open tasks. The baseline is
the same server answering the same requests one at a time, in the same run;
the report gives the concurrent run's throughput as a ratio of it. Requests
and time are bounded (--requests, --time-limit); nothing leaves 127.0.0.1.

Usage: python benchmarks/predict_load.py [--requests 200] [--concurrency 8] [--threads 4] [--weights W.pt]
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.projects import LABEL_CONFIG  # noqa: E402 (the label config of every test project)
#: The concurrent run must serve at least the serial run's throughput.
TARGET_RATIO = 1.0


def serve_images(count: int, size: tuple[int, int]) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Generated scenes as PNGs on a loopback HTTP server. -> (base URL, server)."""
    from label_studio_ale.synthetic import make_scene

    files = {}
    for i in range(count):
        buffer = io.BytesIO()
        make_scene(90_000 + i, size=size, max_objects=4).image.save(buffer, format="PNG")
        files[f"/img{i}.png"] = buffer.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def run_load(url: str, images: list[str], requests: int, concurrency: int, time_limit: float, auth=None) -> dict:
    """POST /predict `requests` times (one image each), `concurrency` at a time, stopping at `time_limit` seconds."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        payload = {"tasks": [{"id": i, "data": {"image": images[i % len(images)]}}], "label_config": LABEL_CONFIG}
        started = time.perf_counter()
        try:
            response = httpx.post(f"{url}/predict", json=payload, auth=auth, timeout=120)
            problem = None if response.status_code == 200 and not response.json()["errors"] else f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            if problem:
                errors.append(problem)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "concurrency": concurrency,
        "seconds": wall,
        "throughput_rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else None,
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else None,
        "errors": len(errors),
        "error_samples": errors[:5],
    }


def start_backend(env: dict, port: int, threads: int, log: Path) -> subprocess.Popen:
    from label_studio_ale.label_studio_server import wait_for_http

    process = subprocess.Popen(
        [sys.executable, "-m", "label_studio_ale.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads)],
        env={k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "REDIS_"))} | env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_http(f"http://127.0.0.1:{port}/health", 120, process, log)
    return process


def benchmark(weights: str, requests: int, concurrency: int, threads: int, time_limit: float, image_size: int, size: tuple[int, int], workdir: Path) -> dict:
    """Serial baseline then the concurrent run, against one `ale serve`. -> the report."""
    import httpx

    from label_studio_ale.label_studio_server import free_port, stop_process

    base, image_server = serve_images(16, size)
    env = {
        "MODEL_WEIGHTS": weights,
        "MODEL_CLASSES": "" if weights.endswith(".pt") else "bird,nest",
        "IMAGE_SIZE": str(image_size),
        "ALLOWED_MEDIA_HOSTS": "127.0.0.1",
        "MODEL_DIR": str(workdir / "models"),
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    process = start_backend(env, port, threads, workdir / "backend.log")
    url = f"http://127.0.0.1:{port}"
    images = [f"{base}/img{i}.png" for i in range(16)]
    try:
        while not httpx.get(f"{url}/health", timeout=5).json()["model_loaded"]:
            time.sleep(0.5)
        run_load(url, images, 4, 1, time_limit)  # warm-up: first forward passes, connection setup
        serial = run_load(url, images, max(8, requests // 4), 1, time_limit)
        concurrent = run_load(url, images, requests, concurrency, time_limit)
    finally:
        stop_process(process)
        image_server.shutdown()
    ratio = concurrent["throughput_rps"] / serial["throughput_rps"] if serial["throughput_rps"] else 0.0
    return {
        "serial": serial,
        "concurrent": concurrent,
        "throughput_ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "zero_errors": serial["errors"] == 0 and concurrent["errors"] == 0,
        "config": {"weights": weights, "threads": threads, "image_size": image_size, "image": f"{size[0]}x{size[1]}", "cpus": os.cpu_count()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds per run, at most")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--weights", default="yolov5n.yaml", help=".pt, or a model yaml (untrained, same cost)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_load.json"))
    args = parser.parse_args()
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ale-bench-yolo-"))
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ale-load-") as work:
        report = benchmark(args.weights, args.requests, args.concurrency, args.threads, args.time_limit, args.imgsz, (width, height), Path(work))
    print(f"{'run':<12}{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}")
    for name in ("serial", "concurrent"):
        row = report[name]
        print(f"{name:<12}{row['requests']:>9}{row['throughput_rps']:>8.2f}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}{row['errors']:>8}")
    print(f"throughput concurrent / serial = {report['throughput_ratio']:.2f} (target >= {TARGET_RATIO}); zero errors: {report['zero_errors']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if report["zero_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
