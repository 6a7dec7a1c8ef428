"""Runtime locks on a real Redis: a lease renewed while held, and a lease that lapsed refusing the holder's writes."""

import time

import pytest

from label_studio_ale import runtime as runtime_module
from label_studio_ale.runtime import LockLostError, Runtime
from label_studio_ale.settings import Settings


def wait_for(event, seconds):
    deadline = time.monotonic() + seconds
    while not event.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    return event.is_set()


def test_a_lock_whose_key_vanished_is_lost_and_refuses_the_holders_writes(redis_url, monkeypatch):
    from redis import Redis

    monkeypatch.setattr(runtime_module, "LOCK_LEASE", 0.6)  # renewed every 0.2 s
    rt = Runtime(Settings(redis_url=redis_url))
    with rt.lock("sync:1") as held:
        assert held and not wait_for(held.lost, 1.5), "renewed: kept past two leases"
        rt.check_lock("sync:1", "switching project 1")  # still held: nothing raised
        Redis.from_url(redis_url).delete("ale:lock:sync:1")  # Redis restarted without it
        assert wait_for(held.lost, 2)
        with Runtime(Settings(redis_url=redis_url)).lock("sync:1") as other:
            assert other, "another job can take it now"
        with pytest.raises(LockLostError, match=r"^switching project 1 to v2 was not done: the lock sync:1 lapsed"):
            rt.check_lock("sync:1", "switching project 1 to v2")
    rt.check_lock("sync:1", "anything")  # released: no longer this thread's to check


def test_an_embedded_lock_is_never_lost_and_unheld_names_are_not_checked(tmp_path):
    rt = Runtime(Settings(model_dir=tmp_path))
    with rt.lock("train:3") as held:
        assert held and not held.lost.is_set()
        rt.check_lock("train:3", "promoting v0001")
        with rt.lock("train:3") as again:
            assert not again
    rt.check_lock("sync:9", "a lock this thread never took")


@pytest.fixture
def redis_server():
    from tests.support.redis_server import start_redis

    server = start_redis()
    yield server
    server.stop()


def test_a_lock_taken_by_another_job_after_a_restart_is_refused_at_once(redis_server):
    """Redis restarted without the key and another job took it: the holder's next check refuses, without waiting
    for its renewing thread (a third of a lease, 20 s) to notice."""
    rt = Runtime(Settings(redis_url=redis_server.url))
    with rt.lock("train:1") as held:
        held.check("promoting v0001")  # held: nothing raised
        redis_server.restart()
        with Runtime(Settings(redis_url=redis_server.url)).lock("train:1") as other:
            assert other, "another job takes it"
            with pytest.raises(LockLostError, match=r"^promoting v0002 was not done: the lock train:1 lapsed.*; the next run does it$"):
                held.check("promoting v0002")
            assert held.lost.is_set()
            with pytest.raises(LockLostError, match=r"; promote it by hand$"):
                held.check("promoting v0002", "promote it by hand")
            with pytest.raises(LockLostError, match="the lock train:1 lapsed"):
                rt.check_lock("train:1", "switching")
            other.check("promoting v0003")  # the new holder's writes go on


def test_a_check_renews_the_lease_it_proves(redis_server):
    from redis import Redis

    rt = Runtime(Settings(redis_url=redis_server.url))
    with rt.lock("sync:2") as held:
        client = Redis.from_url(redis_server.url)
        client.pexpire("ale:lock:sync:2", 500)  # nearly lapsed: the write after the check must not outlive it
        held.check("switching project 2")
        assert client.pttl("ale:lock:sync:2") > 50_000


def test_a_redis_that_cannot_answer_refuses_the_holders_writes(redis_server):
    rt = Runtime(Settings(redis_url=redis_server.url))
    with rt.lock("sync:3") as held:
        redis_server.stop()
        refused = r"^switching project 3 was not done: Redis could not confirm that this job still holds the lock sync:3 \(ConnectionError"
        with pytest.raises(LockLostError, match=refused):
            held.check("switching project 3")


def test_the_runtimes_redis_gives_up_on_a_server_that_never_answers(monkeypatch):
    """A Redis that accepts and then says nothing (a host gone mid-connection) must not block the lock's renewal or
    its checks forever; REDIS_URL's own timeouts win."""
    import socket
    import threading

    from redis.exceptions import TimeoutError as RedisTimeoutError

    monkeypatch.setattr(runtime_module, "REDIS_SOCKET_TIMEOUT", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts connections; nothing ever reads or answers
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        outcome = []

        def ask():
            try:
                Runtime(Settings(redis_url=url)).redis.get("ale:lock:train:1")
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(10)
        assert outcome and isinstance(outcome[0], RedisTimeoutError), "the command timed out instead of waiting forever"
    kwargs = Runtime(Settings(redis_url=url + "?socket_timeout=7")).redis.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.0, 0.3)


def test_a_flag_lapses_after_its_time_to_live_without_redis_too(tmp_path, monkeypatch):
    """Embedded mode keeps flags in the process; a flag raised for an hour must not stay raised for good."""
    from label_studio_ale import runtime as runtime_module

    now = [1000.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: now[0])
    rt = Runtime(Settings(model_dir=tmp_path))
    assert rt.claim_flag("retry", "1", ttl=60) is None and rt.claim_flag("retry", "2", ttl=60) == "1"
    now[0] += 59
    assert rt.flag_raised("retry") and rt.flag_value("retry") == "1"
    now[0] += 1
    assert not rt.flag_raised("retry") and rt.claim_flag("retry", "3", ttl=60) is None and rt.flag_value("retry") == "3"
    assert rt.take_flag("retry") and not rt.take_flag("retry")
    rt.raise_flag("queued", ttl=5)
    now[0] += 5
    assert not rt.take_flag("queued"), "lapsed: nobody takes it"


def test_a_lock_file_that_cannot_be_made_names_the_commands_that_take_locks_there(tmp_path):
    """The message lists what shares MODEL_DIR's lock files: every command it names must be one `ale` has."""
    import re

    from label_studio_ale.cli import build_parser
    from label_studio_ale.errors import ConfigError

    (tmp_path / "locks").write_text("a file where the folder should be")
    with pytest.raises(ConfigError) as refused:
        with Runtime(Settings(model_dir=tmp_path)).lock("sync:1"):
            pass
    message = str(refused.value)
    assert message.startswith(f"MODEL_DIR: cannot create the lock file {tmp_path / 'locks' / 'sync-1'}")
    named = re.findall(r"\bale (\w+)", message)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert named and set(named) <= set(commands), named
    assert "ale models --promote" in message
