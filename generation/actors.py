"""Dramatiq actors. The broker is set up before the first declaration (see turbosite/broker.py)."""

from __future__ import annotations

import dramatiq
from django.conf import settings

from turbosite.broker import GPU_QUEUE, ensure_broker

ensure_broker()

# Our own deadline stops a job cleanly between steps (generation/worker.py); Dramatiq's limit, a minute later, is
# the backstop for a step that hangs.
ACTOR_TIME_LIMIT_MS = (settings.TURBO_JOB_TIME_LIMIT_S + 60) * 1000


@dramatiq.actor(queue_name=GPU_QUEUE, max_retries=0, time_limit=ACTOR_TIME_LIMIT_MS, notify_shutdown=True)
def run_job(job_id: str) -> None:
    """Run one generation job; a job that is not QUEUED any more (duplicate delivery, canceled) is skipped."""
    from generation.worker import execute_job

    execute_job(job_id)
