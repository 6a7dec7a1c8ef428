"""What keeps syncs from getting in each other's way: the project lock across processes without Redis, the
fan-out flag of a follow-up sync that will never run, the scheduled sync of deleted projects, and what a full
sync keeps. Against a small stateful Label Studio; Redis is a real server where it is involved."""

import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from label_studio_ale import fanout, jobs
from label_studio_ale import runtime as runtime_module
from label_studio_ale.jobqueue import QUEUE_PREDICT, QUEUE_SYNC, RedisJobQueue
from label_studio_ale.ls_client import LabelStudioError, TaskRef
from label_studio_ale.runtime import Runtime
from label_studio_ale.settings import Settings
from tests.test_jobs import CONFIG_XML, TrainedModel, embedded_pool


class FakeLS:
    """The Label Studio calls a sync makes, with the state they change: prediction versions, the served one, sampling."""

    def __init__(self, tasks):
        self.tasks = sorted(tasks)
        self.versions = {}  # version -> {task: score}
        self.model_version, self.sampling = "", "Sequential sampling"
        self.hook = None  # called once, after the next import

    def project(self, project):
        return SimpleNamespace(id=project, label_config=CONFIG_XML, model_version=self.model_version, sampling=self.sampling)

    def unlabeled_tasks(self, project, after_id=None):
        return iter([TaskRef(t, {"image": f"/data/upload/1/{t}.png"}) for t in self.tasks if after_id is None or t > after_id])

    def label_states(self, project, ids):
        return {int(t): False for t in ids if int(t) in self.tasks}

    def unlabeled_among(self, project, ids):
        return set(self.label_states(project, ids))

    def model_versions(self, project):
        return {v: len(s) for v, s in self.versions.items() if s}

    def import_predictions(self, project, items):
        for item in items:
            self.versions.setdefault(item["model_version"], {})[item["task"]] = item["score"]
        if self.hook:
            hook, self.hook = self.hook, None
            hook()
        return len(items)

    def switch_queue(self, project, version):
        if not self.versions.get(version):
            raise LabelStudioError(f"400: no predictions of {version}")
        self.model_version, self.sampling = version, "Uncertainty sampling"

    def delete_model_version(self, project, version):
        removed = len(self.versions.pop(version, {}))
        if version == self.model_version:
            self.model_version = ""  # LS resets the project's version
        return removed


def test_a_sync_in_another_process_on_the_same_model_dir_waits_for_the_running_one(tmp_path, monkeypatch):
    """`ale serve` (embedded) and `ale sync --full` share MODEL_DIR and LS, not a process: the second waits for the
    first instead of deleting its version mid-import, and LS ends up serving a version that holds every task."""
    monkeypatch.setattr(runtime_module, "FILE_LOCK_POLL", 0.01, raising=False)
    settings = Settings(model_dir=tmp_path, import_chunk_size=4, policy="ale-entropy-sum")
    ls = FakeLS(range(1, 11))
    serve = Runtime(settings, ls=ls, adapter_factory=TrainedModel)
    cli = Runtime(settings, ls=ls, adapter_factory=TrainedModel)  # another process: its own threads, locks and flags
    embedded_pool(serve, settings, range(1, 11))
    assert jobs.sync_priorities(1, runtime=serve)["status"] == "synced"
    waiting = threading.Event()
    holder = getattr(runtime_module, "_read_holder", lambda handle: "")
    monkeypatch.setattr(runtime_module, "_read_holder", lambda handle: (waiting.set(), holder(handle))[1], raising=False)
    answers = []
    other = threading.Thread(target=lambda: answers.append(jobs.sync_priorities(1, runtime=cli, full=True)))

    def cli_starts_mid_import():
        other.start()
        deadline = time.monotonic() + 10
        while not waiting.is_set() and other.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    ls.hook = cli_starts_mid_import
    first = jobs.sync_priorities(1, runtime=serve, full=True)
    other.join(30)
    assert first["status"] == "synced" and answers and answers[0]["status"] == "synced"
    assert ls.model_version == answers[0]["model_version"] and sorted(ls.versions[ls.model_version]) == list(range(1, 11))
    assert waiting.is_set(), "the second sync waited for the lock file"
    assert first["model_version"] not in ls.versions, "the older version went after the switch away from it"
    assert serve.store.served_queue(1).ls_version == ls.model_version


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.settings import Settings
    with Runtime(Settings(model_dir=sys.argv[1])).lock("sync:3") as held:
        print("held" if held else "refused", flush=True)
        sys.stdin.read()
    """
)


def test_a_sync_lock_another_process_holds_is_refused_with_its_pid_and_freed_when_it_exits(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "OTHER_PROCESS_WAIT", 0.3)
    runs = []
    synced = {"status": "synced", "stale_versions": [], "phases": {}}
    monkeypatch.setattr(jobs, "_sync", lambda rt, project, progress, **options: runs.append(project) or dict(synced))
    rt = Runtime(Settings(model_dir=tmp_path))
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        refused = rf"project 3 was not synced: another process \(pid {other.pid}\) sharing MODEL_DIR has been syncing it for over 0.005 minutes \(.*locks/sync-3\)"
        with pytest.raises(jobs.SyncError, match=refused):
            jobs.sync_priorities(3, runtime=rt)
        assert runs == []
        with rt.lock("sync:3") as held:
            assert not held and held.elsewhere, "refused at once without wait_elsewhere"
    finally:
        other.communicate("", timeout=30)  # it exits: the OS drops its flock
    assert jobs.sync_priorities(3, runtime=rt)["status"] == "synced" and runs == [3]


def wait_until(check, seconds=10):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_embedded_queue_never_waits_for_another_processs_sync_and_syncs_once_it_is_done(tmp_path, monkeypatch):
    """`ale serve` without Redis runs every job on one thread: its sync does not wait (an hour) while `ale sync`
    holds the project; the jobs behind it run at once, and the sync is queued again until it can run."""
    from label_studio_ale.jobqueue import EmbeddedJobQueue

    monkeypatch.setattr(jobs, "ELSEWHERE_RETRY", 0.3, raising=False)
    runs = []

    def sync(rt, project, progress, full, fanout):
        runs.append((project, full))
        return {"status": "synced", "stale_versions": [], "phases": {}}

    monkeypatch.setattr(jobs, "_sync", sync)
    rt = Runtime(Settings(model_dir=tmp_path))
    queue = EmbeddedJobQueue(rt)
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        started = time.monotonic()
        refused = [queue.enqueue(QUEUE_SYNC, jobs.sync_priorities, 3, full=True) for _ in range(3)]
        behind = queue.enqueue(QUEUE_SYNC, lambda runtime: "done")
        wait_until(lambda: queue.info(behind).status == "finished")
        assert time.monotonic() - started < 5 and runs == []
        answer = queue.info(refused[0]).result
        assert answer["status"] == "postponed" and answer["reason"] == (
            f"another process (pid {other.pid}) sharing MODEL_DIR is syncing project 3 ({tmp_path}/locks/sync-3); "
            "this sync is queued again every 0.3 s until that one is done (for 60 minutes at most)"
        )
        time.sleep(1)  # queued again, and refused again, while it still holds the project
        assert runs == []
    finally:
        other.communicate("", timeout=30)  # `ale sync` is done: the OS drops its flock
    wait_until(lambda: runs)
    time.sleep(1)
    assert runs == [(3, True)], "one sync covers the refused requests, the full rewrite among them"
    assert not rt.flag_raised(jobs.elsewhere_flag(3)) and not rt.flag_raised("sync-pending:3")


def test_a_postponed_embedded_sync_gives_up_once_another_process_held_the_project_for_the_wait(tmp_path, monkeypatch):
    from label_studio_ale.jobqueue import EmbeddedJobQueue

    monkeypatch.setattr(jobs, "ELSEWHERE_RETRY", 0.1, raising=False)
    monkeypatch.setattr(jobs, "OTHER_PROCESS_WAIT", 1.2)
    rt = Runtime(Settings(model_dir=tmp_path))
    queue = EmbeddedJobQueue(rt)
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        queue.enqueue(QUEUE_SYNC, jobs.sync_priorities, 3)
        failed = lambda: [info for info in list(queue._jobs.values()) if info.status == "failed"]
        wait_until(failed)
        queued = len(queue._jobs)
        time.sleep(0.5)
        assert len(queue._jobs) == queued and 2 <= queued <= 14, "requested again every ELSEWHERE_RETRY until OTHER_PROCESS_WAIT"
        assert [info.error for info in failed()] == [
            f"SyncError: project 3 was not synced: another process (pid {other.pid}) sharing MODEL_DIR has been syncing it "
            f"for over 0.02 minutes ({tmp_path}/locks/sync-3); let it finish or stop it, then run `ale sync --project 3`"
        ]
    finally:
        other.communicate("", timeout=30)


def test_threads_of_one_process_still_coalesce_rather_than_wait(tmp_path):
    """The file lock is taken by one thread of a process at a time: another thread's request is coalesced, as before."""
    rt = Runtime(Settings(model_dir=tmp_path))
    with rt.lock("sync:4") as held:
        assert held and rt.lock_path("sync:4") == tmp_path / "locks" / "sync-4"
        answer = []
        thread = threading.Thread(target=lambda: answer.append(jobs.sync_priorities(4, runtime=rt)))
        thread.start()
        thread.join(10)
        assert answer[0]["status"] == "coalesced" and rt.flag_raised("sync-pending:4")


def test_an_unwritable_model_dir_says_so_at_the_first_lock(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match=r"MODEL_DIR: cannot create the lock file .*make MODEL_DIR writable, or set REDIS_URL"):
        with Runtime(Settings(model_dir=blocker)).lock("sync:1"):
            pass


def test_a_full_sync_keeps_the_previous_models_detections(tmp_path):
    """As any rewrite does: the current model's and the one served before it."""
    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum")
    rt = Runtime(settings, ls=FakeLS(range(1, 11)), adapter_factory=lambda: Versioned("m-0"))
    embedded_pool(rt, settings, range(1, 11))  # stored under m-1
    rt.store.put_many(1, "m-0", list(rt.store.get_many(1, "m-1").values()))
    rt.store.delete_version(1, "m-1")
    assert jobs.sync_priorities(1, runtime=rt)["status"] == "synced"  # served by m-0
    embedded_pool(rt, settings, range(1, 11))  # m-1 trained and promoted, the pool predicted
    rt._adapter = Versioned("m-1")
    assert jobs.sync_priorities(1, runtime=rt, full=True)["status"] == "synced"
    assert sorted(rt.store.versions(1)) == ["m-0", "m-1"]
    assert jobs.sync_priorities(1, runtime=rt, full=True)["status"] == "synced", "a full sync of the same model rewrites"


class Versioned(TrainedModel):
    def __init__(self, version):
        self.version = version


def gone(project):
    from label_studio_sdk.core.api_error import ApiError

    try:
        raise ApiError(status_code=404, body={"detail": "Not found."})
    except ApiError as exc:  # as the client raises it
        raise LabelStudioError(f"project {project} not found in Label Studio at http://ls:8080: check --project / the project id") from exc


class ListedProjects:
    """Label Studio's list of the projects its key's user sees; `error` when it cannot be read."""

    def __init__(self, projects=(), error=None):
        self.projects, self.error, self.asked = set(projects), error, []

    def project_ids(self, among):
        self.asked.append(sorted(among))
        if self.error is not None:
            raise self.error
        return self.projects & set(among)


def test_the_scheduled_sync_drops_a_project_label_studio_no_longer_has(tmp_path, redis_url, caplog, monkeypatch):
    from redis import Redis

    ls = ListedProjects({2, 5})
    rt = Runtime(Settings(model_dir=tmp_path, redis_url=redis_url, sync_projects=(5,)), ls=ls)
    key = jobs.projects_key(rt.settings.adapter)
    Redis.from_url(redis_url).sadd(key, 1, 2)
    synced = []

    def sync(project, runtime):
        if project in (1, 5):
            gone(project)
        if project == 2:
            raise LabelStudioError("Label Studio could not list tasks: 502")
        synced.append(project)
        return {"status": "unchanged"}

    monkeypatch.setattr(jobs, "sync_priorities", sync)
    results = jobs.sync_all(runtime=rt)
    assert results[1].startswith("dropped: project 1 not found") and results[2].startswith("failed: ")
    assert results[5].endswith("remove 5 from SYNC_PROJECTS"), "listed by hand: said, not dropped"
    assert {int(p) for p in Redis.from_url(redis_url).smembers(key)} == {2}, "a passing failure keeps its project"
    assert ls.asked == [[1]], "LS's own list of projects confirms the 404, in one listing"
    assert caplog.text.count("project 1 is not among the projects Label Studio lists for LABEL_STUDIO_API_KEY's user") == 1
    caplog.clear()
    assert set(jobs.sync_all(runtime=rt)) == {2, 5} and "project 1" not in caplog.text


def test_the_scheduled_sync_keeps_projects_answered_404_unless_label_studio_confirms_they_are_gone(tmp_path, redis_url, monkeypatch):
    """LABEL_STUDIO_URL with a wrong path (a reverse proxy's) answers 404 for every project, and for the list of
    projects too: one round must not drop them all. A project LS still lists stays as well."""
    from redis import Redis

    wrong_path = LabelStudioError("http://ls:8080/api/projects/ answered 404: LABEL_STUDIO_URL must be the address ...")
    ls = ListedProjects(error=wrong_path)
    rt = Runtime(Settings(model_dir=tmp_path, redis_url=redis_url), ls=ls)
    key = jobs.projects_key(rt.settings.adapter)
    Redis.from_url(redis_url).sadd(key, 1, 2, 3)
    monkeypatch.setattr(jobs, "sync_priorities", lambda project, runtime: gone(project))
    results = jobs.sync_all(runtime=rt)
    assert results == {
        p: f"failed: project {p} not found in Label Studio at http://ls:8080: check --project / the project id; kept: its "
        f"absence could not be confirmed ({wrong_path})"
        for p in (1, 2, 3)
    }
    assert {int(p) for p in Redis.from_url(redis_url).smembers(key)} == {1, 2, 3} and ls.asked == [[1, 2, 3]]
    ls.error, ls.projects = None, {2}
    results = jobs.sync_all(runtime=rt)
    assert results[2].endswith("kept: Label Studio lists project 2 among its projects")
    assert results[1].startswith("dropped: ") and results[3].startswith("dropped: ")
    assert {int(p) for p in Redis.from_url(redis_url).smembers(key)} == {2}


def test_a_scheduled_sync_that_restores_the_sampling_says_so(tmp_path):
    settings = Settings(model_dir=tmp_path, policy="ale-entropy-sum", sync_projects=(1,))
    ls = FakeLS(range(1, 6))
    rt = Runtime(settings, ls=ls, adapter_factory=TrainedModel)
    embedded_pool(rt, settings, range(1, 6))
    assert jobs.sync_all(runtime=rt) == {1: "synced"}
    ls.sampling = "Sequential sampling"  # an admin turned the ranked order off
    assert jobs.sync_all(runtime=rt) == {1: "sampling_restored"} and ls.sampling == "Uncertainty sampling"
    assert jobs.sync_all(runtime=rt) == {1: "unchanged"}


def fanned_out(rt, follow_id):
    """A fan-out as `fanout.fan_out` leaves it, nothing run yet: the flag, one chunk, the follow-up deferred on it."""
    queue = RedisJobQueue(rt.redis, rt.settings.adapter)
    rt.raise_flag(fanout.fanout_flag(1), follow_id, fanout.FANOUT_TTL)
    chunk = queue.enqueue(QUEUE_PREDICT, fanout.predict_chunk, 1, "m-1", [(1, {})], follow_up=follow_id)
    queue.enqueue(QUEUE_SYNC, fanout.sync_after_prediction, 1, "m-1", follow_up=follow_id, job_id=follow_id, depends_on=[chunk])
    return chunk


def fan_out_runtime(tmp_path, redis_url):
    settings = Settings(model_dir=tmp_path, redis_url=redis_url, policy="ale-entropy-sum")
    rt = Runtime(settings, ls=FakeLS(range(1, 11)), adapter_factory=TrainedModel)
    embedded_pool(rt, settings, range(1, 11))
    return rt


def test_syncs_coalesce_only_while_the_follow_up_of_a_fan_out_can_still_run(tmp_path, redis_url):
    from rq.job import Job

    rt = fan_out_runtime(tmp_path, redis_url)
    chunk = fanned_out(rt, "follow-1")
    rt.redis.expire("ale:flag:" + fanout.fanout_flag(1), 60)
    coalesced = jobs.sync_priorities(1, runtime=rt, full=True)
    assert coalesced["status"] == "coalesced" and "sync job follow-1 (deferred) follows them" in coalesced["reason"]
    assert rt.redis.ttl("ale:flag:" + fanout.fanout_flag(1)) > 60, "renewed while it waits"
    assert rt.flag_raised(jobs.full_sync_flag(1)), "the full rewrite is owed to the follow-up"
    Job.fetch(chunk, connection=rt.redis).delete()  # its chunk deleted (rq-dashboard): rq never releases it
    result = jobs.sync_priorities(1, runtime=rt)
    assert result["status"] == "synced" and not rt.flag_raised(fanout.fanout_flag(1))


@pytest.mark.parametrize("follow_up", ["gone", "finished", "failed"])
def test_a_fan_out_flag_whose_follow_up_will_never_run_holds_no_sync_back(tmp_path, redis_url, follow_up):
    from rq.job import Job

    rt = fan_out_runtime(tmp_path, redis_url)
    fanned_out(rt, "follow-2")
    job = Job.fetch("follow-2", connection=rt.redis)
    if follow_up == "gone":
        job.delete()
    else:
        job.set_status(follow_up)
    result = jobs.sync_priorities(1, runtime=rt, full=True)
    assert result["status"] == "synced" and not rt.flag_raised(fanout.fanout_flag(1))


def test_a_sync_that_runs_instead_of_a_lost_follow_up_lowers_only_that_follow_ups_flag(tmp_path, redis_url, monkeypatch):
    rt = fan_out_runtime(tmp_path, redis_url)
    rt.raise_flag(fanout.fanout_flag(1), "follow-lost", fanout.FANOUT_TTL)

    def lost(runtime, job_id):
        runtime.raise_flag(fanout.fanout_flag(1), "follow-new", fanout.FANOUT_TTL)  # a fan-out meanwhile (its lock lapsed)
        return False, "it is failed"

    monkeypatch.setattr(jobs, "follow_up_waits", lost)
    assert jobs.sync_priorities(1, runtime=rt, full=True)["status"] == "synced"
    assert rt.flag_value(fanout.fanout_flag(1)) == "follow-new"


def test_each_chunk_renews_the_fan_out_flag_of_its_own_follow_up(tmp_path, redis_url):
    rt = fan_out_runtime(tmp_path, redis_url)
    flag = "ale:flag:" + fanout.fanout_flag(1)
    rt.raise_flag(fanout.fanout_flag(1), "follow-3", 30)
    result = fanout.predict_chunk(1, "m-0", [(1, {})], follow_up="follow-3", runtime=rt)  # another model now: skipped
    assert result["status"] == "skipped" and rt.redis.ttl(flag) > fanout.FANOUT_TTL - 60
    rt.raise_flag(fanout.fanout_flag(1), "follow-4", 30)  # a later fan-out's: not this chunk's to renew
    fanout.predict_chunk(1, "m-0", [(1, {})], follow_up="follow-3", runtime=rt)
    assert rt.redis.ttl(flag) <= 30 and rt.flag_value(fanout.fanout_flag(1)) == "follow-4"


def test_an_embedded_flag_is_renewed_only_while_it_holds_the_value(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: now[0])
    rt = Runtime(Settings(model_dir=tmp_path))
    rt.raise_flag("fanout", "a", ttl=10)
    now[0] = 9
    assert rt.renew_flag("fanout", "a", ttl=10) and not rt.renew_flag("fanout", "b", ttl=100)
    now[0] = 18
    assert rt.flag_value("fanout") == "a"
    now[0] = 19
    assert rt.flag_value("fanout") is None and not rt.renew_flag("fanout", "a"), "a lapsed flag is not raised again"
