"""The `ale` command: what it refuses before starting, what it shows, and how it reports a failure."""

import re
import socket

import pytest

from label_studio_ale.cli import main


def test_ale_config_hides_the_passwords_in_urls(monkeypatch, capsys):
    import json

    monkeypatch.setenv("REDIS_URL", "redis://:s3cretRedis@redis:6379/0")
    monkeypatch.setenv("DETECTION_STORE_URL", "postgresql://labelstudio:PgS3cret@postgres:5432/ale")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "key-secret")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "s3cretRedis" not in out and "PgS3cret" not in out and "key-secret" not in out
    shown = json.loads(out)
    assert shown["redis_url"] == "redis://:***@redis:6379/0" and shown["detection_store_url"] == "postgresql://labelstudio:***@postgres:5432/ale"


def test_model_commands_refuse_an_unknown_policy_and_many_workers_without_redis_before_starting(monkeypatch, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("POLICY", "ale-entropy-summ")
    assert main(["serve"]) == 2
    assert "POLICY='ale-entropy-summ' is unknown; choose one of" in capsys.readouterr().err
    monkeypatch.setenv("POLICY", "ale-entropy-sum")
    assert main(["serve", "--workers", "2"]) == 2
    assert "REDIS_URL: is needed for --workers 2" in capsys.readouterr().err


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_redis_or_label_studio_is_one_line_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", f"redis://:pw@127.0.0.1:{closed_port()}/0")
    assert main(["jobs"]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no table header before the error
    assert err.startswith("ale jobs: cannot reach Redis at REDIS_URL=redis://:***@127.0.0.1:") and "is it running?" in err
    assert "Traceback" not in err and ":pw@" not in err

    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    assert main(["savings", "--project", "1", "--recompute"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ale savings: cannot reach Label Studio at LABEL_STUDIO_URL=http://127.0.0.1:") and "Traceback" not in err


def test_every_url_setting_is_shown_masked_by_ale_config_and_in_the_unreachable_message(monkeypatch, capsys):
    """A password may hold a raw '#' or '?' (libpq takes them) and LABEL_STUDIO_URL may carry a proxy's credentials."""
    import json

    monkeypatch.setenv("LABEL_STUDIO_URL", "http://admin:LsPr0xyPass@ls.example.org:8080")
    monkeypatch.setenv("DETECTION_STORE_URL", "postgresql://ale:Pg#S3cret?x@postgres:5432/ale")
    monkeypatch.setenv("REDIS_URL", "redis://:R3dis@redis:6379/0?password=Q#uery")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert not any(secret in out for secret in ("LsPr0xyPass", "S3cret", "R3dis", "uery")), out
    shown = json.loads(out)
    assert shown["label_studio_url"] == "http://admin:***@ls.example.org:8080"
    assert shown["detection_store_url"] == "postgresql://ale:***@postgres:5432/ale"
    assert shown["redis_url"] == "redis://:***@redis:6379/0?password=***"

    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("DETECTION_STORE_URL")
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://admin:LsPr0xyPass@127.0.0.1:{closed_port()}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    assert main(["savings", "--project", "1", "--recompute"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ale savings: cannot reach Label Studio at LABEL_STUDIO_URL=http://admin:***@127.0.0.1:") and "LsPr0xyPass" not in err


def test_a_damaged_served_version_is_named_and_another_can_be_served(monkeypatch, tmp_path, capsys):
    """The record of the served version was cut short (a full disk): `ale models` still lists the others and says
    what is wrong, and --promote serves another, as the error advises."""
    from label_studio_ale.model_store import ModelStore

    store = ModelStore(tmp_path, 4)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    first = store.add(weights, ["bird"], {"map50": 0.5}, {"train_images": 8})
    second = store.add(weights, ["bird"], {"map50": 0.6}, {"train_images": 9})
    store.promote(second.name)
    (second.path / "metrics.json").write_text('{"map50": 0.')
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))

    assert main(["models", "--project", "4"]) == 0
    out, err = capsys.readouterr()
    assert "the served version cannot be read" in err and "ale models --project 4 --promote vNNNN" in err
    assert first.name in out and "*" not in out.splitlines()[1]

    assert main(["models", "--project", "4", "--promote", "v0007"]) == 1
    assert "v0007" in capsys.readouterr().err and store.readable_current()[1] is not None
    assert main(["models", "--project", "4", "--promote", first.name]) == 0
    assert f"{first.name} is served from now on" in capsys.readouterr().out
    assert store.current().name == first.name
    promotion = store.current().manifest["promotion"]
    assert promotion["promoted"] and promotion["by_hand"] and promotion["reason"].startswith(f"promoted by hand (`ale models --promote {first.name}`)")


def test_ale_cron_never_queues_a_second_sync_while_one_still_waits():
    """rq's cron enqueues every interval whether or not the last one ran: during a 6 h training (the only worker
    busy) 72 syncs would pile up, then run back to back. One waits; the next is queued once a worker took it."""
    from redis import Redis
    from rq import Queue
    from rq.utils import now

    from label_studio_ale.cli import cron_scheduler
    from label_studio_ale.settings import Settings
    from tests.support.redis_server import start_redis

    server = start_redis()
    try:
        redis = Redis.from_url(server.url)
        scheduler = cron_scheduler(Settings(redis_url=server.url, sync_interval=60), redis)
        (cron_job,) = scheduler.get_jobs()
        # rq keeps a cron job's history by its name: two adapters' stacks on one Redis must not read each other's
        assert cron_job.name == "sync_all:yolov5"
        queue = Queue(cron_job.queue_name, connection=redis)

        def round_due():
            cron_job.next_enqueue_time = now()  # an interval has passed
            scheduler.enqueue_jobs()
            assert cron_job.next_enqueue_time > now(), "the next round is an interval away"

        scheduler.enqueue_jobs()
        for _ in range(3):
            round_due()
        assert [job.func_name for job in queue.get_jobs()] == ["label_studio_ale.jobs.sync_all"]
        first = queue.job_ids[0]
        redis.lpop(queue.key)  # a worker takes it
        round_due()
        round_due()
        assert len(queue.job_ids) == 1 and queue.job_ids[0] != first
        queue.empty()  # emptied by hand: nothing waits, whatever the history says
        round_due()
        assert len(queue.job_ids) == 1
    finally:
        server.stop()


def test_an_unknown_project_or_a_refused_key_is_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    """The SDK's ApiError (404, 401) escaped `ale sync`, `ale rank` and `ale savings --recompute` as a traceback."""
    from tests.test_ls_client import refusing_label_studio

    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DETECTION_STORE_URL", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    with refusing_label_studio() as url:
        monkeypatch.setenv("LABEL_STUDIO_URL", url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "a-legacy-token")
        for command in (["sync"], ["rank"], ["savings", "--recompute"]):
            assert main([*command, "--project", "999"]) == 1
            err = capsys.readouterr().err
            assert err == f"ale {command[0]}: project 999 not found in Label Studio at {url}: check --project / the project id\n"
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "refused-key")
        assert main(["rank", "--project", "1"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ale rank: Label Studio refused LABEL_STUDIO_API_KEY (401): use a personal access token") and "Traceback" not in err


def _refused_by_the_parser(argv: list[str], capsys) -> str:
    import pytest

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_counts_below_one_are_refused_by_the_parser(capsys):
    """--workers 0 listened and never answered, --threads 0 died in gunicorn, --limit 0 listed every job."""
    for argv, option in (
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--threads", "0"], "--threads"),
        (["jobs", "--limit", "0"], "--limit"),
        (["rank", "--project", "1", "--top", "-1"], "--top"),
        (["demo", "--images", "0"], "--images"),
    ):
        err = _refused_by_the_parser(argv, capsys)
        assert f"argument {option}: must be a positive integer, got '{argv[-1]}'" in err, argv
    assert "argument --limit: must be a positive integer, got '-2'" in _refused_by_the_parser(["jobs", "--limit=-2"], capsys)
    assert "argument --epochs: must be 0 or a positive integer" in _refused_by_the_parser(["demo", "--epochs", "x"], capsys)


def test_ports_a_server_cannot_listen_on_are_refused_by_the_parser(capsys):
    """`ale serve --port 99999` and `ale demo --ls-port 70000` ended in an OverflowError traceback."""
    for argv in (["serve", "--port", "99999"], ["demo", "--ls-port", "70000"], ["demo", "--backend-port", "0"], ["serve", "--port", "x"]):
        err = _refused_by_the_parser(argv, capsys)
        assert f"argument {argv[1]}: must be a port number from 1 to 65535, got '{argv[2]}'" in err, argv


def test_a_demo_base_set_larger_than_its_images_is_refused_before_anything_starts(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--images", "10", "--annotated", "100"]) == 1
    assert "--annotated must be between 1 and --images - 1 (9), got 100" in capsys.readouterr().err
    assert not workdir.exists()  # Label Studio was not started: it keeps its data there


def test_output_files_are_checked_before_the_work(monkeypatch, tmp_path, capsys):
    """`ale evaluate --out nodir/m.json` evaluated, then died on FileNotFoundError; `ale models --plot` likewise."""
    missing = tmp_path / "nodir"
    # the dataset does not exist either: the --out check comes first, before minutes of evaluation
    assert main(["evaluate", "--weights", "w.pt", "--data", str(tmp_path / "none.yaml"), "--out", str(missing / "m.json")]) == 1
    assert capsys.readouterr().err == f"ale evaluate: --out: the folder {missing} does not exist: create it (mkdir -p {missing}) or write elsewhere\n"
    assert main(["evaluate", "--weights", "w.pt", "--data", "none.yaml", "--out", str(tmp_path)]) == 1
    assert f"--out: {tmp_path} is a folder: give the name of a file to write" in capsys.readouterr().err
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert main(["models", "--project", "4", "--plot", str(missing / "x.png")]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"ale models: --plot: the folder {missing} does not exist") and out == ""


def test_a_file_that_cannot_be_written_is_one_line_not_a_traceback(monkeypatch, capsys):
    """The last resort for an OSError that no command checked for first."""
    import label_studio_ale.cli as cli

    def denied(*args):
        raise PermissionError(13, "Permission denied", "/srv/out/results.json")

    monkeypatch.setattr(cli, "_run", denied)
    assert main(["config"]) == 1
    err = capsys.readouterr().err
    assert err == "ale config: [Errno 13] Permission denied: '/srv/out/results.json': check the path, its folder and their permissions\n"

    def refused(*args):  # an OSError too, but no path's: a fault to report with its traceback
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(cli, "_run", refused)
    with pytest.raises(ConnectionRefusedError):
        main(["config"])


def test_a_missing_weights_file_or_dataset_names_the_option_given(tmp_path, capsys):
    """--weights was reported as MODEL_WEIGHTS, and a --data that is not there as a dataset naming no classes."""
    missing = tmp_path / "no.yaml"
    assert main(["evaluate", "--weights", "/no.pt", "--data", str(missing)]) == 1
    assert capsys.readouterr().err == f"ale evaluate: --data {missing}: no such file or folder\n"
    assert main(["evaluate", "--weights", "/no.pt", "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "ale evaluate: --weights=/no.pt: no such file (copy the .pt there, or fix the path)\n"


def test_the_model_checks_warnings_are_logged_with_time_level_and_logger_and_follow_log_level(tmp_path):
    """The adapter's settings check ran before logging was configured: its warnings printed bare, whatever LOG_LEVEL said."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MODEL_CLASSES", "MODEL_WEIGHTS", "LOG_LEVEL")}
    env["MODEL_DIR"] = str(tmp_path)
    # a model yaml without MODEL_CLASSES is warned about; --workers 2 without Redis then stops it before it listens
    command = [sys.executable, "-m", "label_studio_ale.cli", "serve", "--workers", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    warning = next(line for line in done.stderr.splitlines() if "MODEL_CLASSES is unset" in line)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING label_studio_ale_plugins\.yolov5\.adapter: MODEL_WEIGHTS=yolov5n\.yaml", warning)
    quiet = subprocess.run(command, env=env | {"LOG_LEVEL": "ERROR"}, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2 and "MODEL_CLASSES is unset" not in quiet.stderr and "REDIS_URL: is needed" in quiet.stderr
