"""Retention and erasure: finished jobs' files are deleted after TURBO_RETENTION_DAYS (the job is marked expired
and keeps its row, so history and the API say what happened), and users can delete all their data, or their
account with it.

`expire_old_jobs` runs in the reaper's round (every worker process and the embedded web process), at most once
per RETENTION_INTERVAL_S in each; it is idempotent, so several processes doing it at once is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from generation import services, storage
from generation.lifecycle.models import JobExpiry
from generation.models import Job

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 600
BATCH = 200
_last_run = 0.0
_last_run_lock = threading.Lock()


def _job_files(job: Job) -> set[str]:
    return {name for name in (job.input_image.name, job.output_video.name, job.poster.name,
                              storage.input_name(job), storage.output_name(job), storage.poster_name(job)) if name}


def expire_job(job: Job, *, days: int, now: datetime | None = None) -> bool:
    """Delete a finished job's files and mark it expired. False (and nothing marked) if a delete failed."""
    for name in sorted(_job_files(job)):
        try:
            storage.with_retries(lambda n=name: default_storage.delete(n), what=f"deleting {name}", attempts=2)
        except Exception:
            log.exception("retention: could not delete %s of job %s; trying again next round", name, job.id)
            return False
    with transaction.atomic():
        JobExpiry.objects.get_or_create(job=job, defaults={"expired_at": now or timezone.now(), "after_days": days})
        Job.objects.filter(id=job.id).update(input_image="", output_video="", poster="")
    return True


def expire_old_jobs(*, now: datetime | None = None, days: int | None = None) -> list[str]:
    """Expire finished jobs that ended more than `days` (TURBO_RETENTION_DAYS) ago; 0 keeps everything."""
    days = settings.TURBO_RETENTION_DAYS if days is None else days
    if days <= 0:
        return []
    now = now or timezone.now()
    due = (Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=now - timedelta(days=days),
                              expiry__isnull=True).order_by("finished_at")[:BATCH])
    expired = [str(job.id) for job in due if expire_job(job, days=days, now=now)]
    if expired:
        log.info("retention: expired %d jobs finished more than %d days ago", len(expired), days)
    return expired


def expire_old_jobs_now_and_then() -> list[str]:
    """The reaper's task: expire_old_jobs at most once per RETENTION_INTERVAL_S in this process."""
    global _last_run
    with _last_run_lock:
        if time.monotonic() - _last_run < RETENTION_INTERVAL_S and _last_run:
            return []
        _last_run = time.monotonic()
    return expire_old_jobs()


def delete_all_jobs(user: AbstractBaseUser) -> int:
    """Cancel and delete every job of `user` with its files (webhook logs and deadlines go with the rows)."""
    count = 0
    for job in Job.objects.filter(owner=user).order_by("created_at"):
        services.delete_job(job)
        count += 1
    return count


def delete_account(user: AbstractBaseUser) -> int:
    """Everything of `user`, then the user (API keys, token and webhook secret go with the row; other sessions
    find no user any more and are anonymous)."""
    count = delete_all_jobs(user)
    user.delete()
    return count
