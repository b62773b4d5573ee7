"""API keys on the real database: made once and shown once, stored as hashes, sent as Bearer (or Token), last use
recorded, revocable from the API and the account page, expiry, read-only keys, and the legacy token still works."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from generation.models import Job
from tests.factories import png_bytes, stored_job
from turbosite.api_keys.models import ApiKey

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_queue(monkeypatch):
    monkeypatch.setattr("generation.services.enqueue_job", lambda job_id: None)


def bearer(key: str, scheme: str = "Bearer") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    return client


def make_key(client, **fields) -> dict:
    response = client.post(reverse("api:key-list"), {"name": "nightly batch", **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_key_is_shown_once_and_stored_only_as_a_hash(user, token_client):
    client = token_client(user)
    made = make_key(client, expires_in_days=30)
    key = made["key"]
    assert key.startswith("tsk_") and len(key) > 40
    assert made["prefix"] == key[: len(made["prefix"])] and made["state"] == "active"
    assert made["expires_at"] is not None and made["read_only"] is False
    listed = client.get(reverse("api:key-list")).json()
    assert [k["id"] for k in listed] == [made["id"]]
    assert "key" not in listed[0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM api_keys_apikey")
        row = cursor.fetchone()
    assert key not in " ".join(str(value) for value in row)
    assert key.split("_", 2)[2] not in " ".join(str(value) for value in row)


def test_bearer_and_token_schemes_authenticate_and_record_last_use(user, token_client):
    key = make_key(token_client(user))["key"]
    assert ApiKey.objects.get().last_used_at is None
    for scheme in ("Bearer", "Token", "bearer"):
        response = bearer(key, scheme).get(reverse("api:job-list"))
        assert response.status_code == 200, (scheme, response.content)
    assert ApiKey.objects.get().last_used_at is not None
    # The legacy token keeps working beside the keys.
    assert token_client(user).get(reverse("api:job-list")).status_code == 200


def test_several_named_keys_see_only_their_users_jobs(user, other_user, token_client):
    first = make_key(token_client(user), name="laptop")["key"]
    second = make_key(token_client(user), name="server")["key"]
    theirs = make_key(token_client(other_user))["key"]
    job = stored_job(user)
    for key in (first, second):
        assert bearer(key).get(reverse("api:job-detail", args=[job.id])).status_code == 200
    assert bearer(theirs).get(reverse("api:job-detail", args=[job.id])).status_code == 404
    assert {k["name"] for k in token_client(user).get(reverse("api:key-list")).json()} == {"laptop", "server"}


@pytest.mark.parametrize("key", ["tsk_0000000000_notakey", "tsk_", "tsk_zz", "garbage-token"])
def test_unknown_keys_are_a_401(user, key):
    response = bearer(key).get(reverse("api:job-list"))
    assert response.status_code == 401
    assert response.json()["detail"]


def test_a_revoked_key_stops_at_once(user, other_user, token_client):
    client = token_client(user)
    made = make_key(client)
    assert token_client(other_user).delete(reverse("api:key-detail", args=[made["id"]])).status_code == 404
    assert bearer(made["key"]).get(reverse("api:job-list")).status_code == 200
    assert client.delete(reverse("api:key-detail", args=[made["id"]])).status_code == 204
    response = bearer(made["key"]).get(reverse("api:job-list"))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert client.get(reverse("api:key-list")).json()[0]["state"] == "revoked"


def test_an_expired_key_is_refused(user, token_client):
    made = make_key(token_client(user), expires_in_days=1)
    ApiKey.objects.filter(id=made["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(made["key"]).get(reverse("api:job-list"))
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_bad_key_requests_are_a_400(user, token_client):
    client = token_client(user)
    for body in ({"name": ""}, {"name": "x" * 101}, {"name": "ok", "expires_in_days": 0}):
        response = client.post(reverse("api:key-list"), body, format="json")
        assert response.status_code == 400, body
    assert not ApiKey.objects.exists()


def test_a_read_only_key_reads_but_changes_nothing(user, token_client):
    key = make_key(token_client(user), read_only=True)["key"]
    job = stored_job(user, Job.Status.SUCCEEDED)
    client = bearer(key)
    assert client.get(reverse("api:job-list")).status_code == 200
    assert client.get(reverse("api:job-detail", args=[job.id])).status_code == 200
    image = SimpleUploadedFile("in.png", png_bytes(), content_type="image/png")
    refused = [
        client.post(reverse("api:job-list"), {"image": image, "prompt": "a cat"}, format="multipart"),
        client.delete(reverse("api:job-detail", args=[job.id])),
        client.post(reverse("api:job-retry", args=[job.id])),
        client.post(reverse("api:key-list"), {"name": "escalate"}, format="json"),
        client.post("/v1/turbodiffusion/wan22-i2v/jobs",
                    {"image": SimpleUploadedFile("in.png", png_bytes(), content_type="image/png"),
                     "prompt": "a cat"}, format="multipart"),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert "read-only" in refused[0].json()["detail"]
    assert Job.objects.count() == 1 and ApiKey.objects.count() == 1


def test_the_account_page_makes_shows_once_and_revokes_keys(user, client):
    client.force_login(user)
    response = client.post(reverse("api-key-create"), {"name": "render farm", "expires_in_days": "90",
                                                       "read_only": "on"})
    assert response.status_code == 302
    page = client.get(reverse("account")).content.decode()
    api_key = ApiKey.objects.get()
    assert api_key.read_only and api_key.expires_at is not None
    shown = page.split('data-testid="new-api-key"')[0].rsplit('value="', 1)[1].split('"', 1)[0]
    assert shown.startswith(api_key.display_prefix) and api_key.matches(shown)
    again = client.get(reverse("account")).content.decode()
    assert shown not in again and "render farm" in again  # listed, never shown again
    assert bearer(shown).get(reverse("api:job-list")).status_code == 200
    assert client.post(reverse("api-key-revoke", args=[api_key.id])).status_code == 302
    assert bearer(shown).get(reverse("api:job-list")).status_code == 401
    assert client.post(reverse("api-key-create"), {"name": ""}).status_code == 302
    assert ApiKey.objects.count() == 1


def test_another_users_key_cannot_be_revoked_from_the_page(user, other_user, client, token_client):
    made = make_key(token_client(other_user))
    client.force_login(user)
    assert client.post(reverse("api-key-revoke", args=[made["id"]])).status_code == 404
    assert bearer(made["key"]).get(reverse("api:job-list")).status_code == 200


def test_a_password_change_revokes_nothing_and_says_so(user, client, token_client):
    key = make_key(token_client(user))["key"]
    client.force_login(user)
    response = client.post(reverse("password_change"), {
        "old_password": user.plain_password, "new_password1": "quiet-meadow-5521",
        "new_password2": "quiet-meadow-5521"}, follow=True)
    assert response.status_code == 200 and response.redirect_chain[-1][0] == reverse("password_change_done")
    assert "API keys and API token were not changed" in response.content.decode()
    assert bearer(key).get(reverse("api:job-list")).status_code == 200


def test_openapi_documents_keys_and_the_bearer_scheme(api_client):
    schema = api_client.get(reverse("schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert schema["components"]["securitySchemes"]["apiKeyAuth"]["scheme"] == "bearer"
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/keys/"])
    assert "delete" in schema["paths"]["/api/v1/keys/{id}/"]
