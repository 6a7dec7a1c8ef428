"""`ale demo`: a working active-learning loop on this machine, in one command.

It starts Label Studio (in its own environment), the backend (gunicorn) and,
when Redis is configured or reachable, an rq worker and the rq cron scheduler
(else jobs run on the backend's embedded queue). It then sets up what a team
has after its first hour: a project of generated images (birds and nests) with
a base set annotated, the backend connected, a first model trained by Start
Training, and Label Studio's queue ranked by that model. It prints the URL and
login and keeps everything running until Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import AleError
from .settings import ENV_VARS, Settings, without_password

DEMO_TITLE = "ALE demo: birds and nests"
DEMO_CLASSES = ("bird", "nest")
DEMO_LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="bird" background="#1f77b4"/><Label value="nest" background="#ff7f0e"/></RectangleLabels></View>'
)
# A first model from scratch on 48 annotated images (~38 for training, batch 8);
# epochs 0: Start Training's recipe decides (small-data: 200 optimizer steps here).
DEFAULT_IMAGES = 120
DEFAULT_ANNOTATED = 48
DEFAULT_EPOCHS = 0
DEFAULT_IMAGE_SIZE = 128  # the generated scenes' size: training stays a CPU minute or two
DEFAULT_SEED = 70_000
DEFAULT_LS_PORT = 8080
DEFAULT_BACKEND_PORT = 9090
USERNAME = "admin@example.com"
#: A first model on a CPU: Start Training through the sync that ranks the queue.
TRAIN_TIMEOUT = 30 * 60
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
#: Backend settings the demo's services take from the shell: where the model runs and how much it logs.
#: Every other one is the demo's own (a shell's basic auth would refuse the demo's own Start Training).
SHELL_SETTINGS = ("DEVICE", "LOG_LEVEL")


class DemoError(AleError):
    """The demo could not be set up; the message says which step and why."""


@dataclass(frozen=True)
class DemoProject:
    project: int
    tasks: list[int]
    annotated: list[int]
    model_version: str
    metrics: dict
    next_task: int | None


def prepare_demo(ls, backend_url: str, *, images: int = DEFAULT_IMAGES, annotated: int = DEFAULT_ANNOTATED,
                 seed: int = DEFAULT_SEED, log=print, timeout: float = TRAIN_TIMEOUT) -> DemoProject:
    """Create the demo project in LS (a `LabelStudioClient`), train its first model through `backend_url`, rank its queue.

    `annotated` images get their true boxes as annotations (the base set,
    `base_set`: the first ones, with a validation image among them); the
    rest is the pool the model ranks.
    """
    import requests

    from .synthetic import make_scene
    from .training_set import is_validation

    check_demo_size(images, annotated)
    log(f"creating project '{DEMO_TITLE}' with {images} generated images")
    project = ls.create_project(DEMO_TITLE, DEMO_LABEL_CONFIG)
    scenes = [make_scene(seed + i, max_objects=4) for i in range(images)]
    tasks = ls.upload_images(project, [_png(i, scene) for i, scene in enumerate(scenes)])
    while not any(is_validation(t) for t in tasks) and len(tasks) < images + MAX_EXTRA_IMAGES:
        # Start Training needs a validation image, and the split follows the ids LS hands out: one more scene
        scenes.append(make_scene(seed + len(scenes), max_objects=4))
        tasks += ls.upload_images(project, [_png(len(scenes) - 1, scenes[-1])])
    log(f"annotating the base set: {annotated} images")
    base = base_set(tasks, annotated)
    for task_id in base:
        ls.annotate(task_id, _regions(scenes[tasks.index(task_id)]))
    log(f"connecting the backend at {backend_url}")
    ls.connect_backend(project, backend_url, "ALE")
    log("training the first model (Start Training)")
    answer = requests.post(f"{backend_url}/webhook", json={"action": "START_TRAINING", "project": {"id": project}}, timeout=30)
    if answer.status_code not in (200, 201):
        raise DemoError(f"the backend refused Start Training: {answer.status_code} {answer.text[:300]}")
    job = answer.json()["job"]
    result = _wait_for_job(backend_url, job, timeout, log)
    sync = result.get("sync", {}).get("status")
    if sync in ("coalesced", "predicting"):  # a scheduled sync was running, or the pool is predicted in parallel jobs
        _wait_for_queue(ls, project, result["version"], timeout)
    elif sync != "synced":
        raise DemoError(f"the first model was trained but the queue was not ranked: {result.get('sync')}")
    return DemoProject(project, tasks, base, result["version"], result["metrics"], ls.next_task(project))


def check_demo_size(images: int, annotated: int) -> None:
    """The base set must leave a pool to rank: checked before Label Studio starts, not minutes after."""
    if not 0 < annotated < images:
        raise DemoError(
            f"--annotated must be between 1 and --images - 1 ({images - 1}), got {annotated}: annotate fewer images or generate more"
        )


#: Scenes added at most when none of the project's task ids falls in the validation split.
MAX_EXTRA_IMAGES = 30


def base_set(tasks: list[int], annotated: int) -> list[int]:
    """The first `annotated` tasks; the last swapped for the first validation-split task after them if none is one.

    Which ids a new project gets depends on every task the LS instance holds already.
    """
    from .training_set import with_a_validation_task

    return with_a_validation_task(tasks[:annotated], tasks[annotated:])


def _png(index: int, scene) -> tuple[str, bytes]:
    """A scene as an upload: (file name, PNG bytes)."""
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return f"scene-{index:03d}.png", buffer.getvalue()


def run_demo(settings: Settings, workdir: Path, *, ls_port: int = DEFAULT_LS_PORT, backend_port: int = DEFAULT_BACKEND_PORT,
             images: int = DEFAULT_IMAGES, annotated: int = DEFAULT_ANNOTATED, epochs: int = DEFAULT_EPOCHS,
             wait: bool = True, log=print) -> int:
    """Start every service, prepare the demo project, print how to reach it; block until Ctrl-C (or return at once)."""
    from .label_studio_server import port_is_free, start_label_studio, stop_processes, wait_for_http
    from .ls_client import LabelStudioClient

    check_demo_size(images, annotated)
    check_demo_ports(ls_port, backend_port)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for name, port in (("Label Studio", ls_port), ("backend", backend_port)):
        if not port_is_free(port):
            raise DemoError(f"port {port} for the {name} is taken: stop what uses it, or pass --{'ls' if name == 'Label Studio' else 'backend'}-port")
    login = _login(workdir)
    password = login["password"]
    redis_url = settings.redis_url or _local_redis(log)
    processes: list[subprocess.Popen] = []
    stopping = {"now": False}

    def interrupt(signum, frame):
        stopping["now"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    server = None
    try:
        log(f"[1/4] Label Studio on http://127.0.0.1:{ls_port} (data in {workdir / 'label-studio'})")
        try:
            server = start_label_studio(workdir / "label-studio", USERNAME, password, port=ls_port, log=log, token=login.get("token"))
        except (RuntimeError, TimeoutError) as exc:
            raise did_not_start("Label Studio", exc, workdir / "label-studio" / "label-studio.log") from None
        _save_login(workdir, login | {"token": server.token})
        env = {
            "LABEL_STUDIO_URL": server.url,
            "LABEL_STUDIO_API_KEY": server.token,
            "ADAPTER": "yolov5",
            "MODEL_WEIGHTS": "yolov5n.yaml",
            "MODEL_CLASSES": ",".join(DEMO_CLASSES),
            "MODEL_DIR": str(workdir / "models"),
            "IMAGE_SIZE": str(DEFAULT_IMAGE_SIZE),
            "TRAIN_EPOCHS": str(epochs),
            "TRAIN_BATCH": "8",
            "REDIS_URL": redis_url,
            "SYNC_INTERVAL": str(settings.sync_interval),
        }
        backend_url = f"http://127.0.0.1:{backend_port}"
        mode = f"rq worker and cron on {without_password(redis_url)}" if redis_url else "jobs on the backend's embedded queue (no Redis)"
        log(f"[2/4] backend on {backend_url}; {mode}")
        commands = [["serve", "--host", "127.0.0.1", "--port", str(backend_port)]]
        if redis_url:
            commands += [["worker"], ["cron"]]
        for command in commands:
            processes.append(_start_ale(command, env, workdir / "logs" / f"{command[0]}.log"))
        try:
            wait_for_http(f"{backend_url}/health", 120, processes[0], workdir / "logs" / "serve.log")
        except (RuntimeError, TimeoutError) as exc:
            raise did_not_start("the backend", exc, workdir / "logs" / "serve.log") from None
        log("[3/4] demo project")
        ls = LabelStudioClient(server.url, server.token)
        demo = prepare_demo(ls, backend_url, images=images, annotated=annotated, log=lambda m: log(f"      {m}"))
        log(f"[4/4] ready: model {demo.model_version} (mAP50 {demo.metrics.get('map50', 0):.2f} on its validation images), queue ranked")
        log("")
        log(f"  Label Studio  {server.url}/projects/{demo.project}/data   (opens the demo project)")
        log(f"  login         {USERNAME} / {password}")
        log(f"  backend       {backend_url}   (Settings -> Model shows it connected)")
        log(f"  next task     #{demo.next_task}: 'Label All Tasks' serves the most useful image first")
        log("  the loop      label, press Start Training (Settings -> Model), and the queue is re-ranked")
        log("")
        if wait:
            log("Ctrl-C stops everything (data stays in the work folder)")
            while all(p.poll() is None for p in processes) and server.process.poll() is None:
                time.sleep(1)
            failed = [p.args[3] for p in processes if p.poll() is not None]  # [python, -m, module, command, ...]
            raise DemoError(f"a service stopped on its own ({', '.join(failed) or 'Label Studio'}): see the logs in {workdir}")
        return 0
    except KeyboardInterrupt:
        log("stopping (a few seconds) ...")
        return 0
    finally:
        # A second Ctrl-C must not cut the shutdown short: the services run in sessions of their own and would be left behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_processes(processes)  # together, and before Label Studio: a job still running may need it
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if stopping["now"] or wait:
            log("stopped")


def check_demo_ports(ls_port: int, backend_port: int) -> None:
    """Two ports a server can listen on, one each: checked before anything starts."""
    from .label_studio_server import PORTS

    for option, port in (("--ls-port", ls_port), ("--backend-port", backend_port)):
        if port not in PORTS:
            raise DemoError(f"{option} must be a port number from {PORTS.start} to {PORTS.stop - 1}, got {port}")
    if ls_port == backend_port:
        raise DemoError(f"--ls-port and --backend-port are both {ls_port}: Label Studio and the backend each need a port of their own")


def did_not_start(name: str, exc: Exception, log: Path) -> DemoError:
    """A service that exited or never answered, in one line: the reason's first line, the log's last, and where the log is."""
    reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
    last = ""
    if log.is_file():
        last = next((line.strip() for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "")
    ends = f"; its log ends: {last[:300]}" if last else ""
    return DemoError(f"{name} did not start ({reason}){ends}; see {log}")


def service_env(own: dict[str, str], environ=None) -> dict[str, str]:
    """The demo's services' environment: the shell's, less every backend setting (ENV_VARS, but SHELL_SETTINGS) and
    Label Studio's, plus the demo's `own`. PATH, HOME, locale, proxies, PIP_*, ALE_CACHE_DIR pass through."""
    environ = os.environ if environ is None else environ
    dropped = set(ENV_VARS) - set(SHELL_SETTINGS)
    kept = {k: v for k, v in environ.items() if k not in dropped and not k.startswith("LABEL_STUDIO_")}
    return kept | own


def _start_ale(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "label_studio_ale.cli", *command],
        env=service_env(env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops these in order
    )


def _wait_for_job(backend_url: str, job: str, timeout: float, log) -> dict:
    import requests

    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        info = requests.get(f"{backend_url}/jobs/{job}", timeout=30).json()
        if info["status"] == "failed":
            raise DemoError(f"training failed: {info.get('error')}")
        if info["status"] == "finished":
            return info["result"]
        training = (info.get("meta") or {}).get("training")
        if training and training["epoch"] != shown:
            shown, epochs = training["epoch"], training["epochs"]
            # about five progress lines per training, whatever its length
            if shown and (shown == epochs or shown // max(1, epochs // 5) != (shown - 1) // max(1, epochs // 5)):
                log(f"  epoch {shown}/{epochs}")
        time.sleep(1)
    raise DemoError(f"training did not finish in {timeout:.0f} s; see the worker's log")


def _wait_for_queue(ls, project: int, version: str, timeout: float) -> None:
    """Wait until LS serves a queue ranked by the trained `version`."""
    from .jobs import SYNC_VERSION_PREFIX

    deadline = time.monotonic() + timeout
    while not ls.project(project).model_version.startswith(f"{SYNC_VERSION_PREFIX}{version}:"):
        if time.monotonic() > deadline:
            raise DemoError(f"the first model was trained but the queue was not ranked with it in {timeout:.0f} s; see the worker's log")
        time.sleep(1)


def _login(workdir: Path) -> dict:
    """The demo user's login, made once per work folder (LS keeps the user and its token in its database there)."""
    path = workdir / "login.json"
    if path.is_file():
        return json.loads(path.read_text())
    login = {"username": USERNAME, "password": secrets.token_urlsafe(12)}
    _save_login(workdir, login)
    return login


def _save_login(workdir: Path, login: dict) -> None:
    path = workdir / "login.json"
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(login))
    temp.chmod(0o600)
    temp.replace(path)


def _local_redis(log) -> str:
    """A Redis on the default local port, if one answers; else "" (the embedded queue)."""
    try:
        from redis import Redis

        Redis.from_url(LOCAL_REDIS, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
    except Exception:
        log("no Redis configured or on 127.0.0.1:6379: jobs run inside the backend (set REDIS_URL to use one)")
        return ""
    return LOCAL_REDIS


def _regions(scene) -> list[dict]:
    """A scene's true boxes as LS rectanglelabels results (the demo config's `label` on `image`)."""
    from .ls_format import rectangle_result

    return [
        rectangle_result(box, DEMO_CLASSES[int(label)], scene.image.size, "label", "image")
        for box, label in zip(scene.xyxy, scene.labels)
    ]
