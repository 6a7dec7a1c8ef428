"""`ale worker` at start: it waits for Redis rather than exiting."""

import logging

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from label_studio_ale.worker import wait_for_redis


class FlakyRedis(Redis):
    """A client whose first `failures` pings find no server (the seam: everything else is redis-py's)."""

    def __init__(self, failures: int):
        super().__init__(host="redis.example", port=6390)
        self.failures = failures
        self.pings = 0

    def ping(self, **kwargs):
        self.pings += 1
        if self.pings <= self.failures:
            raise RedisConnectionError("Connection refused")
        return True


def test_a_worker_waits_for_redis_backing_off_and_says_where(caplog):
    slept = []
    redis = FlakyRedis(failures=7)
    with caplog.at_level(logging.WARNING, logger="label_studio_ale.worker"):
        wait_for_redis(redis, max_wait=10, sleep=slept.append)
    assert redis.pings == 8
    assert slept == [1, 2, 4, 8, 10, 10, 10]
    assert len(caplog.records) == 7
    assert "Redis at redis.example:6390 is not reachable (Connection refused)" in caplog.records[0].getMessage()


def test_a_reachable_redis_starts_the_worker_at_once():
    slept = []
    wait_for_redis(FlakyRedis(failures=0), sleep=slept.append)
    assert slept == []
