"""The replaced system's API (seed runbook section 7) keeps working with the same clients."""

from __future__ import annotations

import pytest
import requests
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


@pytest.mark.parametrize(("seconds", "frames"), [(1, 17), (2, 33), (1.1, 17), (1.2, 21), (0.1, 5), (30, 161)])
def test_duration_becomes_the_nearest_valid_frame_count(alice, image_upload, seconds, frames):
    response = alice.post(CREATE, {"prompt": "p", "image": image_upload(), "duration_seconds": str(seconds)},
                          format="multipart")
    assert response.status_code == 200, response.content
    assert Job.objects.get(id=response.json()["job_id"]).num_frames == frames


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
