"""Runtime locks on a real Redis: a lease renewed while held, and a lease that lapsed refusing the holder's writes."""

import time

import pytest

from label_studio_ale import runtime as runtime_module
from label_studio_ale.runtime import LockLostError, Runtime
from label_studio_ale.settings import Settings


@pytest.fixture
def redis_url():
    from tests.support.redis_server import start_redis

    server = start_redis()
    yield server.url
    server.stop()


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
