"""Fixtures for the outage tests: queued jobs with stored inputs, and child processes (GPU workers, Redis, TCP
relays) that are always cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from generation.models import Job
from tests.factories import delete_job_files, stored_job
from tests.outages.processes import Process, RedisServer, TcpRelay
from tests.s3server import own_s3  # noqa: F401  (for the tests that freeze a storage server)


@pytest.fixture
def queued_job(user) -> Iterator[Callable[..., Job]]:
    """queued_job(prompt, owner=user) -> a QUEUED tiny-model job with its input stored where the services put it."""
    made: list[Job] = []

    def make(prompt: str, owner=None) -> Job:
        job = stored_job(owner or user, prompt=prompt, num_frames=5)
        made.append(job)
        return job

    yield make
    delete_job_files(made)


@pytest.fixture
def processes(transactional_db) -> Iterator[list[Process]]:
    """Append every child process here: they are killed before the test database is flushed."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def relays() -> Iterator[list[TcpRelay]]:
    made: list[TcpRelay] = []
    yield made
    for relay in made:
        relay.close()


def send_run_job(env: dict[str, str], job_id, times: int = 1) -> None:
    """Put `times` run_job messages for `job_id` on the gpu queue of the children's Redis namespace, as the web
    process would (a broker of our own: the test process's global broker serves another namespace)."""
    broker = RedisBroker(url=env["REDIS_URL"], namespace=env["QUEUE_NAMESPACE"])
    try:
        broker.declare_queue("gpu")
        for _ in range(times):
            broker.enqueue(dramatiq.Message(queue_name="gpu", actor_name="run_job", args=(str(job_id),), kwargs={},
                                            options={}))
    finally:
        broker.close()


def queue_length(env: dict[str, str]) -> int:
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    return int(client.llen(f"{env['QUEUE_NAMESPACE']}:gpu"))
