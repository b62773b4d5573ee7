"""/metrics on the real database and Redis: who may read it, and that each family counts what is stored."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from generation.models import Job
from generation.webhooks.models import WebhookAttempt, WebhookDelivery
from tests.factories import delete_job_files, stored_job
from turbosite import broker

pytestmark = pytest.mark.django_db

LINE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not Prometheus text: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def sample(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def jobs(user):
    made = [stored_job(user, Job.Status.QUEUED), stored_job(user, Job.Status.QUEUED),
            stored_job(user, Job.Status.RUNNING, worker="gpu-host:0", gpu_name="H200",
                       peak_memory_bytes=50 * 2**30),
            stored_job(user, Job.Status.SUCCEEDED, worker="gpu-host:1", gpu_name="H200",
                       peak_memory_bytes=70 * 2**30),
            stored_job(user, Job.Status.FAILED)]
    yield made
    delete_job_files(made)


def test_anonymous_and_ordinary_users_are_refused(client, user, settings):
    settings.TURBO_METRICS_TOKEN = "scrape-me-7f3a"
    assert client.get(reverse("metrics")).status_code == 401
    assert client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    client.force_login(user)
    response = client.get(reverse("metrics"))
    assert response.status_code == 403 and b"turbosite_jobs" not in response.content


def test_no_token_configured_means_staff_only(client, settings):
    settings.TURBO_METRICS_TOKEN = ""
    assert client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_the_token_or_a_staff_login_reads_every_family(client, admin_client, jobs, settings):
    settings.TURBO_METRICS_TOKEN = "scrape-me-7f3a"
    current = broker.ensure_broker()
    current.flush_all()
    from generation.actors import run_job

    run_job.send(str(jobs[0].id))  # one message waiting on the gpu queue
    by_token = client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-me-7f3a")
    current.flush_all()
    assert by_token.status_code == 200
    assert by_token["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(by_token.content.decode())
    assert sample(samples, "turbosite_jobs", status="QUEUED") == 2
    assert sample(samples, "turbosite_jobs", status="RUNNING") == 1
    assert sample(samples, "turbosite_jobs", status="CANCELED") == 0
    assert sample(samples, "turbosite_queue_depth", queue="gpu") == 1
    assert sample(samples, "turbosite_queue_depth", queue="webhooks") == 0
    # stored_job starts finished jobs 12 s before they end.
    assert sample(samples, "turbosite_job_duration_seconds_bucket", model="tiny", status="SUCCEEDED", le="10") == 0
    assert sample(samples, "turbosite_job_duration_seconds_bucket", model="tiny", status="SUCCEEDED", le="30") == 1
    assert sample(samples, "turbosite_job_duration_seconds_count", model="tiny", status="FAILED") == 1
    assert 11 < sample(samples, "turbosite_job_duration_seconds_sum", model="tiny", status="SUCCEEDED") < 13
    assert sample(samples, "turbosite_stage_duration_seconds_bucket", model="tiny", stage="denoise", le="1") == 0
    assert sample(samples, "turbosite_stage_duration_seconds_bucket", model="tiny", stage="denoise", le="2.5") == 1
    assert sample(samples, "turbosite_stage_duration_seconds_sum", model="tiny", stage="decode") == 0.25
    assert sample(samples, "turbosite_worker_peak_memory_bytes", worker="gpu-host:1", gpu="H200") == 70 * 2**30
    assert sample(samples, "turbosite_worker_busy", worker="gpu-host:0", gpu="H200") == 1
    assert sample(samples, "turbosite_worker_busy", worker="gpu-host:1", gpu="H200") == 0

    assert parse(admin_client.get(reverse("metrics")).content.decode()).keys() >= {
        k for k in samples if k[0] != "turbosite_queue_depth"}


def test_webhook_deliveries_are_counted_by_result(admin_client, user):
    job = stored_job(user, Job.Status.SUCCEEDED)
    ok = WebhookDelivery.objects.create(job=job, event="completed", url="https://example.com/h",
                                        status=WebhookDelivery.Status.SUCCEEDED, attempts=2)
    WebhookDelivery.objects.create(job=job, event="progress", url="https://example.com/h",
                                   status=WebhookDelivery.Status.FAILED, attempts=1)
    WebhookAttempt.objects.create(delivery=ok, number=1, status_code=503)
    WebhookAttempt.objects.create(delivery=ok, number=2, status_code=200)
    WebhookAttempt.objects.create(delivery=ok, number=3, status_code=None, error="timed out",
                                  started_at=timezone.now() - timedelta(seconds=1))
    samples = parse(admin_client.get(reverse("metrics")).content.decode())
    assert sample(samples, "turbosite_webhook_deliveries", result="succeeded") == 1
    assert sample(samples, "turbosite_webhook_deliveries", result="failed") == 1
    assert sample(samples, "turbosite_webhook_deliveries", result="pending") == 0
    assert sample(samples, "turbosite_webhook_attempts", result="2xx") == 1
    assert sample(samples, "turbosite_webhook_attempts", result="5xx") == 1
    assert sample(samples, "turbosite_webhook_attempts", result="error") == 1
    delete_job_files([job])
