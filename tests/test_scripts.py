"""scripts/test: which tests each of its two pytest runs gets, and which exit statuses fail it.

The script runs in a copy of the checkout whose scripts/setup hands out stand-in environments: their `python`
records its arguments and exits with the status the test asks for.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TF_TESTS = ["tests/plugins/test_tfod_adapter.py", "tests/plugins/test_tfod_training.py", "tests/integration/test_tfod_training.py"]
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$(dirname "$0")/../args"
exit "${FAKE_EXIT:-0}"
"""
FAKE_SETUP = """#!/usr/bin/env bash
# the environment's folder on the last line, as scripts/setup prints it
echo "$PWD/env-${1:-torch}"
"""


@pytest.fixture
def checkout(tmp_path):
    """A checkout with scripts/test, stand-in environments and stand-ins for the servers the tests start."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    for path, text in {"scripts/setup": FAKE_SETUP, "env-torch/bin/python": FAKE_PYTHON, "env-tfod/bin/python": FAKE_PYTHON,
                       "bin/redis-server": "", "bin/initdb": "", "bin/chromium": ""}.items():  # fmt: skip
        file = tmp_path / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text or "#!/bin/sh\n")
        file.chmod(0o755)
    for test in [*TF_TESTS, "tests/test_cli.py", "tests/plugins/test_yolov5_adapter.py"]:
        (tmp_path / test).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / test).touch()
    return tmp_path


def run(checkout: Path, *args: str, torch_exit: int = 0, tf_exit: int = 0) -> tuple[int, list[str], list[str] | None]:
    """scripts/test `args`. -> (its exit status, the torch run's pytest arguments, the TensorFlow run's or None)."""
    for flavour, status in (("torch", torch_exit), ("tfod", tf_exit)):
        (checkout / f"env-{flavour}" / "bin" / "python").write_text(FAKE_PYTHON.replace("${FAKE_EXIT:-0}", str(status)))
        (checkout / f"env-{flavour}" / "args").unlink(missing_ok=True)
    env = {"PATH": f"{checkout / 'bin'}:/usr/bin:/bin", "HOME": str(checkout)}
    done = subprocess.run(["bash", str(checkout / "scripts" / "test"), *args], env=env, capture_output=True, text=True, timeout=60)
    ran = [checkout / f"env-{flavour}" / "args" for flavour in ("torch", "tfod")]
    torch, tf = (path.read_text().splitlines() if path.exists() else None for path in ran)
    return done.returncode, torch, tf


def test_no_test_paths_run_every_tensorflow_module_as_ci_does(checkout):
    status, torch, tf = run(checkout, "-p", "no:cacheprovider", "-ra")
    assert status == 0 and torch == ["-m", "pytest", "-p", "no:cacheprovider", "-ra"]
    assert tf == ["-m", "pytest", *sorted(TF_TESTS, key=lambda t: (t.startswith("tests/integration"), t)), "-p", "no:cacheprovider", "-ra"]
    # an unfiltered TensorFlow run that collects nothing is a failure; a filtered one may
    assert run(checkout, "-ra", tf_exit=5)[0] == 5
    assert run(checkout, "-k", "boxes", tf_exit=5)[0] == 0
    # a filter may leave the TensorFlow run nothing, however it is written; a -k in an option's value is no filter
    for filtered in (("-qk", "boxes"), ("-kboxes",), ("-xm", "not slow"), ("-m", "not slow")):
        assert run(checkout, *filtered, tf_exit=5)[0] == 0, filtered
    assert run(checkout, "-p", "-kno", tf_exit=5)[0] == 5


def test_test_paths_reach_the_tensorflow_run_only_where_they_name_tensorflow_modules(checkout):
    """`scripts/test tests/test_cli.py` ran the whole TensorFlow suite as well."""
    status, torch, tf = run(checkout, "tests/test_cli.py", "-k", "tests/plugins/test_tfod_adapter.py", "-p", "no:cacheprovider", tf_exit=5)
    assert status == 0 and tf is None  # nothing for it: not run at all (a -k value is no path)
    assert torch == ["-m", "pytest", "tests/test_cli.py", "-k", "tests/plugins/test_tfod_adapter.py", "-p", "no:cacheprovider"]

    status, torch, tf = run(checkout, "-xkboxes", "tests/test_cli.py", "tests/plugins/test_tfod_adapter.py::test_one", "-m", "not slow")
    assert status == 0 and torch[2:] == ["-xkboxes", "tests/test_cli.py", "tests/plugins/test_tfod_adapter.py::test_one", "-m", "not slow"]
    assert tf == ["-m", "pytest", "-xkboxes", "-m", "not slow", "tests/plugins/test_tfod_adapter.py::test_one"]

    status, _, tf = run(checkout, "-qk", "tfod", "tests/plugins", tf_exit=1)  # a folder: the TensorFlow modules in it
    assert status == 1 and tf == ["-m", "pytest", "-qk", "tfod", "tests/plugins/test_tfod_adapter.py", "tests/plugins/test_tfod_training.py"]


def test_a_run_that_collects_nothing_fails(checkout):
    assert run(checkout, "tests/test_cli.py", torch_exit=5)[0] == 1
    assert run(checkout, "tests/test_cli.py", torch_exit=3)[0] == 3
