"""A real Label Studio 1.23.2 server for integration tests.

Label Studio pins its own Django, rq and redis versions, so it lives in its own
virtual environment, created on first use in a cache outside the clone and
reused afterwards (keyed by version). The server runs on 127.0.0.1 with a
fresh SQLite data directory, legacy tokens off: tests authenticate with a
personal access token, as a user of LS 1.23 does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"
USERNAME = "admin@example.com"
PASSWORD = "ale-test-password-1"
START_TIMEOUT = 240  # first start runs all migrations (~45 s here); slow disks need more
PYTHON = os.environ.get("PYTHON", "python3.11")


def cache_dir() -> Path:
    return Path(os.environ.get("ALE_CACHE_DIR", Path.home() / ".cache" / "label-studio-ale"))


def ensure_venv() -> Path:
    """The Label Studio venv, installed from the package registry if absent."""
    venv = cache_dir() / f"label-studio-{LABEL_STUDIO_VERSION}-{PYTHON}"
    marker = venv / ".complete"
    if marker.exists():
        return venv
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    print(f"installing label-studio=={LABEL_STUDIO_VERSION} into {venv} (first run only)", file=sys.stderr)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={LABEL_STUDIO_VERSION}"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    marker.touch()
    return venv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class LabelStudioServer:
    url: str
    token: str  # a personal access token (JWT refresh token)
    process: subprocess.Popen
    data_dir: Path
    log: Path
    port: int

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """Die at once, as a crashed server would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """Start again on the same port and data (the database and secret key persist)."""
        self.stop()
        self.process = _launch(self.data_dir, self.port, self.log)
        wait_for_http(f"{self.url}/health", START_TIMEOUT, self.process, self.log)


def _launch(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    venv = ensure_venv()
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(data_dir),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": USERNAME,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        # Since 1.23.1 LS refuses ML backends on loopback/private addresses unless these are off.
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "DJANGO_DB": "sqlite",
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_label_studio(data_dir: Path) -> LabelStudioServer:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "label-studio.log"
    process = _launch(data_dir, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", START_TIMEOUT, process, log)
        token = create_personal_access_token(url)
    except BaseException:
        stop_process(process)
        raise
    return LabelStudioServer(url, token, process, data_dir, log, port)


def create_personal_access_token(url: str, email: str = USERNAME, password: str = PASSWORD, signup: bool = False) -> str:
    """Log in (or sign up) through LS's web forms, as a person would, and create a PAT."""
    page = "/user/signup/" if signup else "/user/login/"
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as client:
        client.get(page)
        csrf = client.cookies["csrftoken"]
        login = client.post(
            page,
            data={"email": email, "password": password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{url}{page}"},
        )
        if login.status_code != 302:
            raise RuntimeError(f"{page} on Label Studio failed: {login.status_code} {login.text[:300]}")
        response = client.post("/api/token/", headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{url}/"})
        response.raise_for_status()
        return response.json()["token"]


def upload_images(ls, project_id: int, files: list[tuple[str, bytes]]) -> list[int]:
    """Upload image files into a project (LS's 'Import' dialog). Returns the new task ids."""
    http = ls._client_wrapper.httpx_client  # the SDK's authenticated client; the SDK has no upload helper
    response = http.request(
        f"api/projects/{project_id}/import",
        method="POST",
        params={"return_task_ids": "true"},
        files={f"file{i}": (name, data, "image/png") for i, (name, data) in enumerate(files)},
        force_multipart=True,
        request_options={"timeout_in_seconds": 120},
    )
    if response.status_code != 201:
        raise RuntimeError(f"upload failed: {response.status_code} {response.text[:500]}")
    return list(response.json()["task_ids"])
