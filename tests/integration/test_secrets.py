"""Secrets never leak: the LS key, the basic-auth password and a Redis password stay out of logs and answers.

A real `ale serve` runs at DEBUG against a real LS; every failure path that
logs or answers about LS, auth or Redis is exercised, then the whole log and
every response body are searched.
"""

import httpx
import pytest

from tests.support.backend import backend_env, run_backend
from tests.support.label_studio import free_port
from tests.support.projects import LABEL_CONFIG, create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "basic-auth-secret-7Qz"
REDIS_PASSWORD = "redis-secret-K9w"


def test_the_api_key_and_passwords_never_appear_in_logs_or_responses(ls_sdk, label_studio, trained_weights, tmp_path):
    project, task_ids = create_project(ls_sdk, range(81_000, 81_002), "secrets")
    env = backend_env(
        label_studio,
        trained_weights,
        tmp_path / "models",
        BASIC_AUTH_USER="ls",
        BASIC_AUTH_PASS=PASSWORD,
        REDIS_URL=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",  # nothing listens: every job path fails
        LOG_LEVEL="DEBUG",
    )
    auth = ("ls", PASSWORD)
    bodies = []
    with run_backend(env, tmp_path) as url:
        def post(route, json, auth=auth):
            response = httpx.post(f"{url}{route}", json=json, auth=auth, timeout=60)
            bodies.append(response.text + str(response.headers))
            return response

        assert post("/setup", {"project": f"{project}.1", "schema": LABEL_CONFIG}, auth=None).status_code == 401
        assert post("/setup", {"project": f"{project}.1", "schema": LABEL_CONFIG}, auth=("ls", PASSWORD + "x")).status_code == 401
        assert post("/setup", {"project": f"{project}.1", "schema": "<View>"}).status_code == 400
        assert post("/setup", {"project": f"{project}.1", "schema": LABEL_CONFIG}).status_code == 200
        tasks = [
            {"id": task_ids[0], "data": ls_sdk.tasks.get(id=task_ids[0]).data},  # fetched from LS with the key
            {"id": 999_001, "data": {"image": "/data/upload/999/missing.png"}},  # LS answers 404
            {"id": 999_002, "data": {"image": f"{label_studio.url}/data/upload/999/also-missing.png"}},
            {"id": 999_003, "data": {"image": "http://10.1.2.3/x.png"}},  # refused host
        ]
        answer = post("/predict", {"tasks": tasks, "label_config": LABEL_CONFIG})
        assert answer.status_code == 200 and len(answer.json()["errors"]) == 3
        assert post("/webhook", {"action": "START_TRAINING", "project": {"id": project}}).status_code == 503
        assert post("/webhook", {"action": "TASKS_CREATED", "project": {"id": project}}).status_code == 503
        for route in ("/versions", "/metrics", f"/jobs/nope?project={project}"):
            response = httpx.get(f"{url}{route}", auth=auth, timeout=30)
            bodies.append(response.text)

    log = "".join(path.read_text(errors="replace") for path in tmp_path.glob("backend-*.log"))
    assert "DEBUG" in log and "Redis at 127.0.0.1" in log  # the log is verbose and covers the failures
    secrets = {"LS key": label_studio.token, "basic-auth password": PASSWORD, "Redis password": REDIS_PASSWORD}
    for name, secret in secrets.items():
        assert secret not in log, f"the {name} is in the backend's log"
        assert not [b for b in bodies if secret in b], f"the {name} is in a response"


def test_listening_beyond_loopback_without_auth_is_warned_about_at_start(label_studio, trained_weights, tmp_path):
    """`ale serve --host 0.0.0.0` (the compose default) says, in its log, that anyone reaching the port can use it."""
    env = backend_env(label_studio, trained_weights, tmp_path / "models")
    open_dir, guarded_dir = tmp_path / "open", tmp_path / "guarded"
    open_dir.mkdir()
    guarded_dir.mkdir()
    with run_backend(env, open_dir, host="0.0.0.0") as url:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    with run_backend(env | {"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": PASSWORD}, guarded_dir, host="0.0.0.0"):
        pass
    (open_log,) = open_dir.glob("backend-*.log")
    (guarded_log,) = guarded_dir.glob("backend-*.log")
    assert "WARNING" in open_log.read_text() and "listening on 0.0.0.0 without basic auth" in open_log.read_text()
    assert "without basic auth" not in guarded_log.read_text()
