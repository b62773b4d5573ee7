"""Abuse and access: brute force on the token endpoint, presigned links only after the ownership check and short-
lived, signed local links that cannot be bent to another user's file, and `check --deploy` with the environment
docker/compose.yaml gives the containers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from axes.helpers import get_cool_off
from django.conf import settings

from generation import storage

ROOT = Path(__file__).resolve().parents[2]


def test_token_endpoint_is_locked_after_repeated_failures(api_client, user, settings):
    """Without this, /api/v1/auth/token/ is a password-guessing endpoint beside the rate-limited login page."""

    def guess(password: str):
        return api_client.post("/api/v1/auth/token/", {"username": "alice", "password": password})

    for attempt in range(settings.AXES_FAILURE_LIMIT - 1):
        assert "token" not in guess(f"guess-{attempt}").json()
    assert "token" in guess(user.plain_password).json()  # under the limit the right password still works
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        wrong = guess(f"guess-{attempt}")
        assert wrong.status_code in (400, 429) and "token" not in wrong.json()
    assert wrong.status_code == 429  # the failure that reaches the limit already says so, as the login page does
    locked = guess(user.plain_password)
    # Locked out: even the right password gets no token, and the answer says why and for how long, like the
    # login page: 429, Retry-After (the cool-off), a message a person understands.
    assert locked.status_code == 429, locked.content
    body = locked.json()
    assert "token" not in body and body["code"] == "locked_out"
    cool_off = int(get_cool_off().total_seconds())  # AXES_COOLOFF_TIME: 15 minutes today
    assert body["detail"].startswith(f"Too many failed logins for this account. Try again in {cool_off // 60} minutes")
    assert "Unable to log in" not in body["detail"]
    assert int(locked["Retry-After"]) == cool_off


def test_login_page_and_token_endpoint_answer_a_lockout_alike(client, api_client, user, settings):
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "alice", "password": f"guess-{attempt}"})
    page = client.post("/accounts/login/", {"username": "alice", "password": user.plain_password})
    api = api_client.post("/api/v1/auth/token/", {"username": "alice", "password": user.plain_password})
    assert page.status_code == api.status_code == 429
    assert page["Retry-After"] == api["Retry-After"] == str(int(get_cool_off().total_seconds()))
    html = page.content.decode()
    assert api.json()["detail"] in html and 'data-testid="locked-out"' in html and "<html" in html


def test_links_are_signed_only_for_the_owner_and_expire_soon(token_client, user, other_user, finished_job,
                                                             signed_names):
    job = finished_job()
    bob, alice = token_client(other_user), token_client(user)
    for path in (f"/api/v1/jobs/{job.id}/", f"/v1/turbodiffusion/jobs/{job.id}"):
        assert bob.get(path).status_code == 404
    assert bob.get("/api/v1/jobs/").json()["count"] == 0
    assert signed_names == []  # nothing was signed while answering bob

    body = alice.get(f"/api/v1/jobs/{job.id}/").json()
    assert storage.output_name(job) in signed_names and storage.poster_name(job) in signed_names
    url = urlsplit(body["output_url"])
    query = parse_qs(url.query)
    assert f"{url.scheme}://{url.netloc}" == settings.S3_PUBLIC_ENDPOINT_URL.rstrip("/")
    assert 0 < int(query["X-Amz-Expires"][0]) <= settings.SIGNED_URL_MAX_AGE <= 3600


@pytest.fixture
def local_storage(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media"), "base_url": "/media/"}}}


def test_local_link_cannot_be_bent_to_another_users_file(client, token_client, user, other_user, finished_job,
                                                         local_storage):
    alices = finished_job()
    bobs = finished_job(owner=other_user)
    link = token_client(other_user).get(f"/api/v1/jobs/{bobs.id}/").json()["output_url"]
    path = urlsplit(link).path + "?" + urlsplit(link).query
    assert client.get(path).status_code == 200  # bob's own link works without a session, like a presigned URL
    for target in (storage.output_name(alices), f"outputs/{other_user.id}/../{user.id}/{alices.id}.mp4"):
        bent = path.replace(storage.output_name(bobs), target)
        assert bent != path
        assert client.get(bent).status_code == 403


def test_local_link_expires(client, token_client, other_user, finished_job, local_storage, settings):
    job = finished_job(owner=other_user)
    link = urlsplit(token_client(other_user).get(f"/api/v1/jobs/{job.id}/").json()["output_url"])
    settings.SIGNED_URL_MAX_AGE = -1  # as if the link's time had run out
    response = client.get(f"{link.path}?{link.query}")
    assert response.status_code == 403 and b"expired" in response.content


def compose_environment() -> dict[str, str]:
    """The web container's environment from compose.yaml, filled from .env.example plus the required secrets."""
    values = {}
    for line in (ROOT / "docker/.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    values.update({"SECRET_KEY": "compose-" + "x9Fq2" * 10, "SITE_HOST": "video.example.org",
                   "POSTGRES_PASSWORD": "pw", "MINIO_ROOT_PASSWORD": "minio-secret-123",
                   "S3_PUBLIC_ENDPOINT_URL": "https://files.video.example.org"})

    def expand(text: str) -> str:
        return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: values.get(m.group(1)) or _default(m.group(0)), text)

    web = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())["services"]["web"]["environment"]
    return {key: expand(str(value)) for key, value in web.items()}


def _default(reference: str) -> str:
    match = re.match(r"\$\{\w+:-([^}]*)\}", reference)
    return match.group(1) if match else ""


def test_check_deploy_is_clean_with_the_compose_environment(tmp_path):
    env = {key: value for key, value in __import__("os").environ.items()
           if not key.startswith(("S3_", "DATABASE_", "REDIS_", "QUEUE_", "SECRET_", "DEBUG", "ALLOWED_"))}
    env.update(compose_environment())
    env.update({"TURBO_DATA_DIR": str(tmp_path), "TURBO_MODEL_DIR": str(tmp_path)})
    assert env["DEBUG"] == "0" and env["DATABASE_URL"].startswith("postgres://turbosite:pw@postgres")
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
