"""The replaced system's API (seed runbook section 7) keeps working with the same clients."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.test import Client
from rest_framework.test import APIClient

from generation.models import Job

CREATE = "/v1/turbodiffusion/wan22-i2v/jobs"


def state(client: APIClient, job_id) -> dict:
    response = client.get(f"/v1/turbodiffusion/jobs/{job_id}")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def alice(user, token_client) -> APIClient:
    return token_client(user)


def test_create_answers_job_id_and_status_and_runs_the_default_model(alice, user, image_upload, settings, enqueued,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(CREATE, {"prompt": "waves roll in", "image": image_upload(), "seed": "11",
                                       "num_steps": "3", "quantized": "true"}, format="multipart")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"job_id", "status"} and body["status"] == "queued"
    job = Job.objects.get(id=body["job_id"])
    assert (job.owner, job.model, job.seed, job.num_steps, job.prompt) == (user, settings.TURBO_DEFAULT_MODEL, 11, 3,
                                                                           "waves roll in")
    assert enqueued == [body["job_id"]]


@pytest.mark.parametrize(("seconds", "frames"), [(1, 17), (2, 33), (1.1, 17), (1.2, 21), (0.1, 5), (10, 161)])
def test_duration_becomes_the_nearest_valid_frame_count(alice, image_upload, seconds, frames):
    response = alice.post(CREATE, {"prompt": "p", "image": image_upload(), "duration_seconds": str(seconds)},
                          format="multipart")
    assert response.status_code == 200, response.content
    assert Job.objects.get(id=response.json()["job_id"]).num_frames == frames


@pytest.mark.parametrize("seconds", [10.2, 30, 60])
def test_a_duration_beyond_the_model_is_a_400_naming_the_limit(alice, image_upload, enqueued, seconds):
    """161 frames at 16 fps is the most the model makes: longer is refused, not silently cut to 10 s."""
    response = alice.post(CREATE, {"prompt": "p", "image": image_upload(), "duration_seconds": str(seconds)},
                          format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"] == (f"duration_seconds must be at most 10 s for model tiny at 480p (161 frames "
                                         f"at 16 fps), got {seconds:g}")
    assert not Job.objects.exists() and enqueued == []


def test_output_url_is_valid_for_one_hour_like_the_seed(alice, user, make_job, settings):
    """The runbook promises a 1 h presigned URL; the v1 API keeps the site's shorter default."""
    job = make_job(user, Job.Status.SUCCEEDED)
    compat = parse_qs(urlsplit(state(alice, job.id)["output_url"]).query)
    assert compat["X-Amz-Expires"] == ["3600"]
    api = parse_qs(urlsplit(alice.get(f"/api/v1/jobs/{job.id}/").json()["output_url"]).query)
    assert api["X-Amz-Expires"] == [str(settings.SIGNED_URL_MAX_AGE)] != ["3600"]


def test_local_output_url_still_plays_after_50_minutes_and_not_after_61(local_storage, alice, user, make_job,
                                                                       monkeypatch):
    from django.core import signing

    job = make_job(user, Job.Status.SUCCEEDED)
    url = urlsplit(state(alice, job.id)["output_url"])
    query = {key: values[0] for key, values in parse_qs(url.query).items()}
    browser = Client()
    now = signing.time.time()
    monkeypatch.setattr(signing.time, "time", lambda: now + 50 * 60)
    assert browser.get(url.path, query).status_code == 200
    assert browser.get(url.path, {**query, "x": "7200"}).status_code == 403  # the lifetime is signed too
    monkeypatch.setattr(signing.time, "time", lambda: now + 61 * 60)
    expired = browser.get(url.path, query)
    assert expired.status_code == 403 and b"expired" in expired.content


def test_create_errors_are_a_detail_message(alice, image_upload):
    missing = alice.post(CREATE, {"image": image_upload()}, format="multipart")
    assert missing.status_code == 400 and "prompt" in missing.json()["detail"]
    steps = alice.post(CREATE, {"prompt": "p", "image": image_upload(), "num_steps": "9"}, format="multipart")
    assert steps.status_code == 400 and "num_steps" in steps.json()["detail"]


def test_status_fields_through_the_life_of_a_job(alice, user, make_job):
    queued = make_job(user, Job.Status.QUEUED)
    assert state(alice, queued.id) == {"job_id": str(queued.id), "status": "queued", "progress": 0.0}
    running = make_job(user, Job.Status.RUNNING, progress=0.5)
    assert state(alice, running.id)["status"] == "running"

    done = state(alice, make_job(user, Job.Status.SUCCEEDED).id)
    assert done["status"] == "succeeded" and "error" not in done
    fetched = requests.get(done["output_url"], timeout=10)
    assert fetched.status_code == 200 and fetched.headers["Content-Type"] == "video/mp4"

    failed = state(alice, make_job(user, Job.Status.FAILED, error="Out of GPU memory; try 480p.").id)
    assert failed["status"] == "failed" and failed["error"] == "Out of GPU memory; try 480p."
    assert "output_url" not in failed
    assert alice.get(f"/v1/turbodiffusion/jobs/{queued.id}/").status_code == 200  # trailing slash tolerated


def test_bearer_tokens_work_and_anonymous_or_strangers_do_not(user, other_user, token_client, api_client, make_job,
                                                              image_upload):
    job = make_job(user, Job.Status.SUCCEEDED)
    token = token_client(user).token
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert state(bearer, job.id)["status"] == "succeeded"

    assert api_client.get(f"/v1/turbodiffusion/jobs/{job.id}").status_code == 401
    assert api_client.post(CREATE, {"prompt": "p", "image": image_upload()}, format="multipart").status_code == 401
    stranger = token_client(other_user).get(f"/v1/turbodiffusion/jobs/{job.id}")
    assert stranger.status_code == 404 and "output_url" not in stranger.json()
    assert token_client(user).get("/v1/turbodiffusion/jobs/not-a-uuid").status_code == 404
