"""Webhook rules: checking a subscription at job creation, turning job changes into deliveries, and making one
delivery attempt (the actor in generation/webhooks/actors.py only schedules them)."""

from __future__ import annotations

import http.client
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from generation import queue
from generation.models import Job
from generation.services import JobRejected
from generation.webhooks import netguard, signing
from generation.webhooks.models import JobWebhook, WebhookAttempt, WebhookDelivery, WebhookSecret

log = logging.getLogger(__name__)

EVENTS = tuple(JobWebhook.Event.values)
DEFAULT_EVENTS = (JobWebhook.Event.COMPLETED,)
# Answers after which trying again cannot help: 410 Gone is Standard Webhooks' "stop sending".
FINAL_STATUS_CODES = {410}


@dataclass(frozen=True)
class Subscription:
    url: str
    events: tuple[str, ...]


# -- secrets ----------------------------------------------------------------------------------------------------

def secret_for(user) -> WebhookSecret:
    secret, _ = WebhookSecret.objects.get_or_create(user=user)
    return secret


def rotate_secret(user) -> WebhookSecret:
    """A new secret, in force at once (pending retries are signed with it)."""
    secret = secret_for(user)
    secret.secret = WebhookSecret._meta.get_field("secret").default()
    secret.created_at = timezone.now()
    secret.save(update_fields=["secret", "created_at"])
    return secret


# -- subscribing --------------------------------------------------------------------------------------------------

def parse_events(value: Any) -> tuple[str, ...]:
    """`webhook_events` as a list or a comma-separated string; empty means the default (completed)."""
    if value in (None, "", []):
        return DEFAULT_EVENTS
    items = value if isinstance(value, list | tuple) else [value]
    names: list[str] = []
    for item in items:
        names.extend(part.strip().lower() for part in str(item).split(",") if part.strip())
    unknown = sorted(set(names) - set(EVENTS))
    if unknown:
        raise JobRejected(f"webhook_events must be among {', '.join(EVENTS)}, got {', '.join(unknown)}",
                          field="webhook_events", code="invalid_webhook_events")
    return tuple(event for event in EVENTS if event in names) or DEFAULT_EVENTS


def check_subscription(url: Any, events: Any) -> Subscription | None:
    """None without a URL; otherwise the checked subscription. A refused address is a JobRejected (400)."""
    if url in (None, ""):
        if events not in (None, "", []):
            raise JobRejected("webhook_events needs a webhook_url", field="webhook_url", code="webhook_url_missing")
        return None
    try:
        netguard.check_url(url)
    except netguard.AddressRefused as exc:
        raise JobRejected(str(exc), field="webhook_url", code="webhook_url_refused") from None
    return Subscription(url=str(url).strip(), events=parse_events(events))


def subscribe(job: Job, subscription: Subscription, *, base_url: str = "") -> JobWebhook:
    return JobWebhook.objects.create(job=job, url=subscription.url, events=list(subscription.events),
                                     base_url=base_url[:300])


def subscription_hook(url: Any, events: Any, *, base_url: str) -> Callable[[Job], None] | None:
    """Every create route's one way in (the API's create, the pages' form): check `webhook_url` and
    `webhook_events` now, before anything is stored (a refused address is a JobRejected 400 naming webhook_url),
    and return what saves the subscription inside the job's creating transaction (services.submit_job's
    `attach`); None without a URL. `base_url` is the site's address the deliveries' links are made from."""
    subscription = check_subscription(url, events)
    if subscription is None:
        return None
    return lambda job: subscribe(job, subscription, base_url=base_url)


# -- job changes become deliveries ------------------------------------------------------------------------------

def event_for(job: Job, kind: str) -> str | None:
    if kind == "progress":
        return JobWebhook.Event.PROGRESS
    if job.status == Job.Status.RUNNING:
        return JobWebhook.Event.START
    if job.status in Job.FINISHED:
        return JobWebhook.Event.COMPLETED
    return None


def on_job_changed(sender: Any, *, job: Job, kind: str, **_: Any) -> None:
    """job_changed receiver: record a delivery for a subscribed event and send it once the change is committed."""
    event = event_for(job, kind)
    if event is None:
        return
    subscription = JobWebhook.objects.filter(job_id=job.id).first()
    if subscription is None or event not in subscription.events:
        return
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(job_id=job.id, event=event, url=subscription.url)
    except IntegrityError:
        return  # start or completed was already recorded (a requeued job starting again)
    transaction.on_commit(lambda: send_delivery(delivery.id))


def send_delivery(delivery_id: uuid.UUID | str, *, delay_s: float = 0) -> None:
    try:
        queue.send_webhook_delivery(delivery_id, delay_ms=int(delay_s * 1000) if delay_s else None)
    except Exception:
        # The queue is down: the delivery stays pending in the log; the job itself must not suffer for it.
        log.exception("webhook delivery %s could not be queued", delivery_id)


# -- one attempt ------------------------------------------------------------------------------------------------

def retry_schedule() -> list[float]:
    return [float(s) for s in settings.TURBO_WEBHOOK_RETRY_SCHEDULE_S]


def render_body(job: Job, base_url: str = "") -> bytes:
    """The job as GET /api/v1/jobs/{id}/ shows it, with local-folder links made absolute."""
    from generation.api.serializers import JobSerializer

    data = dict(JobSerializer(job, context={"request": None}).data)
    for name in ("output_url", "poster_url", "input_url"):
        url = data.get(name)
        if url and url.startswith("/") and base_url:
            data[name] = base_url.rstrip("/") + url
    return JSONRenderer().render(data)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, netguard.AddressRefused):
        return str(exc)[:300]
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:300]


def attempt_delivery(delivery_id: uuid.UUID | str) -> float | None:
    """Make the next attempt of a pending delivery. Returns the seconds until the following attempt, or None
    when there is nothing more to do (succeeded, failed for good, already handled by another message, gone)."""
    delivery = WebhookDelivery.objects.filter(id=delivery_id).select_related("job").first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    number = delivery.attempts + 1
    # Claim this attempt number: a duplicate message for the same attempt finds the count moved and stops.
    if not WebhookDelivery.objects.filter(id=delivery.id, status=WebhookDelivery.Status.PENDING,
                                          attempts=delivery.attempts).update(attempts=number, next_attempt_at=None):
        return None
    job = delivery.job
    subscription = JobWebhook.objects.filter(job_id=job.id).first()
    body = render_body(job, subscription.base_url if subscription else "")
    key = secret_for(job.owner).key_bytes()
    headers = signing.headers(key, delivery.webhook_id, int(time.time()), body)
    headers["user-agent"] = "TurboSite-Webhooks/1"
    headers["turbosite-event"] = delivery.event  # not signed; the signed body's status says the same
    started, started_at = time.monotonic(), timezone.now()
    status_code: int | None = None
    error = ""
    final = False
    try:
        status_code = netguard.post(delivery.url, body, headers, timeout=settings.TURBO_WEBHOOK_TIMEOUT_S)
    except netguard.AddressRefused as exc:
        error, final = _describe(exc), True
    except (OSError, http.client.HTTPException) as exc:
        error = _describe(exc)
    latency_ms = int((time.monotonic() - started) * 1000)
    WebhookAttempt.objects.create(delivery=delivery, number=number, started_at=started_at, status_code=status_code,
                                  latency_ms=latency_ms, error=error)
    ok = status_code is not None and 200 <= status_code < 300
    log.info("webhook %s (%s of job %s) attempt %d: %s in %d ms", delivery.webhook_id, delivery.event, job.id,
             number, status_code or error, latency_ms)
    now = timezone.now()
    pending = WebhookDelivery.objects.filter(id=delivery.id, status=WebhookDelivery.Status.PENDING)
    if ok:
        pending.update(status=WebhookDelivery.Status.SUCCEEDED, last_status_code=status_code, finished_at=now)
        return None
    schedule = retry_schedule()
    # Progress is a moment's news: one attempt only. start and completed follow the schedule (about a day).
    retries_left = delivery.event != JobWebhook.Event.PROGRESS and number <= len(schedule)
    if final or status_code in FINAL_STATUS_CODES or not retries_left:
        pending.update(status=WebhookDelivery.Status.FAILED, last_status_code=status_code, finished_at=now)
        return None
    delay = schedule[number - 1]
    pending.update(last_status_code=status_code, next_attempt_at=now + timedelta(seconds=delay))
    return delay


def deliveries_of(job: Job) -> Iterable[WebhookDelivery]:
    return WebhookDelivery.objects.filter(job=job).prefetch_related("attempt_log").order_by("created_at")
