"""`ale demo`'s own logic: the environment its services get, and how it reports a service that does not start.

The whole demo, against a real Label Studio, runs in tests/integration/test_demo.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from label_studio_ale import demo, label_studio_server
from label_studio_ale.cli import main
from label_studio_ale.label_studio_server import free_port, wait_for_http


def test_the_demos_services_take_the_demos_settings_not_the_shells(tmp_path, monkeypatch):
    """After `set -a; . ./.env`, the shell's basic auth made the backend refuse the demo's own Start Training (401),
    and compose's DETECTION_STORE_URL named a host `postgres` this machine does not know."""
    for name, value in {
        "BASIC_AUTH_USER": "team", "BASIC_AUTH_PASS": "s3cret", "DETECTION_STORE_URL": "postgresql://ale:pw@postgres:5432/ale",
        "ALLOWED_MEDIA_HOSTS": "media.example.org", "POLICY": "random", "TRAIN_BATCH": "64", "MODEL_WEIGHTS": "/models/birds.pt",
        "LABEL_STUDIO_URL": "http://label-studio:8080", "DEVICE": "cpu", "LOG_LEVEL": "WARNING", "PIP_INDEX_URL": "http://mirror/simple",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    log = tmp_path / "logs" / "config.log"
    # `ale config` prints the settings a service of the demo runs with
    process = demo._start_ale(["config"], {"MODEL_DIR": str(tmp_path / "models"), "TRAIN_BATCH": "8"}, log)
    assert process.wait(60) == 0, log.read_text()
    shown = json.loads(log.read_text())
    assert shown["basic_auth_user"] == shown["basic_auth_password"] == "" and shown["detection_store_url"] == ""
    assert shown["allowed_media_hosts"] == [] and shown["policy"] == "ale-entropy-sum" and shown["model_weights"] == "yolov5n.yaml"
    assert shown["label_studio_url"] != "http://label-studio:8080"
    assert shown["model_dir"] == str(tmp_path / "models") and shown["train_batch"] == "8"  # the demo's own
    assert shown["device"] == "cpu" and shown["log_level"] == "WARNING"  # where the model runs, how much is logged: the shell's

    env = demo.service_env({"MODEL_DIR": "m"}, {"PATH": "/bin", "HOME": "/home/a", "LANG": "C.UTF-8", "HTTPS_PROXY": "http://proxy",
                                                "PIP_INDEX_URL": "http://mirror/simple", "ALE_CACHE_DIR": "/cache", "REDIS_URL": "redis://x"})
    assert env == {"PATH": "/bin", "HOME": "/home/a", "LANG": "C.UTF-8", "HTTPS_PROXY": "http://proxy",
                   "PIP_INDEX_URL": "http://mirror/simple", "ALE_CACHE_DIR": "/cache", "MODEL_DIR": "m"}  # fmt: skip


def test_one_port_for_both_services_is_refused_before_anything_starts(tmp_path, capsys):
    """Both on one port: gunicorn retried for a while, then a RuntimeError traceback."""
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--ls-port", "18090", "--backend-port", "18090"]) == 1
    err = capsys.readouterr().err
    assert err == "demo: --ls-port and --backend-port are both 18090: Label Studio and the backend each need a port of their own\n"
    assert not workdir.exists()
    with pytest.raises(demo.DemoError, match="^--backend-port must be a port number from 1 to 65535, got 70000$"):
        demo.run_demo(None, workdir, ls_port=18090, backend_port=70000, wait=False)


class _Server:
    """What start_label_studio returns, for a Label Studio that is not needed: the backend fails first."""

    def __init__(self, port):
        self.url, self.token = f"http://127.0.0.1:{port}", "token"
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)

    def stop(self):
        label_studio_server.stop_process(self.process)


def test_a_service_that_does_not_start_is_one_line_with_its_log(tmp_path, monkeypatch, capsys):
    """wait_for_http's RuntimeError (and its log's last 3000 characters) escaped as a traceback."""
    workdir = tmp_path / "demo"

    def exiting_label_studio(data_dir, username, password, port, log, token):
        logfile = Path(data_dir) / "label-studio.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        script = "import sys; print('starting'); print('Error: That port is already in use.'); sys.exit(1)"
        process = subprocess.Popen([sys.executable, "-c", script], stdout=logfile.open("ab"), stderr=subprocess.STDOUT)
        wait_for_http(f"http://127.0.0.1:{port}/health", 30, process, logfile)

    monkeypatch.setattr(label_studio_server, "start_label_studio", exiting_label_studio)
    ls_port, backend_port = free_port(), free_port()
    assert main(["demo", "--workdir", str(workdir), "--ls-port", str(ls_port), "--backend-port", str(backend_port)]) == 1
    err = capsys.readouterr().err
    log = workdir / "label-studio" / "label-studio.log"
    assert err == (
        f"demo: Label Studio did not start (process exited with 1 before http://127.0.0.1:{ls_port}/health answered); "
        f"its log ends: Error: That port is already in use.; see {log}\n"
    )

    # the backend's own settings check refuses what the shell gave it: DEVICE names a GPU torch does not see
    monkeypatch.setattr(label_studio_server, "start_label_studio", lambda *args, port, **kwargs: _Server(port))
    monkeypatch.setattr(demo, "_local_redis", lambda log: "")  # the embedded queue: no worker, no cron
    monkeypatch.setenv("DEVICE", "cuda:99")
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["demo", "--workdir", str(workdir), "--ls-port", str(ls_port), "--backend-port", str(backend_port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"demo: the backend did not start (process exited with 2 before http://127.0.0.1:{backend_port}/health answered); "
        "its log ends: configuration error: DEVICE=cuda:99:"
    ), err
    assert err.endswith(f"; see {workdir / 'logs' / 'serve.log'}\n") and err.count("\n") == 1
