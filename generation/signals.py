"""Signals the Job state machine sends, so features that react to a job (webhooks, pushed progress) live in their
own modules instead of inside the worker.

`job_changed` is sent after a state change or a progress write really happened (the conditional UPDATE matched),
with `job` (the refreshed instance) and `kind`: "status" (job.status is the new state) or "progress".
Receivers must not raise: the sender is often the GPU worker in the middle of a job.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

log = logging.getLogger(__name__)

job_changed = Signal()


def send_job_changed(job: Any, kind: str) -> None:
    """Send `job_changed`; a receiver that fails is logged, never raised into the state machine's caller."""
    for receiver, result in job_changed.send_robust(sender=type(job), job=job, kind=kind):
        if isinstance(result, Exception):
            log.error("job %s: %s receiver %r failed", job.id, kind, receiver, exc_info=result)
