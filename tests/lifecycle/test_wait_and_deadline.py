"""`Prefer: wait=N` holds the create answer until the job ends or N seconds pass; `Cancel-After` cancels a job
not finished by its deadline, with the reason in `error`. Real PostgreSQL; a thread plays the GPU worker."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from generation.lifecycle import services as lifecycle
from generation.lifecycle.models import JobDeadline
from generation.models import Job
from generation.reaper import ReaperThread
from tests.factories import png_bytes

pytestmark = pytest.mark.django_db(transaction=True)


def create(client, headers: dict[str, str] | None = None, **fields):
    data = {"image": SimpleUploadedFile("in.png", png_bytes(), content_type="image/png"),
            "prompt": "a red square drifts", "num_frames": 5, **fields}
    return client.post(reverse("api:job-list"), data, format="multipart", headers=headers or {})


def run_soon(enqueued: list[str], delay: float, outcome: str = "succeed") -> threading.Thread:
    """A stand-in GPU worker: takes the job as soon as it is sent and ends it after `delay` seconds."""

    def work() -> None:
        try:
            deadline = time.monotonic() + 10
            while not enqueued and time.monotonic() < deadline:
                time.sleep(0.02)
            job = Job.objects.get(id=enqueued[0])
            job.claim(worker="test-gpu:0")
            time.sleep(delay)
            job.succeed() if outcome == "succeed" else job.fail("The model ran out of memory; choose 480p.")
        finally:
            connection.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_prefer_wait_answers_when_the_job_ends(user, token_client, enqueued):
    worker = run_soon(enqueued, 1.0)
    started = time.monotonic()
    response = create(token_client(user), {"Prefer": "wait=20"})
    elapsed = time.monotonic() - started
    worker.join()
    assert response.status_code == 201
    assert response["Preference-Applied"] == "wait=20"
    body = response.json()
    assert body["status"] == "SUCCEEDED" and body["progress"] == 1.0
    assert 0.9 <= elapsed < 10


def test_prefer_wait_gives_up_after_n_seconds(user, token_client, enqueued):
    started = time.monotonic()
    response = create(token_client(user), {"Prefer": "respond-async, wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 201 and response.json()["status"] == "QUEUED"
    assert response["Preference-Applied"] == "wait=1"
    assert 1.0 <= elapsed < 5


def test_without_prefer_the_answer_is_immediate(user, token_client, enqueued):
    response = create(token_client(user))
    assert response.status_code == 201 and response.json()["status"] == "QUEUED"
    assert "Preference-Applied" not in response


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "wait=1.5"])
def test_a_bad_wait_is_a_400_and_creates_nothing(user, token_client, prefer):
    response = create(token_client(user), {"Prefer": prefer})
    assert response.status_code == 400
    assert response.json()["field"] == "Prefer"
    assert not Job.objects.exists()


def test_waiting_slots_are_limited(user, token_client, enqueued, settings):
    settings.TURBO_PREFER_WAIT_MAX_WAITERS = 0
    started = time.monotonic()
    response = create(token_client(user), {"Prefer": "wait=30"})
    assert time.monotonic() - started < 5
    assert response.status_code == 201 and "Preference-Applied" not in response


@pytest.mark.parametrize(("value", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400),
                                                ("2h", 7200), ("1m30s", 90)])
def test_cancel_after_sets_a_deadline(user, token_client, value, seconds):
    response = create(token_client(user), {"Cancel-After": value})
    assert response.status_code == 201
    deadline = JobDeadline.objects.get(job_id=response.json()["id"])
    assert deadline.cancel_at - deadline.job.created_at == timedelta(seconds=seconds)
    assert deadline.requested == value


@pytest.mark.parametrize("value", ["1", "4s", "soon", "8d", "-5", "1x"])
def test_a_bad_cancel_after_is_a_400_and_creates_nothing(user, token_client, value):
    response = create(token_client(user), {"Cancel-After": value})
    assert response.status_code == 400 and response.json()["field"] == "Cancel-After"
    assert not Job.objects.exists()


def test_overdue_jobs_end_canceled_with_the_reason(user, token_client, settings):
    settings.TURBO_MAX_ACTIVE_JOBS = 0
    client = token_client(user)
    queued = create(client, {"Cancel-After": "5m"}).json()["id"]
    running = create(client, {"Cancel-After": "30s"}).json()["id"]
    later = create(client, {"Cancel-After": "1h"}).json()["id"]
    finished = create(client, {"Cancel-After": "10s"}).json()["id"]
    Job.objects.get(id=running).claim(worker="test-gpu:0")
    done = Job.objects.get(id=finished)
    done.claim(worker="test-gpu:1")
    done.succeed()

    assert sorted(lifecycle.cancel_overdue_jobs(now=timezone.now() + timedelta(minutes=6))) == sorted([queued, running])
    for job_id, requested in ((queued, "5m"), (running, "30s")):
        shown = client.get(reverse("api:job-detail", args=[job_id])).json()
        assert shown["status"] == "CANCELED"
        assert "Cancel-After" in shown["error"] and requested in shown["error"]
    assert Job.objects.get(id=later).status == Job.Status.QUEUED
    assert Job.objects.get(id=finished).status == Job.Status.SUCCEEDED


def test_the_reaper_round_cancels_overdue_jobs(user, token_client):
    job_id = create(token_client(user), {"Cancel-After": "5s"}).json()["id"]
    JobDeadline.objects.filter(job_id=job_id).update(cancel_at=timezone.now() - timedelta(seconds=1))
    reaper = ReaperThread(interval_s=0.1)
    reaper.start()
    try:
        deadline = time.monotonic() + 10
        while Job.objects.get(id=job_id).status != Job.Status.CANCELED and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        reaper.stop()
    assert Job.objects.get(id=job_id).status == Job.Status.CANCELED


def test_openapi_documents_prefer_and_cancel_after(api_client):
    schema = api_client.get(reverse("schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    names = {p["name"] for p in schema["paths"]["/api/v1/jobs/"]["post"]["parameters"]}
    assert {"Prefer", "Cancel-After", "Idempotency-Key"} <= names


def test_prefer_wait_without_an_event_channel_polls(user, token_client, enqueued, settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: no channel to hear the job end on
    worker = run_soon(enqueued, 1.0)
    started = time.monotonic()
    response = create(token_client(user), {"Prefer": "wait=20"})
    elapsed = time.monotonic() - started
    worker.join()
    assert response.status_code == 201 and response["Preference-Applied"] == "wait=20"
    assert response.json()["status"] == "SUCCEEDED"
    assert 0.9 <= elapsed < 10
    assert "polling instead" in caplog.text
