from __future__ import annotations

from django.db import models


class JobDeadline(models.Model):
    """A Cancel-After deadline: the job is CANCELED if it has not finished by `cancel_at`."""

    job = models.OneToOneField("generation.Job", on_delete=models.CASCADE, primary_key=True, related_name="deadline")
    cancel_at = models.DateTimeField(db_index=True)
    requested = models.CharField(max_length=32, help_text="The Cancel-After value as the client sent it.")

    def __str__(self) -> str:
        return f"{self.job_id} by {self.cancel_at:%Y-%m-%d %H:%M:%S}"
