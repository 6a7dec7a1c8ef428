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


@pytest.fixture
def redis():
    from redis import Redis

    from tests.support.redis_server import start_redis

    server = start_redis()
    yield Redis.from_url(server.url)
    server.stop()


class FinishesBetweenCommands:
    """A Redis client during which the watched job finishes: after each command its worker deletes both keys."""

    def __init__(self, redis, job_id):
        self.redis, self.job_id = redis, job_id

    def __getattr__(self, name):
        from label_studio_ale.jobqueue import alive_key, watched_key

        command = getattr(self.redis, name)

        def call(*args, **kwargs):
            result = command(*args, **kwargs)
            self.redis.delete(alive_key(self.job_id), watched_key(self.job_id))
            return result

        return call


def test_a_job_finishing_while_it_is_checked_is_not_taken_for_abandoned(redis):
    from label_studio_ale.jobqueue import alive_key, is_abandoned, watched_key

    redis.set(alive_key("j1"), "w", ex=60)
    redis.set(watched_key("j1"), "w", ex=60)
    assert not is_abandoned(FinishesBetweenCommands(redis, "j1"), "j1")
    redis.set(watched_key("j2"), "w", ex=60)  # watched, heartbeat lapsed
    assert is_abandoned(redis, "j2")
    assert not is_abandoned(redis, "j3"), "a job no ale worker started is never abandoned"


def test_a_finished_job_with_a_stale_watch_is_reported_finished(redis):
    from rq import Queue, SimpleWorker

    from label_studio_ale.jobqueue import RedisJobQueue, fail_abandoned, recover_abandoned, watched_key

    jobs = RedisJobQueue(redis, "yolov5")
    job_id = jobs.enqueue("sync", len, "abc")
    SimpleWorker([jobs.queues["sync"]], connection=redis).work(burst=True)
    redis.set(watched_key(job_id), "w", ex=60)  # as if read just before the worker cleared it
    assert jobs.info(job_id).status == "finished" and jobs.info(job_id).result == 3
    from rq.job import Job

    assert fail_abandoned(redis, Job.fetch(job_id, connection=redis)) is False
    assert recover_abandoned(redis, [q.name for q in jobs.queues.values()]) == []
    assert Queue(jobs.queues["sync"].name, connection=redis).failed_job_registry.count == 0


def started_then_lost(redis, jobs, kind: str, retries: int = 0):
    """A job an `ale worker` took and started, whose heartbeat then lapsed (the worker was killed). -> the rq Job."""
    import time

    from rq import SimpleWorker

    from label_studio_ale.jobqueue import watched_key

    jobs.enqueue(kind, time.sleep, 60, retries=retries)
    worker = SimpleWorker([jobs.queues[kind]], connection=redis)
    worker.register_birth()
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    assert job.get_status(refresh=True) == "started"
    redis.set(watched_key(job.id), worker.name, ex=600)  # watched, and no alive key: its worker is gone
    return job


class RunsBeforeFirstWrite:
    """A Redis client whose first write command is preceded by `other()`: a second sweep, between this one's reads and writes."""

    WRITES = {"delete", "zrem", "zadd", "set", "eval"}

    def __init__(self, redis, other):
        self.redis, self.other = redis, other

    def __getattr__(self, name):
        command = getattr(self.redis, name)
        if name not in self.WRITES or self.other is None:
            return command

        def call(*args, **kwargs):
            other, self.other = self.other, None
            other()
            return command(*args, **kwargs)

        return call


def test_a_lost_job_found_by_two_sweeps_at_once_is_retried_once(redis):
    from rq.job import Job

    from label_studio_ale.jobqueue import RedisJobQueue, fail_abandoned

    jobs = RedisJobQueue(redis, "yolov5")
    job = started_then_lost(redis, jobs, "predict", retries=2)
    first = []
    second = RunsBeforeFirstWrite(redis, lambda: first.append(fail_abandoned(redis, Job.fetch(job.id, connection=redis))))

    assert fail_abandoned(second, Job.fetch(job.id, connection=redis)) is False, "the second sweep must leave it to the first"
    assert first == [True]
    queued = [i.decode() for i in redis.lrange(jobs.queues["predict"].key, 0, -1)]
    assert queued.count(job.id) == 1, "retried once, so it runs once"
    assert Job.fetch(job.id, connection=redis).retries_left == 1


def test_a_lost_job_is_reported_failed_only_once_it_has_no_retry_left(redis):
    from label_studio_ale.jobqueue import ABANDONED_TRAINING, RedisJobQueue

    jobs = RedisJobQueue(redis, "yolov5")
    chunk = started_then_lost(redis, jobs, "predict", retries=2)
    assert jobs.info(chunk.id).status == "queued", "rq runs it again: a client polling it must keep waiting"
    training = started_then_lost(redis, jobs, "train")
    info = jobs.info(training.id)
    assert (info.status, info.error) == ("failed", ABANDONED_TRAINING)


def test_a_run_renews_and_releases_only_the_keys_it_holds(redis):
    from label_studio_ale.jobqueue import alive_key, is_abandoned, release_watch, renew_alive, watched_key

    # worker A's run failed and rq retried it at once: worker B's run holds the keys before A cleans up
    redis.set(alive_key("j"), "B", ex=60)
    redis.set(watched_key("j"), "B", ex=600)
    renew_alive(redis, "j", "A")  # A's last heartbeat, late
    release_watch(redis, "j", "A")
    assert redis.mget(alive_key("j"), watched_key("j")) == [b"B", b"B"]
    assert not is_abandoned(redis, "j")
    renew_alive(redis, "j", "B")
    assert redis.ttl(alive_key("j")) > 60
    release_watch(redis, "j", "B")
    assert redis.mget(alive_key("j"), watched_key("j")) == [None, None]
    renew_alive(redis, "k", "A")  # a lapsed key of its own run comes back
    assert redis.get(alive_key("k")) == b"A"


@pytest.mark.parametrize("job_id", ["a.b", "../x", "id with spaces"])
def test_an_id_rq_could_not_have_made_is_no_job(redis, job_id):
    from label_studio_ale.jobqueue import RedisJobQueue

    assert RedisJobQueue(redis, "yolov5").info(job_id) is None


def test_the_embedded_queue_forgets_its_oldest_finished_jobs(monkeypatch):
    """Without Redis every annotation queues a job: the queue keeps the latest EMBEDDED_JOBS_KEPT done, not all of them."""
    import label_studio_ale.jobqueue as jobqueue
    from label_studio_ale.jobqueue import EmbeddedJobQueue

    monkeypatch.setattr(jobqueue, "EMBEDDED_JOBS_KEPT", 5)
    jobs = EmbeddedJobQueue()
    ids = [jobs.enqueue("sync", len, "x" * i) for i in range(12)]
    jobs.join()
    assert [jobs.info(i) for i in ids[:7]] == [None] * 7
    assert [jobs.info(i).result for i in ids[7:]] == [7, 8, 9, 10, 11]


def test_a_lost_jobs_error_says_what_it_was_and_how_far_a_training_got(redis):
    """Not "nothing was stored, press Start Training" for a sync, nor for a training that had stored its version."""
    from label_studio_ale.jobqueue import ABANDONED, ABANDONED_SYNC, ABANDONED_TRAINING, STORED_VERSION, RedisJobQueue

    jobs = RedisJobQueue(redis, "yolov5")
    sync, chunk, bare = (started_then_lost(redis, jobs, kind) for kind in ("sync", "predict", "train"))
    assert jobs.info(sync.id).error == ABANDONED_SYNC and "Start Training" not in ABANDONED_SYNC
    assert jobs.info(chunk.id).error == ABANDONED and "Start Training" not in ABANDONED
    assert jobs.info(bare.id).error == ABANDONED_TRAINING and "before it stored a new version" in ABANDONED_TRAINING

    stored = started_then_lost(redis, jobs, "train")
    stored.meta[STORED_VERSION] = {"project": 3, "version": "v0005", "served": False}
    stored.save_meta()
    error = jobs.info(stored.id).error
    assert "after it stored v0005, which is not served" in error and "`ale models --project 3 --promote v0005` serves it" in error

    promoted = started_then_lost(redis, jobs, "train")
    promoted.meta[STORED_VERSION] = {"project": 3, "version": "v0006", "served": True}
    promoted.save_meta()
    error = jobs.info(promoted.id).error
    assert "after it stored v0006 and made it the served version" in error and "Start Training" not in error


def test_recent_jobs_of_one_project_are_its_own_and_those_of_every_project(redis, monkeypatch):
    """The admin page of project 5 lists project 5's jobs and the scheduled sync of all projects, not project 6's."""
    from rq import Queue

    import label_studio_ale.jobqueue as jobqueue
    from label_studio_ale.jobqueue import QUEUE_SYNC, QUEUE_TRAIN, queue_name, recent_jobs

    monkeypatch.setattr(jobqueue, "SCAN_BATCH", 3)
    sync = Queue(queue_name("yolov5", QUEUE_SYNC), connection=redis)
    train = Queue(queue_name("yolov5", QUEUE_TRAIN), connection=redis)
    mine = [sync.enqueue("label_studio_ale.savings.record_annotations", args=(5, task)).id for task in (1, 2)]
    every = sync.enqueue("label_studio_ale.jobs.sync_all").id
    others = [sync.enqueue("label_studio_ale.savings.record_annotations", args=(6, task)).id for task in range(10)]  # newer
    trained = train.enqueue("label_studio_ale.training.train_project", args=(6,)).id
    assert [row["id"] for row in recent_jobs(redis, "yolov5", 2, project=5)] == [mine[1], every]
    assert [row["id"] for row in recent_jobs(redis, "yolov5", 10, project=5)] == [*mine, every]
    assert [row["id"] for row in recent_jobs(redis, "yolov5", 2, project=6)] == [trained, *others[-2:]]  # queue by queue
    assert [row["id"] for row in recent_jobs(redis, "yolov5", 20)] == [trained, *mine, every, *others], "without a project: every job"


@pytest.mark.parametrize("limit", [0, -2])
def test_recent_jobs_refuse_a_limit_below_one_before_reading_redis(limit):
    """ids[-0:] listed every job and ids[2:] all but the two oldest; `ale jobs --limit` is refused by argparse first."""
    from label_studio_ale.jobqueue import recent_jobs

    with pytest.raises(ValueError, match=rf"limit \(ale jobs --limit\) must be a positive integer, got {limit}"):
        recent_jobs(None, "yolov5", limit)


def test_a_lost_savings_job_is_not_called_a_sync():
    """record_annotations and record_tasks run on the sync queue; their lost job's error says what they were."""
    from types import SimpleNamespace

    from label_studio_ale.jobqueue import ABANDONED_SAVINGS, abandoned_message, queue_name

    for func in ("label_studio_ale.savings.record_annotations", "label_studio_ale.savings.record_tasks"):
        job = SimpleNamespace(func_name=func, origin=queue_name("yolov5", "sync"), meta={})
        assert abandoned_message(job) == ABANDONED_SAVINGS and "recompute" in ABANDONED_SAVINGS
