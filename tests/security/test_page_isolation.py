"""Two users on the pages and file links: bob never sees, changes or downloads alice's job (404, not 403, so its
existence is not revealed), and stored files are reachable only through links made for their owner."""

from __future__ import annotations

import pytest
from django.urls import reverse

from generation import storage
from generation.models import Job


@pytest.fixture
def bob_client(client, other_user):
    client.force_login(other_user)
    return client


def test_another_users_job_page_and_actions_are_404_and_change_nothing(bob_client, finished_job, signed_names):
    job = finished_job()
    assert bob_client.get(reverse("job", args=[job.id])).status_code == 404
    for action in ("job-cancel", "job-rerun", "job-delete"):
        assert bob_client.post(reverse(action, args=[job.id])).status_code == 404, action
    after = Job.objects.get(id=job.id)
    assert after.status == Job.Status.SUCCEEDED and Job.objects.count() == 1  # not canceled, rerun or deleted
    assert storage.read_bytes(job.output_video.name)[4:8] == b"ftyp"  # files still there
    assert signed_names == []  # no link was made for any of alice's files


def test_history_shows_only_ones_own_jobs(bob_client, finished_job, user, other_user):
    alices = finished_job()
    alices.prompt = "alice's secret lighthouse"
    alices.save(update_fields=["prompt"])
    bobs = finished_job(owner=other_user)
    page = bob_client.get(reverse("history")).content.decode()
    assert str(bobs.id) in page
    assert str(alices.id) not in page and "secret lighthouse" not in page
    assert storage.output_name(alices) not in page and storage.poster_name(alices) not in page


def test_pages_need_a_login(client, finished_job):
    job = finished_job()
    for url in (reverse("new-video"), reverse("history"), reverse("job", args=[job.id])):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url
    for action in ("job-cancel", "job-rerun", "job-delete"):
        response = client.post(reverse(action, args=[job.id]))
        assert response.status_code in (302, 403), action
    assert Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED


def test_stored_files_are_not_served_by_plain_path(bob_client, finished_job, settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media"), "base_url": "/media/"}}}
    job = finished_job()
    for name in (storage.input_name(job), storage.output_name(job), storage.poster_name(job)):
        assert bob_client.get(f"/media/{name}").status_code == 404
        assert bob_client.get(f"/files/{name}").status_code == 403  # no signature: refused like S3 would


def test_other_users_job_ids_are_404_on_the_api_and_compat_routes_too(token_client, other_user, finished_job):
    job = finished_job()
    bob = token_client(other_user)
    for method, path in (("get", f"/api/v1/jobs/{job.id}/"), ("delete", f"/api/v1/jobs/{job.id}/"),
                         ("post", f"/api/v1/jobs/{job.id}/cancel/"), ("post", f"/api/v1/jobs/{job.id}/retry/"),
                         ("get", f"/v1/turbodiffusion/jobs/{job.id}")):
        assert getattr(bob, method)(path).status_code == 404, path
    assert Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED and Job.objects.count() == 1


def test_page_actions_need_the_csrf_token(other_user, finished_job):
    from django.test import Client

    job = finished_job(owner=other_user)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(other_user)
    for action in ("job-cancel", "job-rerun", "job-delete"):
        assert browser.post(reverse(action, args=[job.id])).status_code == 403, action  # a forged cross-site post
    assert Job.objects.filter(id=job.id, status=Job.Status.SUCCEEDED).exists() and Job.objects.count() == 1
