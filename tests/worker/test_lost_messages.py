"""Lost queue messages are found directly: a QUEUED job whose recorded message id the broker holds nowhere (not
waiting, not delayed, not taken by a worker) is sent again on the reaper's next round, ahead of the jobs submitted
after it and in submission order, however busy the queue is. Real Redis, this run's namespace."""

from __future__ import annotations

import logging
from datetime import timedelta

import dramatiq
import pytest
from django.utils import timezone

from generation import queue, reaper
from generation.models import Job
from turbosite import broker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_queue():
    current = broker.ensure_broker()
    current.flush_all()
    yield current
    current.flush_all()


def _waiting_job_ids(current) -> list[str]:
    """The job ids of the messages on the gpu queue, head first."""
    client = current.client
    name = f"{current.namespace}:{broker.GPU_QUEUE}"
    keys = [key.decode() for key in client.lrange(name, 0, -1)]
    bodies = client.hmget(f"{name}.msgs", keys)
    return [dramatiq.Message.decode(body).args[0] for body in bodies]


def test_lost_messages_are_sent_again_at_the_head_in_submission_order(make_job, redis_queue, caplog):
    old = timezone.now() - timedelta(minutes=3)
    first, second = make_job(), make_job()
    Job.objects.filter(id=first.id).update(created_at=old)
    Job.objects.filter(id=second.id).update(created_at=old + timedelta(seconds=1))
    for job in (second, first):  # sent out of order on purpose: the resend restores submission order
        queue.enqueue_job(job.id)
    assert Job.objects.get(id=first.id).message_id  # the id the broker keeps it under is on the row

    redis_queue.flush_all()  # Redis restarted empty: both messages are gone
    newer = [make_job() for _ in range(4)]
    for job in newer:
        queue.enqueue_job(job.id)
    # A worker has taken one message and runs it (not acknowledged yet): held, so not lost, however old its job.
    consumer = redis_queue.consume(broker.GPU_QUEUE, prefetch=1, timeout=1000)
    try:
        in_flight = next(message for message in consumer if message is not None)
        assert in_flight.args[0] == str(newer[0].id)
        Job.objects.filter(id=newer[0].id).update(created_at=old - timedelta(minutes=1))

        with caplog.at_level(logging.WARNING, logger="generation.reaper"):
            resent = reaper.resend_lost_messages()  # well under TURBO_QUEUED_RESEND_S: no waiting for an empty queue
    finally:
        consumer.close()

    assert resent == [str(first.id), str(second.id)]
    waiting = _waiting_job_ids(redis_queue)
    assert waiting[:2] == [str(first.id), str(second.id)]
    assert waiting[2:] == [str(job.id) for job in newer[1:]]
    assert "lost their queue message" in caplog.text
    # Found again on the next round: nothing is sent twice.
    assert reaper.resend_lost_messages() == []


def test_requeued_job_without_a_sent_message_waits_for_the_empty_queue_rule(make_job, redis_queue):
    job = make_job()
    queue.enqueue_job(job.id)
    Job.objects.filter(id=job.id).update(status=Job.Status.RUNNING, attempts=1)
    job.refresh_from_db()
    assert job.requeue("worker lost", attempt=1)
    assert job.message_id == ""  # the old message's id no longer describes the job
    redis_queue.flush_all()
    assert reaper.resend_lost_messages(older_than_s=3600) == []  # too recent for the fallback rule
    Job.objects.filter(id=job.id).update(created_at=timezone.now() - timedelta(hours=2))
    assert reaper.resend_lost_messages(older_than_s=3600) == [str(job.id)]
