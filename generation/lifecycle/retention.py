"""Retention and erasure: finished jobs' files are deleted after TURBO_RETENTION_DAYS (the job is marked expired
and keeps its row, so history and the API say what happened), and users can delete all their data, or their
account with it.

Retention runs as the Dramatiq actor `expire_old_jobs` on the "maintenance" queue (generation/lifecycle/actors.py;
never the GPU queue). The reaper's round in every GPU worker and the embedded web process calls
`schedule_retention`, which sends one message per RETENTION_INTERVAL_S for the whole deployment (a Redis key;
in process on the embedded default). Each message expires at most BATCH jobs under a lock (two runs never work
at once) and sends the next message at once when its batch was full, so a backlog drains without hogging a
worker. A job is marked expired only once every one of its files is gone; a file that cannot be deleted stays for
a later round, and the round stops at the first sign that storage is down (the rest would fail the same way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from generation import queue, services, storage
from generation.lifecycle.models import JobExpiry
from generation.models import Job
from turbosite import locks

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 600
BATCH = 200
# Longest one batch may take (the actor's time limit): 200 jobs x 3 files, each delete bounded by the storage
# deadline, on a slow storage. The lock expires after it, so a killed worker blocks retention no longer.
RUN_LIMIT_S = 1800
LOCK = "retention"


@dataclass
class Round:
    expired: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # a file could not be deleted: tried again next round
    storage_down: bool = False
    full: bool = False  # as many jobs were due as one batch takes: more may wait


def _job_files(job: Job) -> set[str]:
    return {name for name in (job.input_image.name, job.output_video.name, job.poster.name,
                              storage.input_name(job), storage.output_name(job), storage.poster_name(job)) if name}


def expire_job(job: Job, *, days: int, now: datetime | None = None) -> bool:
    """Delete a finished job's files and mark it expired. False (and nothing marked) if a delete failed; a
    StorageUnavailable passes through (storage is down: the caller stops its round)."""
    for name in sorted(_job_files(job)):
        try:
            # An explicit deadline: a background task tries for real, instead of the web's "failed moments ago".
            storage.with_retries(lambda n=name: default_storage.delete(n), what=f"deleting {name}", attempts=2,
                                 deadline_s=settings.TURBO_STORAGE_DEADLINE_S)
        except storage.StorageUnavailable:
            raise
        except Exception:
            log.exception("retention: could not delete %s of job %s; trying again next round", name, job.id)
            return False
    with transaction.atomic():
        JobExpiry.objects.get_or_create(job=job, defaults={"expired_at": now or timezone.now(), "after_days": days})
        Job.objects.filter(id=job.id).update(input_image="", output_video="", poster="")
    return True


def expire_batch(*, now: datetime | None = None, days: int | None = None, batch: int | None = None) -> Round:
    """One batch: expire the finished jobs that ended more than `days` (TURBO_RETENTION_DAYS) ago, oldest first;
    0 keeps everything. Idempotent: an expired job is never picked again."""
    days = settings.TURBO_RETENTION_DAYS if days is None else days
    batch = BATCH if batch is None else batch
    result = Round()
    if days <= 0:
        return result
    now = now or timezone.now()
    due = list(Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=now - timedelta(days=days),
                                  expiry__isnull=True).order_by("finished_at")[:batch])
    result.full = len(due) == batch
    for job in due:
        try:
            done = expire_job(job, days=days, now=now)
        except storage.StorageUnavailable:
            log.warning("retention: storage is unavailable; %d due jobs wait for the next round",
                        len(due) - len(result.expired) - len(result.kept), exc_info=True)
            result.storage_down = True
            break
        (result.expired if done else result.kept).append(str(job.id))
    if result.expired:
        log.info("retention: expired %d jobs finished more than %d days ago", len(result.expired), days)
    return result


def expire_old_jobs(*, now: datetime | None = None, days: int | None = None) -> list[str]:
    """One batch, returning the ids expired (the actor's work without its lock and follow-up)."""
    return expire_batch(now=now, days=days).expired


def run_retention(trigger: str = "") -> Round | None:
    """The actor's body: one batch under the deployment-wide lock, then the next message at once when the batch
    was full and went well. None when another run holds the lock (it will send its own follow-up)."""
    with locks.single_flight(LOCK, RUN_LIMIT_S) as mine:
        if not mine:
            log.info("retention (%s): another run is at work; skipped", trigger or "run")
            return None
        result = expire_batch()
    if result.full and not result.storage_down and result.expired:
        queue.send_retention("continue")
    return result


def schedule_retention() -> bool:
    """The reaper round's task: send the retention message, once per RETENTION_INTERVAL_S for the deployment
    however many processes call this. True when this call sent it."""
    if settings.TURBO_RETENTION_DAYS <= 0:
        return False
    if not locks.claim_period(LOCK, RETENTION_INTERVAL_S):
        return False
    queue.send_retention("schedule")
    return True


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
