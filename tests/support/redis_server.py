"""A private Redis server for one test session (nothing on disk), on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

from tests.support.label_studio import free_port, stop_process

START_TIMEOUT = 20


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        """Start again on the same port (empty: nothing is saved to disk)."""
        self.stop()
        self.process = start_redis(self.port).process


def start_redis(port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: install Redis (e.g. apt-get install redis-server)")
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    from redis import Redis

    client = Redis(port=port)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.ping()
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.1)
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
