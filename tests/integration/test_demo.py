"""`ale demo`: the setup path against a real LS, and the whole command from start to Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from label_studio_ale.demo import DEMO_TITLE, prepare_demo
from label_studio_ale.jobs import SYNC_VERSION_PREFIX, preview_ranking
from label_studio_ale.label_studio_server import free_port, port_is_free, sign_in
from label_studio_ale.ls_client import LabelStudioClient
from label_studio_ale.runtime import Runtime
from label_studio_ale.settings import Settings
from label_studio_ale.training_set import is_validation
from tests.support.backend import backend_env, run_backend

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_demo_setup_leaves_a_trained_model_and_ls_serving_the_top_ranked_task(ls_sdk, label_studio, tmp_path, monkeypatch):
    from label_studio_ale import ls_client

    monkeypatch.setattr(ls_client, "UPLOAD_CHUNK_FILES", 5)  # LS caps files per import: 16 images go in 4 requests
    env = backend_env(label_studio, "yolov5n.yaml", tmp_path / "models", MODEL_CLASSES="bird,nest", TRAIN_EPOCHS="3", TRAIN_BATCH="8")
    lines = []
    with run_backend(env, tmp_path) as url:  # no REDIS_URL: the embedded queue, as on a machine without Redis
        ls = LabelStudioClient(label_studio.url, label_studio.token)
        demo = prepare_demo(ls, url, images=16, annotated=10, log=lines.append)
        ranking = preview_ranking(demo.project, runtime=Runtime(Settings.from_env(env)))["rows"]

    assert ls_sdk.projects.get(id=demo.project).title == DEMO_TITLE
    # 16 scenes, and more only when none of their ids falls in the validation split
    assert len(demo.tasks) == len(set(demo.tasks)) >= 16 and len(demo.annotated) == 10 and set(demo.annotated) < set(demo.tasks)
    assert any(is_validation(t) for t in demo.annotated), "Start Training needs a validation image in the base set"
    assert {t.id for t in ls_sdk.tasks.list(project=demo.project) if t.total_annotations} == set(demo.annotated)
    assert demo.model_version == "v0001" and "map50" in demo.metrics
    # LS serves the queue the first model ranked: the next task is the top of that ranking
    assert ls_sdk.projects.get(id=demo.project).model_version.startswith(f"{SYNC_VERSION_PREFIX}v0001:")
    assert [row["task"] for row in ranking] and set(row["task"] for row in ranking) == set(demo.tasks) - set(demo.annotated)
    assert demo.next_task == ranking[0]["task"] == ls.next_task(demo.project)
    # progress, step by step (epoch lines appear when a poll catches an epoch)
    steps = [line for line in lines if not line.strip().startswith("epoch")]
    assert steps == [
        f"creating project '{DEMO_TITLE}' with 16 generated images",
        "annotating the base set: 10 images",
        f"connecting the backend at {url}",
        "training the first model (Start Training)",
    ]


def start_demo(workdir, ls_port, backend_port, redis_url):
    """`ale demo` as a person runs it, read until it says it is ready. -> (process, its output so far)."""
    command = [
        sys.executable, "-m", "label_studio_ale.cli", "demo", "--workdir", str(workdir),
        "--ls-port", str(ls_port), "--backend-port", str(backend_port), "--images", "12", "--annotated", "8", "--epochs", "2",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")} | {"REDIS_URL": redis_url}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    deadline = time.monotonic() + 600
    try:
        while not any("Ctrl-C stops everything" in line for line in output):
            assert time.monotonic() < deadline and process.poll() is None, "".join(output)[-3000:]
            output.append(process.stdout.readline())
    except BaseException:
        stop(process)
        raise
    return process, "".join(output)


def stop(process) -> None:
    """Ctrl-C, so the demo stops the services it started (they run in sessions of their own); kill only if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def press_ctrl_c(process, times: int = 1) -> str:
    try:
        for _ in range(times):
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the demo's process group
            time.sleep(0.5)
        rest, _ = process.communicate(timeout=90)
    finally:
        stop(process)
    assert process.returncode == 0, rest[-3000:]
    return rest


def test_ale_demo_starts_everything_prints_the_login_and_stops_on_ctrl_c(redis_server, tmp_path):
    ls_port, backend_port = free_port(), free_port()
    process, text = start_demo(tmp_path / "demo", ls_port, backend_port, redis_server.url)
    try:
        assert f"rq worker and cron on {redis_server.url}" in text
        assert re.search(r"ready: model v0001 \(mAP50 \d\.\d\d", text)
        login = re.search(r"login\s+(\S+) / (\S+)", text)
        project = re.search(rf"http://127\.0\.0\.1:{ls_port}/projects/(\d+)/data", text)
        assert login and project and re.search(r"next task\s+#\d+", text)
        # the printed login works: a person can sign in
        sign_in(f"http://127.0.0.1:{ls_port}", login.group(1), login.group(2)).close()
        assert not port_is_free(ls_port) and not port_is_free(backend_port)
    finally:
        rest = press_ctrl_c(process)
    assert rest.strip().endswith("stopped")
    assert port_is_free(ls_port) and port_is_free(backend_port)

    # A second run on the same folder reuses Label Studio's data and the login, and is ready again.
    process, again = start_demo(tmp_path / "demo", ls_port, backend_port, redis_server.url)
    assert press_ctrl_c(process, times=2).strip().endswith("stopped")  # an impatient second Ctrl-C leaves nothing behind
    assert port_is_free(ls_port) and port_is_free(backend_port)
    assert re.search(r"login\s+(\S+) / (\S+)", again).groups() == login.groups()
    assert re.search(r"ready: model v0001", again)  # each run adds a fresh demo project with its own first model
