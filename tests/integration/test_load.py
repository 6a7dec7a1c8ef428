"""The load benchmark, small: concurrent /predict at a real gunicorn server on loopback, zero errors.

Timings are reported (benchmarks/predict_load.py), never asserted.
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("predict_load", ROOT / "benchmarks" / "predict_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_predict_requests_all_succeed_and_are_reported(trained_weights, tmp_path):
    bench = load_benchmark()
    report = bench.benchmark(str(trained_weights), requests=24, concurrency=6, threads=4, time_limit=120,
                             image_size=128, size=(160, 120), workdir=tmp_path)
    assert report["zero_errors"], report
    concurrent = report["concurrent"]
    assert concurrent["requests"] == 24 and concurrent["concurrency"] == 6 and concurrent["errors"] == 0
    for run in (report["serial"], concurrent):
        assert 0 < run["p50_ms"] <= run["p95_ms"] and run["throughput_rps"] > 0
    assert report["throughput_ratio"] > 0 and report["config"]["threads"] == 4
