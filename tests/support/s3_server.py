"""A local S3-compatible server (moto's standalone server) for cloud-storage tests, on a free loopback port.

moto runs from its own cached venv, installed from the package registry on
first use (as Label Studio is), so its Flask and boto3 never meet the
backend's. Objects are written and deleted with boto3 from that venv, signed
as a real client signs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from label_studio_ale.label_studio_server import cache_dir, free_port, stop_process

#: Pinned: the S3 behaviour (presigned GETs, error codes) the tests were written against.
MOTO_VERSION = "5.2.5"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT = 60

_OBJECTS_SCRIPT = """
import json, sys
import boto3
spec = json.load(sys.stdin)
s3 = boto3.client("s3", endpoint_url=spec["endpoint"], aws_access_key_id=spec["key"],
                  aws_secret_access_key=spec["secret"], region_name=spec["region"])
for bucket in spec.get("buckets", []):
    s3.create_bucket(Bucket=bucket)
for bucket, key, path in spec.get("put", []):
    with open(path, "rb") as body:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png" if key.endswith(".png") else "image/jpeg")
for bucket, key in spec.get("delete", []):
    s3.delete_object(Bucket=bucket, Key=key)
"""


def ensure_moto_venv() -> Path:
    """moto's own venv in the shared cache (keyed by version and Python), created when absent."""
    venv = cache_dir() / f"moto-{MOTO_VERSION}-{Path(sys.executable).name}"
    if (venv / ".complete").exists():
        return venv
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"moto[server]=={MOTO_VERSION}"], capture_output=True, text=True)
    if installed.returncode != 0:
        raise RuntimeError(f"cannot install moto[server]=={MOTO_VERSION}: {installed.stderr[-2000:]}")
    (venv / ".complete").write_text(MOTO_VERSION)
    return venv


@dataclass
class S3Server:
    url: str
    process: subprocess.Popen
    log: Path
    venv: Path
    workdir: Path

    def stop(self) -> None:
        stop_process(self.process)

    def _objects(self, **spec) -> None:
        spec |= {"endpoint": self.url, "key": ACCESS_KEY, "secret": SECRET_KEY, "region": REGION}
        subprocess.run([str(self.venv / "bin" / "python"), "-c", _OBJECTS_SCRIPT], input=json.dumps(spec), text=True, check=True, timeout=120)

    def create_bucket(self, bucket: str) -> None:
        self._objects(buckets=[bucket])

    def put(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Upload {key: bytes} into `bucket`."""
        staged = []
        for i, (key, data) in enumerate(objects.items()):
            path = self.workdir / f"object-{time.monotonic_ns()}-{i}"
            path.write_bytes(data)
            staged.append([bucket, key, str(path)])
        try:
            self._objects(put=staged)
        finally:
            for _, _, path in staged:
                Path(path).unlink(missing_ok=True)

    def delete(self, bucket: str, key: str) -> None:
        self._objects(delete=[[bucket, key]])

    def requests(self) -> list[str]:
        """The request lines the server logged so far (method, path and query)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if '"GET ' in line or '"PUT ' in line]


def start_s3(workdir: Path) -> S3Server:
    venv = ensure_moto_venv()
    port = free_port()
    log = workdir / f"moto-{port}.log"
    process = subprocess.Popen(
        [str(venv / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=2)
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    return S3Server(url, process, log, venv, workdir)
