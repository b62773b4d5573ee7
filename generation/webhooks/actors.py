"""The webhook actor, on its own "webhooks" queue (never the GPU queue): one message per attempt. A failed attempt
sends the next one with the delay from TURBO_WEBHOOK_RETRY_SCHEDULE_S; Dramatiq's own retries stay off so the
schedule and the attempt log agree."""

from __future__ import annotations

import logging

import dramatiq
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from turbosite.broker import WEBHOOK_QUEUE, ensure_broker

ensure_broker()
log = logging.getLogger(__name__)

DATABASE_RETRY_DELAY_MS = 30_000


def _time_limit_ms() -> int:
    # Resolving plus connecting plus reading each get the per-attempt timeout; the actor limit is the backstop.
    return int((settings.TURBO_WEBHOOK_TIMEOUT_S * 3 + 10) * 1000)


@dramatiq.actor(queue_name=WEBHOOK_QUEUE, max_retries=0, time_limit=_time_limit_ms())
def deliver_webhook(delivery_id: str) -> None:
    from generation.webhooks import services

    try:
        delay = services.attempt_delivery(delivery_id)
    except DatabaseError:
        log.exception("webhook delivery %s: database unreachable; tried again in %d s", delivery_id,
                      DATABASE_RETRY_DELAY_MS // 1000)
        close_old_connections()
        deliver_webhook.send_with_options(args=(delivery_id,), delay=DATABASE_RETRY_DELAY_MS)
        return
    if delay is not None:
        services.send_delivery(delivery_id, delay_s=delay)
