"""Fixtures for the hardening suite: jobs with stored inputs, and child processes that are always cleaned up."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest
from django.utils import timezone
from dramatiq.brokers.redis import RedisBroker
from PIL import Image

from generation import storage
from generation.models import Job
from tests.hardening.processes import Process, RedisServer, TcpRelay


def png_bytes(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def queued_job(user) -> Iterator[Callable[..., Job]]:
    """queued_job(prompt, owner=user) -> a QUEUED tiny-model job with its input stored where the services put it."""
    made: list[Job] = []

    def make(prompt: str, owner=None) -> Job:
        job = Job(owner=owner or user, prompt=prompt, seed=7, num_steps=4, resolution="480p", num_frames=5,
                  model="tiny")
        name = storage.input_name(job)
        storage.save_bytes(name, png_bytes(), "image/png")
        job.input_image.name = name
        job.save(force_insert=True)
        made.append(job)
        return job

    yield make
    for job in made:
        for name in (storage.input_name(job), storage.output_name(job), storage.poster_name(job)):
            storage.delete_quietly(name)


@pytest.fixture
def finished_job(user):
    """A SUCCEEDED job of alice with an input, an output and a poster in storage."""
    made = []

    def make(owner=None) -> Job:
        job = Job(owner=owner or user, prompt="done", seed=1, num_frames=5, model="tiny",
                  status=Job.Status.SUCCEEDED, progress=1.0, finished_at=timezone.now())
        for name, data, kind in ((storage.input_name(job), png_bytes(), "image/png"),
                                 (storage.output_name(job), b"\0\0\0\x18ftypmp42" + b"\0" * 64, "video/mp4"),
                                 (storage.poster_name(job), b"\xff\xd8\xff\xd9", "image/jpeg")):
            storage.save_bytes(name, data, kind)
        job.input_image.name, job.output_video.name = storage.input_name(job), storage.output_name(job)
        job.poster.name = storage.poster_name(job)
        job.save(force_insert=True)
        made.append(job)
        return job

    yield make
    for job in made:
        for name in (storage.input_name(job), storage.output_name(job), storage.poster_name(job)):
            storage.delete_quietly(name)


@pytest.fixture
def signed_names(monkeypatch) -> list[str]:
    """Every file name a link is signed for, in order."""
    names: list[str] = []
    real = storage.signed_url

    def spy(name: str, **kwargs) -> str:
        names.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(storage, "signed_url", spy)
    return names


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
