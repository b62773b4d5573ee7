"""Sending jobs to the GPU queue. Services call `enqueue_job` from `transaction.on_commit`, so a worker never
receives the id of a row it cannot read yet."""

from __future__ import annotations

import logging
import uuid

from turbosite import broker

log = logging.getLogger(__name__)


def enqueue_job(job_id: uuid.UUID | str) -> None:
    """Put one message for `job_id` on the "gpu" queue. Sending twice is harmless: the worker's claim is atomic.

    On the embedded default the message waits in this process until its worker thread runs (started by the first
    real request; queued rows left by a stopped process are sent again when it starts).
    """
    from generation.actors import run_job  # imported late: the broker must exist before the actor is declared

    run_job.send(str(job_id))
    log.info("job %s sent to the %s queue (%s)", job_id, broker.GPU_QUEUE, broker.describe_broker())


def queue_depth() -> int | None:
    """Messages waiting on the "gpu" queue, None when the broker cannot be reached."""
    return broker.queue_depth(broker.GPU_QUEUE)


def broker_ok() -> bool:
    return broker.ping()
