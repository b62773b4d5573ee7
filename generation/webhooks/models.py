"""Webhook rows: each user's signing secret, a job's subscription, one delivery per event and its attempts."""

from __future__ import annotations

import base64
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class WebhookSecret(models.Model):
    """The key a user's receivers verify signatures with. Made on first use; rotating replaces it at once."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret")
    secret = models.CharField(max_length=64, default=new_secret)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"webhook secret of {self.user}"

    def key_bytes(self) -> bytes:
        return base64.b64decode(self.secret.removeprefix(SECRET_PREFIX))


class JobWebhook(models.Model):
    """Where and for which events a job's changes are sent (given at creation)."""

    class Event(models.TextChoices):
        START = "start", "start"
        PROGRESS = "progress", "progress"
        COMPLETED = "completed", "completed"

    job = models.OneToOneField("generation.Job", on_delete=models.CASCADE, primary_key=True, related_name="webhook")
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    # The site's address as the creating request saw it: local-folder file links in the body are made absolute
    # with it (S3 links already are).
    base_url = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"{self.job_id} -> {self.url}"


class WebhookDelivery(models.Model):
    """One event for one job. Its id is the `webhook-id` header, the same on every attempt."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey("generation.Job", on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=16, choices=JobWebhook.Event.choices)
    url = models.URLField(max_length=2000)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            # start and completed are sent once per job, however often the worker's state changes repeat.
            models.UniqueConstraint(fields=["job", "event"], condition=~Q(event="progress"),
                                    name="webhook_one_delivery_per_event"),
        ]

    def __str__(self) -> str:
        return f"{self.event} of {self.job_id} ({self.status})"

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.id.hex}"


class WebhookAttempt(models.Model):
    """One HTTP POST of a delivery: what came back (or why nothing did) and how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
