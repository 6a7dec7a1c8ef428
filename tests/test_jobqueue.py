"""Queue names: one rq queue per adapter and job kind."""

import subprocess
import sys

import pytest

from label_studio_ale.jobqueue import QUEUES, queue_name


def test_every_adapter_has_its_own_queue_per_kind():
    assert [queue_name("yolov5", kind) for kind in QUEUES] == ["yolov5-train", "yolov5-predict", "yolov5-sync"]
    assert queue_name("tfod", "train") == "tfod-train"
    with pytest.raises(ValueError, match="queue kind must be one of train, predict, sync, got 'gpu'"):
        queue_name("tfod", "gpu")


def test_a_worker_refuses_an_unknown_job_kind():
    done = subprocess.run(
        [sys.executable, "-m", "label_studio_ale.cli", "worker", "--queues", "train,gpu", "--burst"],
        env={"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "--queues takes job kinds among train,predict,sync, got 'train,gpu'" in done.stderr


def _reports_progress():
    from label_studio_ale.jobs import _job_progress

    _job_progress("train", 2, 5, {"loss": 0.5})
    return "done"


def test_the_embedded_queue_publishes_job_progress_like_rq():
    from label_studio_ale.jobqueue import EmbeddedJobQueue, current_embedded_job
    from label_studio_ale.jobs import TRAINER_METRICS_NOTE

    jobs = EmbeddedJobQueue()
    job_id = jobs.enqueue("train", _reports_progress)
    jobs.join()
    info = jobs.info(job_id)
    assert info.status == "finished" and info.result == "done"
    assert info.meta == {
        "progress": {"phase": "train", "done": 2, "total": 5},
        "training": {"epoch": 2, "epochs": 5, "trainer_metrics": {"loss": 0.5}, "note": TRAINER_METRICS_NOTE},
    }
    assert current_embedded_job() is None  # outside a job, progress goes nowhere
