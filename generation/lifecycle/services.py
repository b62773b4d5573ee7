"""Cancel-After deadlines and `Prefer: wait=N` (Replicate's conventions for programs that want one request).

- `Cancel-After: 90` or `Cancel-After: 1m30s` on create: a job not finished by then ends CANCELED, with the reason
  in its `error`. The reaper's round (every TURBO_REAPER_INTERVAL_S) cancels overdue jobs; a running worker stops
  at its next step, as for any cancel.
- `Prefer: wait=N` (1 to 60) on create: the answer waits until the job has finished or N seconds have passed, then
  shows the job as GET does, with `Preference-Applied: wait=N`. Each web process holds at most
  TURBO_PREFER_WAIT_MAX_WAITERS such requests; beyond that the answer comes at once, without the header.
  A waiting request listens on the job's event channel (generation/events/bus.py, as the SSE stream does) and
  re-reads the job on a status event, or every RECHECK_S in case an event was lost; with no channel (Redis down)
  it polls every WAIT_POLL_S. Between reads it gives its pooled database connection back (DB_POOL_MAX_SIZE under
  ASGI), so a minute of waiting does not hold one of the few connections that every other request needs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from generation.events import bus
from generation.lifecycle.models import JobDeadline
from generation.models import Job
from generation.services import JobRejected

log = logging.getLogger(__name__)

MAX_WAIT_S = 60
MIN_CANCEL_AFTER_S = 5
MAX_CANCEL_AFTER_S = 7 * 24 * 3600
WAIT_POLL_S = 0.25  # between reads when there is no event channel to listen on
RECHECK_S = 2.0  # between reads while listening: the longest a lost event can delay the answer
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_PREFER_WAIT = re.compile(r"^\s*wait\s*=\s*\"?([^\s\";]*)\"?\s*$", re.IGNORECASE)
_waiters = threading.BoundedSemaphore(1)
_waiters_size = 1
_waiters_lock = threading.Lock()


# -- Cancel-After ---------------------------------------------------------------------------------------------

def parse_cancel_after(value: str | None) -> float | None:
    """Seconds from `Cancel-After` (`90`, `90s`, `5m`, `1h30m`); None when absent. JobRejected 400 otherwise."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif (match := _DURATION.match(text)) and any(match.groups()):
        hours, minutes, secs = match.groups()
        seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if seconds is None or not MIN_CANCEL_AFTER_S <= seconds <= MAX_CANCEL_AFTER_S:
        raise JobRejected(
            f"Cancel-After must be a duration between {MIN_CANCEL_AFTER_S} seconds and "
            f"{MAX_CANCEL_AFTER_S // 86400} days, as seconds (90) or like 90s, 5m or 1h30m; got {value[:40]!r}",
            field="Cancel-After", code="bad_cancel_after")
    return seconds


def set_deadline(job: Job, seconds: float, requested: str) -> JobDeadline:
    return JobDeadline.objects.create(job=job, cancel_at=job.created_at + timedelta(seconds=seconds),
                                      requested=requested.strip()[:32])


def cancel_overdue_jobs(*, now=None) -> list[str]:
    """Cancel active jobs whose Cancel-After deadline has passed; returns their ids."""
    now = now or timezone.now()
    canceled: list[str] = []
    overdue = (Job.objects.filter(deadline__cancel_at__lte=now, status__in=Job.ACTIVE)
               .select_related("deadline").order_by("created_at")[:500])
    for job in overdue:
        reason = (f"Canceled: not finished within the Cancel-After deadline ({job.deadline.requested}) "
                  "given when it was created.")
        if job.cancel(reason=reason):
            canceled.append(str(job.id))
    if canceled:
        log.info("canceled %d jobs past their Cancel-After deadline", len(canceled))
    return canceled


# -- Prefer: wait ---------------------------------------------------------------------------------------------

def parse_prefer_wait(value: str | None) -> int | None:
    """N from a `Prefer` header holding `wait=N` (other preferences are ignored); JobRejected 400 when N is not
    a whole number of seconds from 1 to 60."""
    if not value:
        return None
    for preference in value.split(","):
        match = _PREFER_WAIT.match(preference.split(";", 1)[0])
        if match is None:
            continue
        raw = match.group(1)
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_WAIT_S:
            raise JobRejected(f"Prefer: wait must be a whole number of seconds from 1 to {MAX_WAIT_S}, got {raw!r}",
                              field="Prefer", code="bad_prefer_wait")
        return int(raw)
    return None


def _semaphore() -> threading.BoundedSemaphore:
    global _waiters, _waiters_size
    with _waiters_lock:
        size = max(0, settings.TURBO_PREFER_WAIT_MAX_WAITERS)
        if size != _waiters_size:
            _waiters, _waiters_size = threading.BoundedSemaphore(max(1, size)), size
        return _waiters


def wait_for_job(job: Job, seconds: int) -> bool:
    """Hold until `job` has finished or `seconds` passed (refreshing `job`). False when no waiting slot was free
    (the caller answers at once and does not claim the preference)."""
    if settings.TURBO_PREFER_WAIT_MAX_WAITERS <= 0:
        return False
    slot = _semaphore()
    if not slot.acquire(blocking=False):
        return False
    try:
        _wait(job, time.monotonic() + seconds)
    finally:
        slot.release()
    return True


def _wait(job: Job, deadline: float) -> None:
    subscription = _subscribe(job.id)  # before the first read, so a change right after it is not missed
    try:
        while True:
            try:
                job.refresh_from_db()
            except Job.DoesNotExist:  # deleted meanwhile: answer with what we last saw
                return
            remaining = deadline - time.monotonic()
            if job.is_finished or remaining <= 0:
                return
            _give_back_connection()
            if subscription is None:
                time.sleep(min(WAIT_POLL_S, remaining))
            else:
                subscription = _until_status_event(subscription, min(RECHECK_S, remaining))
    finally:
        if subscription is not None:
            _close(subscription)


Subscription = bus.LocalSubscription | bus.RedisSubscription


def _subscribe(job_id: object) -> Subscription | None:
    try:
        return bus.subscribe(job_id)
    except Exception:  # Redis down: the wait still works, by polling the database
        log.warning("job %s: no event channel for Prefer: wait; polling instead", job_id, exc_info=True)
        return None


def _until_status_event(subscription: Subscription, timeout: float) -> Subscription | None:
    """Return at the job's next status event (progress events cannot end a wait) or after `timeout`; None when
    the channel broke, so the caller polls from then on."""
    end = time.monotonic() + timeout
    try:
        while (left := end - time.monotonic()) > 0:
            if subscription.get(left) == "status":
                break
    except Exception:
        log.warning("the event channel broke during Prefer: wait; polling instead", exc_info=True)
        _close(subscription)
        return None
    return subscription


def _close(subscription: Subscription) -> None:
    try:
        subscription.close()
    except Exception:
        log.debug("closing an event subscription failed", exc_info=True)


def _give_back_connection() -> None:
    """A pooled connection goes back to the pool until the next read (which takes one again). A plain persistent
    connection is kept: it is this thread's own, holds nobody up, and reopening it costs more than keeping it.
    Never inside a transaction, which closing would break."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()
