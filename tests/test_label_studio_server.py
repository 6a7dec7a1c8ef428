"""The local Label Studio launcher's own logic (the server itself runs in tests/integration/)."""

import stat

from label_studio_ale import label_studio_server
from label_studio_ale.label_studio_server import LABEL_STUDIO_VERSION, SECRET_KEY_FILE, ensure_venv, secret_key


def test_a_data_folder_keeps_one_secret_key_that_label_studio_reads_back_whole(tmp_path):
    key = secret_key(tmp_path)
    assert key == secret_key(tmp_path) and len(key) >= 48
    assert not key.startswith("$") and "$" not in key  # django-environ reads '$name' as a reference
    assert stat.S_IMODE((tmp_path / SECRET_KEY_FILE).stat().st_mode) == 0o600


def test_a_key_label_studio_wrote_is_kept_unless_it_starts_with_a_dollar(tmp_path):
    kept, lost = tmp_path / "kept", tmp_path / "lost"
    kept.mkdir()
    lost.mkdir()
    (kept / ".env").write_text("SECRET_KEY=ab#c)d%e\n")
    (lost / ".env").write_text("SECRET_KEY=$6s_165#a5alx389)r\n")
    assert secret_key(kept) == "ab#c)d%e"  # tokens issued before this launcher set it stay valid
    assert secret_key(lost) != "$6s_165#a5alx389)r" and not secret_key(lost).startswith("$")


def test_the_environment_is_made_again_when_it_was_installed_without_todays_constraints(tmp_path, monkeypatch):
    """The install itself (minutes, from the registry) runs in the integration tests; here only what decides it."""
    calls = []
    monkeypatch.setenv("ALE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(label_studio_server.subprocess, "run", lambda args, **kwargs: calls.append(args))
    venv = tmp_path / f"label-studio-{LABEL_STUDIO_VERSION}-python3.11"
    venv.mkdir()
    (venv / ".complete").touch()  # an environment made before the constraints: sentry-sdk unbounded
    assert ensure_venv("python3.11", log=lambda line: None) == venv
    pip = next(args for args in calls if args[0].endswith("pip"))
    assert f"label-studio=={LABEL_STUDIO_VERSION}" in pip and "sentry-sdk>=2.16.0,<3" in pip
    assert (venv / ".complete").read_text().split() == [f"label-studio=={LABEL_STUDIO_VERSION}", "sentry-sdk>=2.16.0,<3"]
    calls.clear()
    assert ensure_venv("python3.11", log=lambda line: None) == venv and calls == []  # made with them: reused


def test_empty_cache_dir_and_python_as_env_example_ships_them_count_as_unset(tmp_path, monkeypatch):
    """An empty ALE_CACHE_DIR would put the environment in the working folder, an empty PYTHON would run ''."""
    calls = []
    monkeypatch.setenv("ALE_CACHE_DIR", "")
    monkeypatch.setenv("PYTHON", " ")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(label_studio_server.subprocess, "run", lambda args, **kwargs: calls.append(args))
    assert label_studio_server.cache_dir() == tmp_path / ".cache" / "label-studio-ale"
    venv = tmp_path / ".cache" / "label-studio-ale" / f"label-studio-{LABEL_STUDIO_VERSION}-python3.11"
    venv.mkdir(parents=True)  # what `python -m venv` would make
    assert ensure_venv(log=lambda line: None) == venv
    assert [args for args in calls if "venv" in args] == [["python3.11", "-m", "venv", str(venv)]]


def test_the_server_reports_nothing_beyond_the_machine(tmp_path, monkeypatch):
    launched = {}

    class Popen:
        def __init__(self, args, env, **kwargs):
            launched.update(args=args, env=env)

    monkeypatch.setattr(label_studio_server, "ensure_venv", lambda: tmp_path / "venv")
    monkeypatch.setattr(label_studio_server.subprocess, "Popen", Popen)
    (tmp_path / "data").mkdir()
    label_studio_server._launch(tmp_path / "data", 8080, tmp_path / "ls.log", "admin@example.com", "a password")
    env = launched["env"]
    # LS reads an empty DSN as "no Sentry"; left unset it falls back to its makers' project
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""
    assert env["COLLECT_ANALYTICS"] == "false" and env["LATEST_VERSION_CHECK"] == "false"


def test_processes_are_stopped_together_not_one_after_another(tmp_path):
    """`first` exits on SIGTERM only once `second` has had its own SIGTERM: one after another, it would be killed."""
    import subprocess
    import sys

    from label_studio_ale.label_studio_server import stop_processes

    marker = tmp_path / "second-was-told"
    script = (
        "import pathlib, signal, sys, time\n"
        "marker = pathlib.Path(sys.argv[2])\n"
        "def on_term(*_):\n"
        "    if sys.argv[1] == 'second':\n"
        "        marker.touch()\n"
        "        sys.exit(0)\n"
        "    while not marker.exists():\n"
        "        time.sleep(0.05)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    first, second = (
        subprocess.Popen([sys.executable, "-c", script, name, str(marker)], stdout=subprocess.PIPE, text=True, start_new_session=True)
        for name in ("first", "second")
    )
    for process in (first, second):
        assert process.stdout.readline().strip() == "ready"  # its handler is set
    stop_processes([first, second], timeout=30)
    assert (first.returncode, second.returncode) == (0, 0)  # both exited on their own, none was killed


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout():
    import subprocess
    import sys

    from label_studio_ale.label_studio_server import stop_processes

    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert stubborn.stdout.readline().strip() == "ready"
    stop_processes([stubborn], timeout=0.5)
    assert stubborn.returncode == -9


def test_a_failed_install_says_what_pip_said_and_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    """pip's reason was thrown away (stderr to /dev/null) and a CalledProcessError traceback shown instead."""
    import pytest

    from label_studio_ale.label_studio_server import InstallError

    monkeypatch.setenv("ALE_CACHE_DIR", str(tmp_path))
    # A registry pip cannot use, whatever this machine's pip configuration says
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-packages"))
    with pytest.raises(InstallError) as failed:
        ensure_venv("python3.11", log=lambda line: None)
    message = str(failed.value)
    venv = tmp_path / f"label-studio-{LABEL_STUDIO_VERSION}-python3.11"
    assert message.startswith(f"pip could not install label-studio=={LABEL_STUDIO_VERSION} into {venv} (exit 1):\n")
    assert f"No matching distribution found for label-studio=={LABEL_STUDIO_VERSION}" in message
    assert message.endswith("check the network, and PIP_INDEX_URL / the proxy (HTTPS_PROXY) if this machine uses them")
    assert not venv.exists()  # the next run installs again rather than reuse a half-made environment


def test_a_python_that_is_not_there_is_named(tmp_path, monkeypatch):
    import pytest

    from label_studio_ale.label_studio_server import InstallError

    monkeypatch.setenv("ALE_CACHE_DIR", str(tmp_path))
    missing = str(tmp_path / "bin" / "python3.11")
    with pytest.raises(InstallError, match=rf"^cannot create a virtual environment with PYTHON={missing}: {missing} not found; "):
        ensure_venv(missing, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []
