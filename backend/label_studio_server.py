"""A local Label Studio 1.23.2 in a virtual environment of its own, for `ale demo` and the tests.

Label Studio pins its own Django, rq and redis versions, so it never shares an
environment with the backend. The environment is created on first use in a
cache outside any checkout (keyed by version) and reused afterwards. The server
runs on loopback with an SQLite data directory; clients authenticate with a
personal access token created through the web login, as a person would.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import AleError

LABEL_STUDIO_VERSION = "1.23.2"
#: Installed beside it. Label Studio 1.23.2 asks for sentry-sdk>=2.16.0 with no upper bound, and starts
#: sentry with `send_default_pii`, an option sentry-sdk 3.0 refuses ("Unknown option"): the server
#: then fails before it listens.
LABEL_STUDIO_CONSTRAINTS = ("sentry-sdk>=2.16.0,<3",)
#: First start runs every migration (~45 s on 2 cores); slow disks need more.
START_TIMEOUT = 240
#: The ports a server can listen on.
PORTS = range(1, 65536)
STOP_TIMEOUT = 20


def cache_dir() -> Path:
    """Where large environments live: ALE_CACHE_DIR, else (unset or empty, as .env.example ships it) ~/.cache/label-studio-ale."""
    return Path(os.environ.get("ALE_CACHE_DIR", "").strip() or Path.home() / ".cache" / "label-studio-ale")


class InstallError(AleError):
    """Label Studio's environment could not be made; the message holds the installer's reason and what to check."""

    status = 500


#: Lines of the installer's output an InstallError quotes: pip's reason is at its end.
INSTALL_ERROR_LINES = 12


def ensure_venv(python: str | None = None, log=None) -> Path:
    """The Label Studio environment, installed from the package registry if absent. -> its folder.

    The marker that makes a folder reusable is written last: an install that failed part-way is removed and
    made again by the next call, never reused.
    """
    python = python or os.environ.get("PYTHON", "").strip() or "python3.11"  # empty, as .env.example ships it: unset
    venv = cache_dir() / f"label-studio-{LABEL_STUDIO_VERSION}-{Path(python).name}"
    marker = venv / ".complete"
    requirements = [f"label-studio=={LABEL_STUDIO_VERSION}", *LABEL_STUDIO_CONSTRAINTS]
    # the marker names what was installed: an environment made without today's constraints is made again
    if marker.exists() and marker.read_text().split() == requirements:
        return venv
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    (log or _stderr)(f"installing label-studio=={LABEL_STUDIO_VERSION} into {venv} (first run only, a few minutes)")
    try:
        _install_step([python, "-m", "venv", str(venv)], f"cannot create a virtual environment with PYTHON={python}",
                      "is that Python installed, with its venv module (Debian: python3.11-venv)?")
        _install_step([str(venv / "bin" / "pip"), "install", "-q", *requirements],
                      f"pip could not install label-studio=={LABEL_STUDIO_VERSION} into {venv}",
                      "check the network, and PIP_INDEX_URL / the proxy (HTTPS_PROXY) if this machine uses them")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)  # nothing half-made stays behind
        raise
    marker.write_text("\n".join(requirements) + "\n")
    return venv


def _install_step(args: list[str], what: str, check: str) -> None:
    """Run one step of the install, its output kept for the error. Raises InstallError naming `what` failed and `check`."""
    try:
        subprocess.run(args, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise InstallError(f"{what}: {exc.filename or args[0]} not found; {check}") from None
    except subprocess.CalledProcessError as exc:
        lines = [line for line in (exc.output or "").splitlines() if line.strip()][-INSTALL_ERROR_LINES:]
        said = "\n".join(f"  {line}" for line in lines) or "  (it printed nothing)"
        raise InstallError(f"{what} (exit {exc.returncode}):\n{said}\n{check}") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now (connections closing in TIME_WAIT do not count, as for servers)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until `url` answers 200; fail early, with the log's tail, if `process` exits first."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group (started with start_new_session), then SIGKILL after `timeout`."""
    stop_processes([process], timeout)


def stop_processes(processes: list[subprocess.Popen], timeout: float = STOP_TIMEOUT) -> None:
    """`stop_process` for several at once: every group is sent SIGTERM first, and all share one `timeout`.

    Stopped one after another, services that each take long to exit add up
    their waits; here the slowest alone decides.
    """
    running = [p for p in processes if p.poll() is None]
    for process in running:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:  # exited since the poll
            pass
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


@dataclass
class LabelStudioServer:
    url: str
    token: str  # a personal access token (JWT refresh token)
    process: subprocess.Popen
    data_dir: Path
    log: Path
    port: int
    username: str
    password: str

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """Die at once, as a crashed server would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """Start again on the same port and data (the database and secret key persist)."""
        self.stop()
        self.process = _launch(self.data_dir, self.port, self.log, self.username, self.password)
        wait_for_http(f"{self.url}/health", START_TIMEOUT, self.process, self.log)


def start_label_studio(data_dir: Path, username: str, password: str, port: int | None = None, log=None,
                       token: str | None = None) -> LabelStudioServer:
    """Start Label Studio on 127.0.0.1 with `data_dir`, its first user `username`; wait for it; get a token.

    A data folder used before already holds the user's token: pass it as `token` (it is rotated).
    """
    port = port or free_port()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    logfile = data_dir / "label-studio.log"
    ensure_venv(log=log)
    process = _launch(data_dir, port, logfile, username, password)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", START_TIMEOUT, process, logfile)
        token = create_personal_access_token(url, username, password, existing=token)
    except BaseException:
        stop_process(process)
        raise
    return LabelStudioServer(url, token, process, data_dir, logfile, port, username, password)


def sign_in(url: str, email: str, password: str, signup: bool = False):
    """Log in (or sign up) through LS's web form, as a person would. -> the signed-in requests.Session."""
    import requests

    page = "/user/signup/" if signup else "/user/login/"
    session = requests.Session()
    session.get(f"{url}{page}", timeout=30)
    login = session.post(
        f"{url}{page}",
        data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{url}{page}"},
        allow_redirects=False,
        timeout=30,
    )
    if login.status_code != 302:
        session.close()
        raise RuntimeError(f"{page} on Label Studio failed for {email}: {login.status_code} {login.text[:300]}")
    return session


def create_personal_access_token(url: str, email: str, password: str, signup: bool = False, existing: str | None = None) -> str:
    """A personal access token for the user. LS keeps one per user: if it exists, `existing` is rotated into a new one."""
    with sign_in(url, email, password, signup) as session:
        headers = {"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{url}/"}
        response = session.post(f"{url}/api/token/", headers=headers, timeout=30)
        if response.status_code == 409:
            if not existing:
                raise RuntimeError(
                    f"{email} already has a personal access token in Label Studio: pass it, or revoke it in Account & Settings"
                )
            response = session.post(f"{url}/api/token/rotate/", json={"refresh": existing}, headers=headers, timeout=30)
            response.raise_for_status()
            return response.json()["refresh"]
        response.raise_for_status()
        return response.json()["token"]


#: Label Studio's feature flag (env var of that name) for its batched prediction import (data_import/api.py):
#: off by default in 1.23, it makes an import of k predictions cost O(k), not O(project).
LS_BATCHED_PREDICTION_IMPORT = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"


#: Where the launcher keeps the secret key of a Label Studio data folder.
SECRET_KEY_FILE = "ale-secret-key"


def secret_key(data_dir: Path) -> str:
    """The data folder's Django SECRET_KEY, made once and kept beside its database.

    Left to itself, LS writes a random key into `<data>/.env`; django-environ
    reads a value starting with '$' as a reference to another variable, so a
    key that happens to start with '$' (about 1 start in 50) is lost at the
    next start, a new random key is made, and every token issued before the
    restart stops working. A folder LS made before keeps the key of its `.env`
    when that one reads back whole; otherwise the key is new, URL-safe base64 (no '$').
    """
    path = Path(data_dir) / SECRET_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = _readable_env_key(Path(data_dir) / ".env") or secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def _readable_env_key(env_file: Path) -> str | None:
    """The SECRET_KEY an LS `.env` holds, if LS reads it back as written (it does not start with '$')."""
    if not env_file.is_file():
        return None
    for line in env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "SECRET_KEY" and value.strip() and not value.strip().startswith("$"):
            return value.strip()
    return None


def _launch(data_dir: Path, port: int, log: Path, username: str, password: str) -> subprocess.Popen:
    venv = ensure_venv()
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(data_dir),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "SECRET_KEY": secret_key(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        # Since 1.23.1 LS refuses ML backends on loopback/private addresses unless these are off.
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        # LS reports its errors to its makers' Sentry unless the DSN is empty: a local
        # server's errors (a demo's, a test's) stay on the machine.
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        # LS's own batched prediction import: recounts only the imported tasks, where the
        # default path recounts every task of the project on each import request.
        LS_BATCHED_PREDICTION_IMPORT: "true",
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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
