"""The retention actor, on the "maintenance" queue (never the GPU queue). Consumed by `manage.py
run_webhook_worker` (the site's no-GPU worker: webhooks and maintenance) or, on the embedded default, by a
thread of the web process. Dramatiq's retries stay off: a failed run is simply the next scheduled one."""

from __future__ import annotations

import dramatiq

from generation import queue
from generation.lifecycle import retention
from turbosite import broker

broker.ensure_broker()  # an actor binds to the broker that is global when it is declared


@dramatiq.actor(actor_name=queue.EXPIRE_OLD_JOBS, queue_name=queue.MAINTENANCE_QUEUE, max_retries=0,
                time_limit=retention.RUN_LIMIT_S * 1000)
def expire_old_jobs(trigger: str) -> None:
    retention.run_retention(trigger)


def start_worker(*, threads: int = 1) -> dramatiq.Worker:
    """A Dramatiq worker in this process on the "maintenance" queue."""
    return broker.start_worker(queues={queue.MAINTENANCE_QUEUE}, threads=threads)
