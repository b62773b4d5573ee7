"""The one place that sends messages to the queues, and what the web side may ask about them.

Messages are addressed by name (queue and actor), so sending needs neither the actor nor the code behind it: the web
process stays free of the GPU stack. `generation.actors` declares run_job, `generation.webhooks.actors`
deliver_webhook and `generation.lifecycle.actors` expire_old_jobs under the same names. Services call `enqueue_job` from `transaction.on_commit`, so a worker never
receives the id of a row it cannot read yet; the reaper and the worker use it to send a job again.
"""

from __future__ import annotations

import logging
import uuid

import dramatiq

from generation.models import Job
from turbosite import broker
from turbosite.broker import GPU_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE

log = logging.getLogger(__name__)

RUN_JOB = "run_job"  # the actor's name: generation.actors.run_job
DELIVER_WEBHOOK = "deliver_webhook"  # generation.webhooks.actors.deliver_webhook
EXPIRE_OLD_JOBS = "expire_old_jobs"  # generation.lifecycle.actors.expire_old_jobs


def enqueue_job(job_id: uuid.UUID | str, *, delay_ms: int | None = None) -> None:
    """Put one run_job message for `job_id` on the "gpu" queue (after `delay_ms`, when given). Sending twice is
    harmless: the worker's claim is atomic.

    On the embedded default the message waits in this process until its worker thread runs (started by the first
    real request; queued rows left by a stopped process are sent again when it starts).
    """
    _record(job_id, _send(GPU_QUEUE, RUN_JOB, str(job_id), delay_ms))
    log.info("job %s sent to the %s queue (%s)%s", job_id, GPU_QUEUE, broker.describe_broker(),
             f" to run in {delay_ms} ms" if delay_ms else "")


def send_webhook_delivery(delivery_id: uuid.UUID | str, *, delay_ms: int | None = None) -> None:
    """Put one deliver_webhook message for `delivery_id` on the "webhooks" queue (after `delay_ms`, when given)."""
    _send(WEBHOOK_QUEUE, DELIVER_WEBHOOK, str(delivery_id), delay_ms)


def send_retention(trigger: str, *, delay_ms: int | None = None) -> None:
    """Put one expire_old_jobs message on the "maintenance" queue; `trigger` says why (logged): "schedule" or
    "continue" (the previous batch was full)."""
    _send(MAINTENANCE_QUEUE, EXPIRE_OLD_JOBS, trigger, delay_ms)


def _message(queue_name: str, actor_name: str, argument: str) -> dramatiq.Message:
    return dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=(argument,), kwargs={}, options={})


def _send(queue_name: str, actor_name: str, argument: str, delay_ms: int | None) -> dramatiq.Message:
    current = broker.ensure_broker()
    current.declare_queue(queue_name)  # idempotent; the in-process broker refuses undeclared queues
    return current.enqueue(_message(queue_name, actor_name, argument), delay=delay_ms)


def _record(job_id: uuid.UUID | str, message: dramatiq.Message) -> None:
    """Write the message's broker id on the row, so the reaper can tell when the broker lost it."""
    try:
        Job.objects.filter(id=job_id, status=Job.Status.QUEUED).update(message_id=broker.message_key(message))
    except Exception:
        # The message is out; without its id on the row only the reaper's slower rule can spot its loss.
        log.warning("job %s: could not record its message id", job_id, exc_info=True)


def enqueue_first(job_ids: list[uuid.UUID | str]) -> None:
    """Send `job_ids` again at the head of the "gpu" queue, in this order: jobs whose message was lost were
    submitted before everything now waiting, so they go first."""
    broker.ensure_broker().declare_queue(GPU_QUEUE)
    sent = broker.enqueue_first([_message(GPU_QUEUE, RUN_JOB, str(job_id)) for job_id in job_ids])
    for job_id, message in zip(job_ids, sent, strict=True):
        _record(job_id, message)


def queue_depth() -> int | None:
    """Messages waiting on the "gpu" queue, None when the broker cannot be reached."""
    return broker.queue_depth(GPU_QUEUE)


def messages_present(keys: list[str]) -> set[str] | None:
    """Which of these message ids (as recorded on job rows) the broker still holds for the "gpu" queue: waiting,
    delayed or taken by a worker and not yet acknowledged. None when it cannot tell (in process, or unreachable)."""
    return broker.messages_present(keys, GPU_QUEUE)


def messages_waiting() -> bool | None:
    """Whether any message waits, on the queue or delayed; None when the broker cannot be read."""
    depths = [broker.queue_depth(GPU_QUEUE), broker.queue_depth(f"{GPU_QUEUE}.DQ")]
    if any(depth is None for depth in depths):
        return None
    return any(depths)


def waiting_job_ids() -> list[str] | None:
    """The job id of each message waiting on the "gpu" queue (duplicates included), None when unreadable."""
    return broker.waiting_message_args(broker.GPU_QUEUE)


def broker_ok() -> bool:
    return broker.ping()
