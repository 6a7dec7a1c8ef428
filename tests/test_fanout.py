"""The sync that follows a fan-out, at the unit seam (the fan-out across real workers is tests/integration/test_fanout.py)."""

import pytest

from label_studio_ale import fanout, jobs
from label_studio_ale.runtime import Runtime
from label_studio_ale.settings import Settings


class Served:
    classes = ("bird",)

    def __init__(self, version):
        self.version = version


@pytest.mark.parametrize("served, fans_out", [("m-1", False), ("m-2", True)])
def test_the_follow_up_sync_fans_out_again_only_for_a_model_promoted_meanwhile(tmp_path, monkeypatch, served, fans_out):
    """Same model: what no chunk stored is predicted by the follow-up itself. A model promoted while the chunks ran
    (they skipped): the whole pool is new to it, and one job on one worker would predict it all."""
    rt = Runtime(Settings(model_dir=tmp_path), adapter_factory=lambda: Served(served))
    rt.raise_flag(fanout.fanout_flag(3), "follow-up", fanout.FANOUT_TTL)
    calls = []
    monkeypatch.setattr(jobs, "sync_priorities", lambda project, runtime, progress, fanout: calls.append((project, fanout)) or {})
    fanout.sync_after_prediction(3, "m-1", runtime=rt)
    assert calls == [(3, fans_out)] and not rt.flag_raised(fanout.fanout_flag(3))
    fanout.sync_after_prediction(3, runtime=rt)  # queued before the follow-up knew its model version
    assert calls[-1] == (3, False)


def add(a, b):
    return a + b


def fanned_out(redis_url, tmp_path, chunks=2):
    """A fan-out as `fanout.fan_out` queues it: chunks on the predict queue, the follow-up deferred on all of them."""
    from label_studio_ale.jobqueue import QUEUE_PREDICT, QUEUE_SYNC, RedisJobQueue

    rt = Runtime(Settings(model_dir=tmp_path, redis_url=redis_url))
    queue = RedisJobQueue(rt.redis, rt.settings.adapter)
    ids = [queue.enqueue(QUEUE_PREDICT, add, n, 1, retries=fanout.CHUNK_RETRIES) for n in range(chunks)]
    queue.enqueue(QUEUE_SYNC, add, 0, 0, job_id="follow", depends_on=ids, retry=True)
    return rt, queue, ids


def run(rt, queue, job_id):
    from rq import SimpleWorker
    from rq.job import Job

    from label_studio_ale.jobqueue import QUEUE_PREDICT

    predict = queue.queues[QUEUE_PREDICT]
    SimpleWorker([predict], connection=rt.redis).execute_job(Job.fetch(job_id, connection=rt.redis), predict)


def test_a_follow_up_still_waits_on_its_last_chunks_after_rq_deleted_the_finished_ones(tmp_path, redis_url):
    """rq deletes a finished chunk after its result_ttl (500 s) and still releases the follow-up when the last chunk
    ends: a fan-out longer than that keeps coalescing the syncs requested meanwhile."""
    from rq.job import Job

    rt, queue, (first, last) = fanned_out(redis_url, tmp_path)
    run(rt, queue, first)
    Job.fetch(first, connection=rt.redis).delete()  # as its result_ttl does
    assert fanout.follow_up_waits(rt, "follow") == (True, "deferred")
    run(rt, queue, last)
    assert fanout.follow_up_waits(rt, "follow") == (True, "queued"), "rq released it: the deleted chunk counted as done"


@pytest.mark.parametrize("ending, waits", [("failed", True), ("canceled", False), ("stopped", False)])
def test_a_chunk_that_ended_holds_the_follow_up_back_only_where_rq_will_never_release_it(tmp_path, redis_url, ending, waits):
    """Chunks are queued with allow_failure: a failed one still releases the follow-up with the rest; a canceled or
    stopped one never does (rq's dependencies_are_met), and later syncs must not wait for it."""
    from rq.job import Job

    rt, queue, (first, last) = fanned_out(redis_url, tmp_path)
    Job.fetch(first, connection=rt.redis).set_status(ending)
    answer = fanout.follow_up_waits(rt, "follow")
    assert answer[0] is waits
    if not waits:
        assert answer[1] == f"it waits on prediction job {first}, which is {ending}, so rq will never release it"
    run(rt, queue, last)
    assert (Job.fetch("follow", connection=rt.redis).get_status() == "queued") is waits, "what rq itself does"


def test_a_follow_up_left_deferred_after_its_chunks_all_ended_will_not_run(tmp_path, redis_url):
    from rq.job import Job

    rt, _, (first, last) = fanned_out(redis_url, tmp_path)
    Job.fetch(first, connection=rt.redis).delete()
    Job.fetch(last, connection=rt.redis).set_status("finished")  # ended without releasing it (its worker died between)
    assert fanout.follow_up_waits(rt, "follow") == (False, "it waits, but none of the prediction jobs it depends on is left to release it")


@pytest.mark.parametrize("with_redis", [True, False])
def test_a_follow_up_lowers_the_fan_out_flag_only_while_it_names_it(tmp_path, monkeypatch, request, with_redis):
    """A sync found this follow-up unable to run (a chunk canceled), took the flag and fanned out again: the first
    follow-up, released after all, must leave the second fan-out's flag to cover the requests meanwhile."""
    redis_url = request.getfixturevalue("redis_url") if with_redis else ""
    rt = Runtime(Settings(model_dir=tmp_path, redis_url=redis_url), adapter_factory=lambda: Served("m-1"))
    monkeypatch.setattr(jobs, "sync_priorities", lambda project, runtime, progress, fanout: {})
    flag = fanout.fanout_flag(3)
    rt.raise_flag(flag, "follow-2", fanout.FANOUT_TTL)
    fanout.sync_after_prediction(3, "m-1", follow_up="follow-1", runtime=rt)
    assert rt.flag_value(flag) == "follow-2"
    fanout.sync_after_prediction(3, "m-1", follow_up="follow-2", runtime=rt)
    assert not rt.flag_raised(flag)


def test_a_fan_out_tells_its_follow_up_its_own_id(tmp_path, redis_url):
    from rq.job import Job

    from label_studio_ale.ls_client import TaskRef

    rt = Runtime(Settings(model_dir=tmp_path, redis_url=redis_url, predict_job_tasks=2))
    queued = fanout.fan_out(rt, 3, [TaskRef(t, {}) for t in range(5)], "m-1")
    follow = Job.fetch(queued["follow_up"], connection=rt.redis)
    assert follow.kwargs == {"follow_up": queued["follow_up"]} and len(queued["chunks"]) == 3
    assert rt.flag_value(fanout.fanout_flag(3)) == queued["follow_up"]
