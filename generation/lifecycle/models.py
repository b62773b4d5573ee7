from __future__ import annotations

from django.db import models


class JobDeadline(models.Model):
    """A Cancel-After deadline: the job is CANCELED if it has not finished by `cancel_at`."""

    job = models.OneToOneField("generation.Job", on_delete=models.CASCADE, primary_key=True, related_name="deadline")
    cancel_at = models.DateTimeField(db_index=True)
    requested = models.CharField(max_length=32, help_text="The Cancel-After value as the client sent it.")

    def __str__(self) -> str:
        return f"{self.job_id} by {self.cancel_at:%Y-%m-%d %H:%M:%S}"


class JobExpiry(models.Model):
    """The job's files were deleted by retention (TURBO_RETENTION_DAYS); the row stays so history says so."""

    job = models.OneToOneField("generation.Job", on_delete=models.CASCADE, primary_key=True, related_name="expiry")
    expired_at = models.DateTimeField()
    after_days = models.PositiveIntegerField(help_text="TURBO_RETENTION_DAYS when it expired.")

    def __str__(self) -> str:
        return f"{self.job_id} expired {self.expired_at:%Y-%m-%d}"
