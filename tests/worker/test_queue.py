"""The broker and the actor on the real Redis server: messages go to this run's namespace, a worker thread with
one thread consumes the "gpu" queue, and a duplicate message runs the job once."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import transaction
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from generation import queue
from generation.actors import ACTOR_TIME_LIMIT_MS, run_job, start_worker
from generation.models import Job
from turbosite import broker

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_suite_uses_redis_with_this_runs_namespace():
    current = broker.ensure_broker()
    assert isinstance(current, RedisBroker)
    assert current.namespace == settings.QUEUE_NAMESPACE
    assert run_job.broker is current
    assert broker.ping() is True


def test_without_redis_the_broker_is_in_process(settings):
    settings.REDIS_URL = ""
    assert isinstance(broker.build_broker(), StubBroker)


def test_actor_options():
    assert run_job.queue_name == queue.GPU_QUEUE == "gpu"
    assert run_job.actor_name == queue.RUN_JOB  # the name generation.queue addresses its messages to
    assert run_job.options["max_retries"] == 0
    assert run_job.options["time_limit"] == ACTOR_TIME_LIMIT_MS == (settings.TURBO_JOB_TIME_LIMIT_S + 60) * 1000
    assert run_job.options["notify_shutdown"] is True


def test_enqueue_after_commit_only(make_job):
    current = broker.ensure_broker()
    current.flush_all()
    with transaction.atomic():
        job = make_job()
        transaction.on_commit(lambda: queue.enqueue_job(job.id))
        assert queue.queue_depth() == 0  # nothing sent while the row is uncommitted
    assert queue.queue_depth() == 1
    current.flush_all()


def test_worker_thread_runs_a_duplicated_message_once(make_job, fake_loader):
    current = broker.ensure_broker()
    current.flush_all()
    job = make_job()
    queue.enqueue_job(job.id)
    queue.enqueue_job(job.id)  # a duplicate delivery
    dramatiq_worker = start_worker(threads=1)
    try:
        current.join(queue.GPU_QUEUE, timeout=30_000)
        dramatiq_worker.join()
    finally:
        dramatiq_worker.stop(timeout=5_000)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 1
    assert len(fake_loader.pipeline().requests) == 1
    assert queue.queue_depth() == 0


def test_a_database_outage_sends_the_message_again_later(monkeypatch):
    from django.db import OperationalError

    from generation import actors

    def database_down(job_id: str) -> None:
        raise OperationalError("connection to server at 127.0.0.1 failed")

    sent: list[tuple] = []
    monkeypatch.setattr("generation.worker.execute_job", database_down)
    monkeypatch.setattr("generation.queue.enqueue_job",
                        lambda job_id, *, delay_ms=None: sent.append(((job_id,), delay_ms)))
    actors.run_job.fn("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    assert sent == [(("1b4e28ba-2fa1-11d2-883f-0016d3cca427",), actors.DATABASE_RETRY_DELAY_MS)]


def test_a_busy_worker_leaves_the_next_message_in_redis_for_other_gpus(make_job, fake_loader):
    import threading

    current = broker.ensure_broker()
    current.flush_all()
    release = threading.Event()
    started = threading.Event()

    def hold_the_gpu(step: int) -> None:
        started.set()
        release.wait(20)

    fake_loader.options = {"on_step": hold_the_gpu}
    first, second = make_job(num_steps=1), make_job(num_steps=1)
    queue.enqueue_job(first.id)
    queue.enqueue_job(second.id)
    dramatiq_worker = start_worker(threads=1)
    try:
        assert started.wait(20)
        assert queue.queue_depth() == 1  # the second job is still claimable by any other worker
        release.set()
        current.join(queue.GPU_QUEUE, timeout=30_000)
        dramatiq_worker.join()
    finally:
        release.set()
        dramatiq_worker.stop(timeout=5_000)
    assert set(Job.objects.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}


def test_a_delayed_message_waits_on_the_delay_queue(make_job):
    current = broker.ensure_broker()
    current.flush_all()
    job = make_job()
    queue.enqueue_job(job.id, delay_ms=60_000)
    assert queue.queue_depth() == 0  # not runnable yet
    assert queue.messages_waiting() is True  # but not lost: the reaper must not send it again
    current.flush_all()
    assert queue.messages_waiting() is False
