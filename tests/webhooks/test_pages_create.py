"""Webhooks on the pages' create (the new-video form posted by a script asking for JSON, or by the browser), checked
and saved by the same service as the API's: a real receiver on loopback gets a signed delivery, a refused address
is a 400 in the API's error shape with nothing stored, and the compatibility API refuses webhook fields instead of
ignoring them."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from generation.models import Job
from generation.webhooks.models import JobWebhook
from generation.webhooks.services import secret_for
from tests.factories import png_bytes
from tests.webhooks.test_webhooks import finish, verify

pytestmark = pytest.mark.django_db(transaction=True)

JSON = {"HTTP_ACCEPT": "application/json"}


def post_form(client, extra: dict | None = None, **headers):
    data = {"image": SimpleUploadedFile("in.png", png_bytes(), content_type="image/png"),
            "prompt": "a red square drifts", "num_frames": 5, "num_steps": 4, **(extra or {})}
    return client.post(reverse("new-video"), data, **headers)


def inputs_stored(user) -> list[str]:
    try:
        _, files = default_storage.listdir(f"inputs/{user.pk}")
    except FileNotFoundError:
        return []
    return files


def test_a_job_made_on_the_page_sends_a_signed_webhook(client, user, token_client, receiver, webhook_worker):
    client.force_login(user)
    response = post_form(client, {"webhook_url": receiver.url, "webhook_events": ["start", "completed"]}, **JSON)
    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"].endswith(f"/api/v1/jobs/{body['id']}/")
    shown = token_client(user).get(reverse("api:job-detail", args=[body["id"]])).json()
    links = {"output_url", "poster_url", "input_url", "eta_seconds"}  # signed anew; an estimate
    assert body["status"] == "QUEUED" and set(body) == set(shown)
    assert {k: v for k, v in body.items() if k not in links} == {k: v for k, v in shown.items() if k not in links}
    assert JobWebhook.objects.get(job_id=body["id"]).events == ["start", "completed"]

    finish(body["id"])
    received = {delivery.headers["turbosite-event"]: delivery for delivery in receiver.wait_for(2)}
    assert set(received) == {"start", "completed"}  # two delivery threads: either may arrive first
    start, completed = received["start"], received["completed"]
    secret = secret_for(user).secret
    assert verify(secret, start) and verify(secret, completed)
    assert completed.json()["id"] == body["id"] and completed.json()["status"] == "SUCCEEDED"


def test_the_browsers_form_accepts_a_webhook_too(client, user, receiver, webhook_worker):
    client.force_login(user)
    response = post_form(client, {"webhook_url": receiver.url})
    assert response.status_code == 302  # to the job page, as always
    job = Job.objects.get(owner=user)
    assert JobWebhook.objects.get(job=job).events == ["completed"]  # the API's default
    finish(str(job.id), Job.Status.FAILED)
    [delivery] = receiver.wait_for(1)
    assert verify(secret_for(user).secret, delivery) and delivery.json()["status"] == "FAILED"


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/hook",
                                 "http://127.0.0.1:9/hook"])
def test_a_refused_address_is_a_400_in_the_api_error_shape(client, user, url, settings):
    settings.TURBO_WEBHOOK_ALLOWED_NETWORKS = []  # production: loopback is refused too
    client.force_login(user)
    response = post_form(client, {"webhook_url": url}, **JSON)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "code", "field"}
    assert body["field"] == "webhook_url" and body["code"] == "webhook_url_refused"
    assert not Job.objects.filter(owner=user).exists() and inputs_stored(user) == []


def test_the_page_refuses_what_the_api_refuses_with_the_same_words(client, user, token_client, settings):
    settings.TURBO_WEBHOOK_ALLOWED_NETWORKS = []
    client.force_login(user)
    cases = [{"webhook_url": "ftp://example.org/hook"}, {"webhook_url": "https://u:p@example.org/hook"},
             {"webhook_events": "completed"}, {"webhook_url": "http://192.168.1.5/hook", "webhook_events": "done"}]
    api = token_client(user)
    for fields in cases:
        page = post_form(client, fields, **JSON)
        data = {"image": SimpleUploadedFile("in.png", png_bytes(), content_type="image/png"),
                "prompt": "a red square drifts", "num_frames": 5, **fields}
        from_api = api.post(reverse("api:job-list"), data, format="multipart")
        assert page.status_code == from_api.status_code == 400, fields
        assert page.json() == from_api.json(), fields
    assert not Job.objects.filter(owner=user).exists()


def test_the_browsers_form_shows_a_refused_address_as_a_form_error(client, user, settings):
    settings.TURBO_WEBHOOK_ALLOWED_NETWORKS = []
    client.force_login(user)
    response = post_form(client, {"webhook_url": "http://169.254.169.254/"})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    assert b"not a public address" in response.content or b"refused" in response.content.lower()
    assert not Job.objects.filter(owner=user).exists()


def test_a_bad_form_posted_for_json_is_a_400_naming_the_field(client, user):
    client.force_login(user)
    response = post_form(client, {"prompt": ""}, **JSON)
    assert response.status_code == 400
    assert response.json()["field"] == "prompt" and response.json()["code"] == "required"


def test_the_compatibility_api_refuses_webhook_fields(user, token_client, receiver, webhook_settings):
    data = {"image": SimpleUploadedFile("in.png", png_bytes(), content_type="image/png"), "prompt": "a cat",
            "webhook_url": receiver.url}
    response = token_client(user).post("/v1/turbodiffusion/wan22-i2v/jobs", data, format="multipart")
    assert response.status_code == 400
    assert response.json()["field"] == "webhook_url" and response.json()["code"] == "webhooks_not_supported"
    assert "/api/v1/jobs/" in response.json()["detail"]
    assert not Job.objects.filter(owner=user).exists() and inputs_stored(user) == []
