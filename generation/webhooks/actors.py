"""The webhook actor, on its own "webhooks" queue (never the GPU queue): one message per attempt. A failed attempt
sends the next one with the delay from TURBO_WEBHOOK_RETRY_SCHEDULE_S; Dramatiq's own retries stay off so the
schedule and the attempt log agree."""

from __future__ import annotations

import logging

import dramatiq
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from generation import queue
from generation.webhooks import services
from turbosite import broker

broker.ensure_broker()  # an actor binds to the broker that is global when it is declared
log = logging.getLogger(__name__)

DATABASE_RETRY_DELAY_MS = 30_000


def _time_limit_ms() -> int:
    # Resolving plus connecting plus reading each get the per-attempt timeout; the actor limit is the backstop.
    return int((settings.TURBO_WEBHOOK_TIMEOUT_S * 3 + 10) * 1000)


@dramatiq.actor(actor_name=queue.DELIVER_WEBHOOK, queue_name=queue.WEBHOOK_QUEUE, max_retries=0,
                time_limit=_time_limit_ms())
def deliver_webhook(delivery_id: str) -> None:
    try:
        delay = services.attempt_delivery(delivery_id)
    except DatabaseError:
        log.exception("webhook delivery %s: database unreachable; tried again in %d s", delivery_id,
                      DATABASE_RETRY_DELAY_MS // 1000)
        close_old_connections()
        queue.send_webhook_delivery(delivery_id, delay_ms=DATABASE_RETRY_DELAY_MS)
        return
    if delay is not None:
        services.send_delivery(delivery_id, delay_s=delay)


def start_worker(*, threads: int = 1) -> dramatiq.Worker:
    """Start a Dramatiq worker in this process on the "webhooks" queue (deliver_webhook is declared: this module
    is loaded)."""
    return broker.start_worker(queues={queue.WEBHOOK_QUEUE}, threads=threads)
