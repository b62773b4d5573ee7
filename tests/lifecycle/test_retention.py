"""Retention on the real database and S3 server: finished jobs older than TURBO_RETENTION_DAYS lose their files and
are marked expired (API and pages say so); 0 keeps everything; active jobs are never touched (the actor that runs
it periodically: test_retention_actor.py). Users delete all
their videos, or their account, from the account page (password asked again)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from generation import storage
from generation.lifecycle import retention
from generation.lifecycle.models import JobExpiry
from generation.models import Job
from tests.factories import delete_job_files, stored_job
from turbosite.api_keys.services import create_key

pytestmark = pytest.mark.django_db


def files_of(job: Job) -> list[str]:
    return [storage.input_name(job), storage.output_name(job), storage.poster_name(job)]


def aged(owner, status=Job.Status.SUCCEEDED, days: float = 31):
    job = stored_job(owner, status)
    Job.objects.filter(id=job.id).update(finished_at=timezone.now() - timedelta(days=days))
    return Job.objects.get(id=job.id)


@pytest.fixture
def cleanup():
    made: list[Job] = []
    yield made
    delete_job_files(made)


def test_old_finished_jobs_lose_their_files_and_are_marked_expired(user, settings, cleanup, token_client):
    settings.TURBO_RETENTION_DAYS = 30
    old_ok, old_failed = aged(user), aged(user, Job.Status.FAILED)
    recent = aged(user, days=29)
    queued = stored_job(user)
    Job.objects.filter(id=queued.id).update(created_at=timezone.now() - timedelta(days=90))
    cleanup.extend([old_ok, old_failed, recent, queued])
    assert default_storage.exists(storage.output_name(old_ok))

    assert sorted(retention.expire_old_jobs()) == sorted([str(old_ok.id), str(old_failed.id)])
    for job in (old_ok, old_failed):
        assert not any(default_storage.exists(name) for name in files_of(job))
        job.refresh_from_db()
        assert job.output_video.name == "" and job.input_image.name == ""
        assert JobExpiry.objects.get(job=job).after_days == 30
    assert default_storage.exists(storage.output_name(recent))
    assert default_storage.exists(storage.input_name(queued))
    assert retention.expire_old_jobs() == []  # nothing twice

    shown = token_client(user).get(reverse("api:job-detail", args=[old_ok.id])).json()
    assert shown["status"] == "SUCCEEDED" and shown["expired_at"] is not None
    assert shown["output_url"] is None and shown["input_url"] is None
    assert token_client(user).get(reverse("api:job-detail", args=[recent.id])).json()["expired_at"] is None


def test_zero_keeps_everything(user, settings, cleanup):
    settings.TURBO_RETENTION_DAYS = 0
    job = aged(user, days=3650)
    cleanup.append(job)
    assert retention.expire_old_jobs() == []
    assert default_storage.exists(storage.output_name(job)) and not JobExpiry.objects.exists()


def test_pages_say_a_job_expired(user, client, settings, cleanup):
    settings.TURBO_RETENTION_DAYS = 30
    job = aged(user)
    cleanup.append(job)
    retention.expire_old_jobs()
    client.force_login(user)
    page = client.get(reverse("job", kwargs={"job_id": job.id})).content.decode()
    assert 'data-testid="job-expired"' in page and "keeps finished videos for 30 days" in page
    assert 'data-testid="rerun"' not in page and 'data-testid="video"' not in page
    assert "Expired: its files were deleted" in client.get(reverse("history")).content.decode()


def test_delete_all_videos_needs_the_password(user, other_user, client, cleanup):
    mine = [stored_job(user, Job.Status.SUCCEEDED), stored_job(user, Job.Status.RUNNING)]
    theirs = stored_job(other_user, Job.Status.SUCCEEDED)
    cleanup.extend([*mine, theirs])
    client.force_login(user)
    client.post(reverse("delete-all-videos"), {"password": "not-my-password"})
    assert Job.objects.filter(owner=user).count() == 2
    response = client.post(reverse("delete-all-videos"), {"password": user.plain_password}, follow=True)
    assert "Deleted 2 videos" in response.content.decode()
    assert not Job.objects.filter(owner=user).exists()
    assert not any(default_storage.exists(name) for job in mine for name in files_of(job))
    assert default_storage.exists(storage.output_name(theirs))


def test_delete_account_removes_the_user_and_everything(user, client, cleanup):
    job = stored_job(user, Job.Status.SUCCEEDED)
    cleanup.append(job)
    key = create_key(user, name="ci").key
    Token.objects.get_or_create(user=user)
    client.force_login(user)
    client.post(reverse("delete-account"), {"password": "wrong"})
    assert get_user_model().objects.filter(id=user.id).exists()
    response = client.post(reverse("delete-account"), {"password": user.plain_password})
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert not get_user_model().objects.filter(id=user.id).exists()
    assert not Job.objects.exists() and not Token.objects.exists()
    assert not any(default_storage.exists(name) for name in files_of(job))
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.get(reverse("api:job-list")).status_code == 401
    assert client.get(reverse("account")).status_code == 302  # logged out


def test_account_page_states_the_retention(user, client, settings):
    settings.TURBO_RETENTION_DAYS = 14
    client.force_login(user)
    assert "deleted 14 days after they" in client.get(reverse("account")).content.decode()
    settings.TURBO_RETENTION_DAYS = 0
    assert "only when you delete them" in client.get(reverse("account")).content.decode()
