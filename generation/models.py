"""The Job: one image + prompt turned into a video, and its state machine.

Every state change is one conditional UPDATE (`filter(id=..., status__in=...).update(...)`), so two workers,
a worker and a user, or a worker and the reaper can never both win the same transition.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone

from generation.signals import send_job_changed


class IllegalTransition(Exception):
    """A state change that the state machine forbids from the job's current state."""


class Standing(enum.StrEnum):
    """Where a worker's attempt at a job stands, read from the row (Job.standing)."""

    OURS = "ours"  # RUNNING on this attempt: carry on
    CANCELED = "canceled"  # its owner canceled it: stop and keep nothing
    LOST = "lost"  # deleted, ended, requeued or claimed by another attempt: let go without writing


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "QUEUED", "Queued"
        RUNNING = "RUNNING", "Running"
        SUCCEEDED = "SUCCEEDED", "Succeeded"
        FAILED = "FAILED", "Failed"
        CANCELED = "CANCELED", "Canceled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
    # target state -> the states it may be entered from
    TRANSITIONS: dict[str, tuple[str, ...]] = {
        Status.RUNNING: (Status.QUEUED,),
        Status.SUCCEEDED: (Status.RUNNING,),
        Status.FAILED: (Status.QUEUED, Status.RUNNING),
        Status.CANCELED: (Status.QUEUED, Status.RUNNING),
        Status.QUEUED: (Status.RUNNING,),  # requeue after a lost worker or a graceful shutdown
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")

    # What was asked for
    prompt = models.TextField()
    input_image = models.FileField(max_length=300, blank=True)
    seed = models.BigIntegerField()
    num_steps = models.PositiveSmallIntegerField(default=4)
    resolution = models.CharField(max_length=16, default="480p")
    num_frames = models.PositiveSmallIntegerField(default=81)
    adaptive_resolution = models.BooleanField(default=True)
    ode = models.BooleanField(default=False)
    resize_mode = models.CharField(max_length=16, default="stretch")
    loras = models.JSONField(default=list, blank=True)  # [{"name": installed LoRA, "strength": float}], at most 3
    model = models.CharField(max_length=64)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)

    # Where it stands
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0)
    stage = models.CharField(max_length=32, blank=True)
    # `error` is what the owner reads (pages, API): a short reason and what to try. `error_detail` is the
    # exception, its text and any server names or paths, for the logs and the admin only.
    error = models.TextField(blank=True)
    error_detail = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=128, blank=True)
    # The id of the queue message that should run this job now; the reaper resends when the broker has lost it.
    message_id = models.CharField(max_length=64, blank=True)
    gpu_name = models.CharField(max_length=128, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    timings = models.JSONField(default=dict, blank=True)

    # What came out
    output_video = models.FileField(max_length=300, blank=True)
    poster = models.FileField(max_length=300, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    frames = models.PositiveIntegerField(null=True, blank=True)
    fps = models.PositiveSmallIntegerField(null=True, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_recent"),
            models.Index(fields=["status", "created_at"], name="job_status_age"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="job_unique_idempotency_key",
                                    condition=models.Q(idempotency_key__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    # -- state machine -------------------------------------------------------------------------------------

    def _rows(self, statuses: Iterable[str], attempt: int | None = None) -> models.QuerySet[Job]:
        """This job's row, if it is in one of `statuses` (and, for a worker's write, still on `attempt`)."""
        rows = Job.objects.filter(id=self.id, status__in=tuple(statuses))
        return rows if attempt is None else rows.filter(attempts=attempt)

    def _transition(self, target: str, *, sources: Iterable[str] | None = None, attempt: int | None = None,
                    **fields: Any) -> bool:
        """Move to `target` only if the row is still in an allowed source state. Returns whether it moved.

        `attempt` (for writes by a worker) also requires the row to still be on that attempt: a worker that was
        presumed dead and replaced must not overwrite the run of the worker that took the job over.
        On success the in-memory instance is refreshed; on failure it is left untouched, so callers can tell
        a lost race (returns False) from a programming error (IllegalTransition).
        """
        allowed = tuple(sources) if sources is not None else self.TRANSITIONS[target]
        if not set(allowed) <= set(self.TRANSITIONS[target]):
            raise IllegalTransition(f"{target} cannot be entered from {sorted(set(allowed) - set(self.TRANSITIONS[target]))}")
        updated = self._rows(allowed, attempt).update(status=target, **fields)
        if updated:
            self.refresh_from_db()
            send_job_changed(self, "status")
        return bool(updated)

    def claim(self, *, worker: str, gpu_name: str = "") -> bool:
        """QUEUED -> RUNNING for exactly one worker; a duplicate delivery gets False."""
        now = timezone.now()
        return self._transition(
            self.Status.RUNNING, attempts=F("attempts") + 1, worker=worker, gpu_name=gpu_name,
            started_at=now, heartbeat_at=now, progress=0.0, stage="starting", error="", error_detail="",
        )

    def succeed(self, *, attempt: int | None = None, **result: Any) -> bool:
        return self._transition(self.Status.SUCCEEDED, attempt=attempt, progress=1.0, stage="done",
                                finished_at=timezone.now(), heartbeat_at=timezone.now(), **result)

    def fail(self, error: str, *, detail: str = "", attempt: int | None = None, **extra: Any) -> bool:
        """End FAILED. `error` is shown to the owner; `detail` (exception, paths) only to operators."""
        return self._transition(self.Status.FAILED, attempt=attempt, error=error[:10_000],
                                error_detail=detail[-10_000:], finished_at=timezone.now(), **extra)

    def cancel(self, reason: str = "") -> bool:
        """`reason` (for a person) goes to `error`: why the job ended without its owner asking (a deadline)."""
        extra = {"error": reason[:10_000]} if reason else {}
        return self._transition(self.Status.CANCELED, finished_at=timezone.now(), stage="canceled", **extra)

    def requeue(self, reason: str = "", *, detail: str = "", attempt: int | None = None) -> bool:
        """RUNNING -> QUEUED, for a worker that died or is shutting down; the next claim counts a new attempt.
        `reason` is shown to the owner, `detail` (worker names) only to operators."""
        return self._transition(self.Status.QUEUED, attempt=attempt, worker="", heartbeat_at=None, progress=0.0,
                                stage="queued", error=reason[:10_000], error_detail=detail[-10_000:], message_id="")

    def report_progress(self, *, progress: float, stage: str, timings: dict[str, float] | None = None,
                        attempt: int | None = None) -> bool:
        """Write progress and a heartbeat while RUNNING (on `attempt`, when given). False means the job is no
        longer ours (canceled, or taken over after a lost heartbeat)."""
        fields: dict[str, Any] = {"progress": max(0.0, min(1.0, progress)), "stage": stage,
                                  "heartbeat_at": timezone.now()}
        if timings is not None:
            fields["timings"] = timings
        updated = self._rows([self.Status.RUNNING], attempt).update(**fields)
        if updated:
            for name, value in fields.items():
                setattr(self, name, value)
            send_job_changed(self, "progress")
        return bool(updated)

    # -- a running worker's writes and checks --------------------------------------------------------------

    def beat(self, attempt: int) -> bool:
        """Touch the heartbeat while RUNNING on `attempt` (the reaper takes back jobs whose heartbeat stops).
        False means the job is no longer this attempt's; `standing` says why. The instance is not changed: the
        heartbeat thread shares it with the thread running the job."""
        return bool(self._rows([self.Status.RUNNING], attempt).update(heartbeat_at=timezone.now()))

    def record_gpu(self, gpu_name: str, *, attempt: int | None = None) -> bool:
        """Write the name of the GPU running the job, while it is RUNNING (on `attempt`, when given)."""
        gpu_name = gpu_name[:128]
        updated = self._rows([self.Status.RUNNING], attempt).update(gpu_name=gpu_name)
        if updated:
            self.gpu_name = gpu_name
        return bool(updated)

    def standing(self, attempt: int) -> Standing:
        """Whether the worker running `attempt` still owns the job, read from the row now."""
        row = Job.objects.filter(id=self.id).values_list("status", "attempts").first()
        if row is None:
            return Standing.LOST  # deleted while running
        status, attempts = row
        if status == self.Status.CANCELED:
            return Standing.CANCELED
        if status != self.Status.RUNNING or attempts != attempt:
            return Standing.LOST
        return Standing.OURS

    def claimed_again(self, attempt: int) -> bool:
        """Whether a later attempt has claimed the job since `attempt` (its files then belong to that attempt)."""
        return Job.objects.filter(id=self.id).exclude(attempts=attempt).exists()


class Worker(models.Model):
    """A GPU worker process as it last reported itself: which models it can run here (their weights are installed
    on its host) and when it last beat. The web side learns what is installed from these rows, never by reading
    weight files: it has neither the files nor the code that checks them."""

    name = models.CharField(max_length=128, unique=True)  # host:pid[:gpuN], as in Job.worker
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    # {"model name": {"installed": bool, "missing": ["file or folder", ...]}}
    weights = models.JSONField(default=dict, blank=True)
    # Each visible GPU as the last beat read it (generation/gpu_readings.py): [{"index": 0, "name": str | None,
    # "memory_used_bytes": int | None, "memory_total_bytes": ..., "memory_reserved_bytes": ...,
    # "utilization_percent": int | None}, ...]; empty on a host without CUDA.
    gpus = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-heartbeat_at"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def report(cls, name: str, weights: dict[str, dict[str, Any]], *, gpus: list[dict[str, Any]] | None = None,
               starting: bool = False) -> Worker:
        """Upsert this worker's row: called when it starts and on every heartbeat."""
        now = timezone.now()
        defaults: dict[str, Any] = {"heartbeat_at": now, "weights": weights, "gpus": gpus or []}
        if starting:
            defaults["started_at"] = now
        worker, _ = cls.objects.update_or_create(name=name[:128], defaults=defaults)
        return worker

    @classmethod
    def retire(cls, name: str) -> None:
        """A worker shutting down removes its row, so the site stops counting on it at once."""
        cls.objects.filter(name=name[:128]).delete()

    @classmethod
    def live(cls) -> models.QuerySet[Worker]:
        """Workers heard from within TURBO_HEARTBEAT_STALE_S (the reaper's limit for a job's heartbeat too)."""
        cutoff = timezone.now() - timedelta(seconds=settings.TURBO_HEARTBEAT_STALE_S)
        return cls.objects.filter(heartbeat_at__gte=cutoff)


class PendingDelete(models.Model):
    """A stored file that must go but may still be there: its delete failed, or its write failed in a way that can
    still land (a request the storage server received before it stalled). The reaper deletes it once no job needs
    it (generation.storage.sweep_pending_deletes)."""

    name = models.CharField(max_length=300, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)  # the first successful delete; a second one ends it

    def __str__(self) -> str:
        return self.name
