"""The reaper: nothing stays RUNNING forever.

A RUNNING job whose heartbeat is older than TURBO_HEARTBEAT_STALE_S lost its worker (killed, host gone). It goes back
to QUEUED with a fresh message, or ends FAILED once it has used TURBO_MAX_ATTEMPTS attempts. A QUEUED job whose
message was lost (the broker restarted empty) is sent again at the head of the queue, and stored files that no
job needs (a write that timed out and landed late, a failed delete) are deleted. The round also sends the
retention actor its periodic message (generation/lifecycle/retention.py; the deletes run on the maintenance
queue). Every transition is a conditional update, so reapers in several worker processes can run at once: only one wins each job.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from generation import queue
from generation.lifecycle.retention import schedule_retention
from generation.lifecycle.services import cancel_overdue_jobs
from generation.models import Job
from generation.storage import sweep_pending_deletes

log = logging.getLogger(__name__)

_thread_lock = threading.Lock()
_thread: ReaperThread | None = None


@dataclass
class ReapResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def stale_jobs(*, stale_after_s: float | None = None, now: datetime | None = None) -> list[Job]:
    stale_after_s = settings.TURBO_HEARTBEAT_STALE_S if stale_after_s is None else stale_after_s
    cutoff = (now or timezone.now()) - timedelta(seconds=stale_after_s)
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    return list(Job.objects.filter(silent, status=Job.Status.RUNNING).order_by("created_at"))


def reap_stale_jobs(*, stale_after_s: float | None = None, max_attempts: int | None = None,
                    now: datetime | None = None) -> ReapResult:
    """Requeue (and send again) or fail every RUNNING job whose worker went silent."""
    max_attempts = settings.TURBO_MAX_ATTEMPTS if max_attempts is None else max_attempts
    result = ReapResult()
    for job in stale_jobs(stale_after_s=stale_after_s, now=now):
        last = job.heartbeat_at.isoformat() if job.heartbeat_at else "never"
        lost_worker = job.worker or "unknown"  # read now: requeue() clears it on the row and the instance
        if job.attempts >= max_attempts:
            message = (f"The video could not be made: the worker was lost {job.attempts} times while running this "
                       "job, so it was not tried again. Retry it, maybe with fewer frames or a lower resolution.")
            detail = (f"last worker {job.worker or 'unknown'}, last heartbeat {last}; check the GPU workers' logs")
            if job.fail(message, detail=detail, attempt=job.attempts):
                result.failed.append(str(job.id))
                log.warning("job %s failed after %d lost workers; gave up on worker %s (last heartbeat %s)", job.id,
                            job.attempts, lost_worker, last)
        elif job.requeue(f"The worker running this job stopped responding; it was queued again (attempt "
                         f"{job.attempts} of {max_attempts}).",
                         detail=f"worker {job.worker or 'unknown'} stopped sending heartbeats (last {last})",
                         attempt=job.attempts):
            result.requeued.append(str(job.id))
            try:
                queue.enqueue_job(job.id)
            except Exception:
                # The row is QUEUED already; resend_lost_messages sends it once the queue is reachable again.
                log.exception("job %s requeued but its message could not be sent", job.id)
            log.warning("job %s requeued: gave up on worker %s, silent since %s", job.id, lost_worker, last)
    return result


def resend_queued_jobs() -> int:
    """Send a message for every QUEUED job (after an in-process broker restarted with an empty queue).
    Duplicates are harmless: only one delivery can claim a job."""
    ids = list(Job.objects.filter(status=Job.Status.QUEUED).order_by("created_at").values_list("id", flat=True))
    for job_id in ids:
        queue.enqueue_job(job_id)
    if ids:
        log.info("sent %d queued jobs again", len(ids))
    return len(ids)


def resend_lost_messages(*, older_than_s: float | None = None, now: datetime | None = None) -> list[str]:
    """Send again the QUEUED jobs whose message is gone (a broker restarted without persistence, a flush), at the
    head of the queue in submission order, so they do not wait behind the jobs submitted after them.

    A job whose row records its message id is lost when the broker holds that message nowhere: not waiting, not
    delayed, not taken by a worker (found directly, on every round). A row without an id (its send failed, or it
    was requeued and the new send failed) is lost when the queue has been empty while it waited `older_than_s`.
    A duplicate from a race with a worker that just finished a message is harmless: only one claim can win.
    """
    queued = list(Job.objects.filter(status=Job.Status.QUEUED).exclude(message_id="")
                  .order_by("created_at").values_list("id", "message_id"))
    lost: list = []
    if queued:
        present = queue.messages_present([key for _, key in queued])
        if present is not None:
            missing = [job_id for job_id, key in queued if key not in present]
            # Read again: a job claimed (or sent again) since the first read is not lost.
            still = dict(Job.objects.filter(id__in=missing, status=Job.Status.QUEUED)
                         .values_list("id", "message_id"))
            lost = [job_id for job_id, key in queued if job_id in still and still[job_id] == key]
    lost += _silent_without_message_id(older_than_s, now)
    if not lost:
        return []
    order = dict(Job.objects.filter(id__in=lost).values_list("id", "created_at"))
    lost = sorted(set(lost), key=lambda job_id: order.get(job_id, now or timezone.now()))
    queue.enqueue_first(lost)
    log.warning("%d queued jobs had lost their queue message: sent again at the head of the queue (%s)", len(lost),
                ", ".join(str(job_id) for job_id in lost[:10]))
    return [str(job_id) for job_id in lost]


def _silent_without_message_id(older_than_s: float | None, now: datetime | None) -> list:
    older_than_s = settings.TURBO_QUEUED_RESEND_S if older_than_s is None else older_than_s
    cutoff = (now or timezone.now()) - timedelta(seconds=older_than_s)
    waiting = list(Job.objects.filter(status=Job.Status.QUEUED, message_id="", created_at__lt=cutoff)
                   .order_by("created_at").values_list("id", flat=True))
    if not waiting:
        return []
    if queue.messages_waiting() is not False:
        return []  # messages are waiting (or the broker cannot be read): nothing is known to be lost
    return waiting


class ReaperThread(threading.Thread):
    """Runs `reap_stale_jobs` every TURBO_REAPER_INTERVAL_S inside a worker (or embedded web) process."""

    def __init__(self, interval_s: float | None = None) -> None:
        super().__init__(name="job-reaper", daemon=True)
        self.interval_s = settings.TURBO_REAPER_INTERVAL_S if interval_s is None else interval_s
        self.stopped = threading.Event()
        self.rounds = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            # One failing must not starve the others.
            for task in (reap_stale_jobs, resend_lost_messages, cancel_overdue_jobs, schedule_retention,
                         sweep_pending_deletes):
                try:
                    task()
                except Exception:
                    log.exception("%s failed; trying again in %s s", task.__name__, self.interval_s)
                finally:
                    connection.close()
            self.rounds += 1
            self.stopped.wait(self.interval_s)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def start_reaper_thread(interval_s: float | None = None) -> ReaperThread:
    """Start this process's reaper once; later calls return the running one."""
    global _thread
    with _thread_lock:
        if _thread is None or not _thread.is_alive():
            _thread = ReaperThread(interval_s)
            _thread.start()
        return _thread


def stop_reaper_thread() -> None:
    global _thread
    with _thread_lock:
        if _thread is not None:
            _thread.stop()
            _thread = None
