"""Run the backend as a real `ale serve` (gunicorn) subprocess on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.label_studio import free_port, stop_process, wait_for_http
from tests.support.models import IMAGE_SIZE

START_TIMEOUT = 120


def backend_env(label_studio, weights, model_dir, redis=None, **extra: str) -> dict[str, str]:
    """The settings every backend process of the integration tests shares, plus `extra`."""
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "MODEL_WEIGHTS": str(weights),
        "MODEL_DIR": str(model_dir),
        "IMAGE_SIZE": str(IMAGE_SIZE),
    }
    if redis is not None:
        env["REDIS_URL"] = redis.url
    return env | extra


def process_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without any LABEL_STUDIO_* of the developer's, plus `env`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")} | env


@contextmanager
def run_backend(env: dict[str, str], workdir: Path, threads: int = 4, host: str = "127.0.0.1"):
    """Start `ale serve` on `host` with `env` added to this environment; yields its loopback URL once the model is loaded."""
    port = free_port()
    log = workdir / f"backend-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "label_studio_ale.cli", "serve", "--host", host, "--port", str(port), "--threads", str(threads)],
        env=process_env(env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", START_TIMEOUT, process, log)
        deadline = time.monotonic() + START_TIMEOUT
        while not httpx.get(f"{url}/health", timeout=5).json()["model_loaded"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"model did not load: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(process)


@contextmanager
def run_worker(env: dict[str, str], workdir: Path, queues: str = "predict,sync", registered: bool = True):
    """Start `ale worker` (a real rq worker process) with `env` added; yields the process.

    `registered`: wait until it has registered with Redis (False: a test that starts it with Redis away).
    """
    log = workdir / f"worker-{time.monotonic_ns()}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "label_studio_ale.cli", "worker", "--queues", queues],
        env=process_env(env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if registered:
            _wait_until_registered(process, env["REDIS_URL"], log)
        yield process
    finally:
        stop_process(process)


#: A worker imports torch and its adapter before it registers with Redis.
WORKER_START_TIMEOUT = 120


def _wait_until_registered(process: subprocess.Popen, redis_url: str, log: Path) -> None:
    """Until the worker has registered with Redis: a test may stop Redis next, and a worker that
    cannot register at start exits (rq), where one that has registered waits for Redis to return."""
    from redis import Redis
    from rq import Worker

    connection = Redis.from_url(redis_url)
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while not any(worker.pid == process.pid for worker in Worker.all(connection=connection)):
        if process.poll() is not None:
            raise RuntimeError(f"worker exited at start: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker did not register with Redis in {WORKER_START_TIMEOUT} s: {log.read_text()[-2000:]}")
        time.sleep(0.2)
