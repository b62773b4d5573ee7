"""The Dramatiq actor that runs jobs, and the Dramatiq worker that consumes the GPU queue (worker side: this
module imports the GPU code, so only worker processes and the embedded worker import it)."""

from __future__ import annotations

import logging

import dramatiq
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from generation import queue, worker
from turbosite import broker

broker.ensure_broker()  # an actor binds to the broker that is global when it is declared
log = logging.getLogger(__name__)

# Our own deadline stops a job cleanly between steps (generation/worker.py); Dramatiq's limit, a minute later, is
# the backstop for a step that hangs.
ACTOR_TIME_LIMIT_MS = (settings.TURBO_JOB_TIME_LIMIT_S + 60) * 1000
# While the database is unreachable a message comes back after this long instead of being lost.
DATABASE_RETRY_DELAY_MS = 15_000


@dramatiq.actor(actor_name=queue.RUN_JOB, queue_name=queue.GPU_QUEUE, max_retries=0, time_limit=ACTOR_TIME_LIMIT_MS,
                notify_shutdown=True)
def run_job(job_id: str) -> None:
    """Run one generation job; a job that is not QUEUED any more (duplicate delivery, canceled) is skipped."""
    try:
        worker.execute_job(job_id)
    except DatabaseError:
        # Dramatiq retries are off (a retry must not rerun a claimed job), so the message is sent again by hand.
        # Harmless either way: if the job was claimed before the database went, this delivery's claim fails and
        # the reaper takes the job back once heartbeats are seen to stop.
        log.exception("job %s: database unreachable; message sent again in %d s", job_id,
                      DATABASE_RETRY_DELAY_MS // 1000)
        close_old_connections()
        queue.enqueue_job(job_id, delay_ms=DATABASE_RETRY_DELAY_MS)


def start_worker(*, threads: int = 1, on_boot: broker.OnWorkerThreadBoot | None = None) -> dramatiq.Worker:
    """Start a Dramatiq worker in this process on the "gpu" queue (run_job is declared: this module is loaded);
    `on_boot` runs in its job thread first (the GPU warm-up)."""
    return broker.start_worker(queues={queue.GPU_QUEUE}, threads=threads, on_boot=on_boot)
