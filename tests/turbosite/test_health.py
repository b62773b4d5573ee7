"""/healthz answers while the process lives; /readyz checks database, broker and storage for real and names the
parts that are down with a 503."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import requests
from django.test import override_settings

from tests.bootstrap import s3_server
from tests.django_process import child_env, run_json

# Asks /readyz from a child process whose settings come from its own environment.
READYZ_IN_CHILD = (
    "from django.test import Client\n"
    "response = Client().get('/readyz')\n"
    "print(json.dumps({'status_code': response.status_code, 'body': response.json()}))\n"
)


def _closed_port() -> int:
    # Bind, note the port, release it: nothing listens there for the rest of the test.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _s3_storages(endpoint: str) -> dict:
    server = s3_server()
    assert server is not None
    return {
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
            "bucket_name": os.environ["S3_BUCKET"], "endpoint_url": endpoint, "access_key": server.access_key,
            "secret_key": server.secret_key, "region_name": "us-east-1", "addressing_style": "path"}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def _local_storages(location: Path) -> dict:
    return {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": location}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def test_healthz_needs_nothing(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_all_parts_up_on_real_services(client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["failing"] == []
    assert {name: part["kind"] for name, part in body["checks"].items()} == {
        "database": "postgresql", "broker": "redis", "storage": "s3"}


@pytest.mark.django_db
def test_readyz_names_broker_when_redis_is_down(client):
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0"):
        response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"]["error"] == "ConnectionError"
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]


@pytest.mark.django_db
def test_readyz_without_redis_uses_in_process_broker(client):
    with override_settings(REDIS_URL=""):
        response = client.get("/readyz")

    assert response.status_code == 200
    broker = response.json()["checks"]["broker"]
    assert (broker["ok"], broker["kind"]) == (True, "in-process")


@pytest.mark.django_db
def test_readyz_names_storage_when_s3_is_down(client):
    with override_settings(STORAGES=_s3_storages(f"http://127.0.0.1:{_closed_port()}")):
        response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["storage"]
    assert body["checks"]["storage"]["error"] == "EndpointConnectionError"


@pytest.mark.django_db
def test_readyz_names_storage_when_bucket_is_missing(client):
    storages = _s3_storages(s3_server().endpoint)
    storages["default"]["OPTIONS"]["bucket_name"] = "no-such-bucket-here"
    with override_settings(STORAGES=storages):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["storage"]


@pytest.mark.django_db
def test_readyz_local_folder_writable_and_not(client, tmp_path):
    with override_settings(STORAGES=_local_storages(tmp_path / "media")):
        up = client.get("/readyz")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the media folder should be")
    with override_settings(STORAGES=_local_storages(blocker / "media")):
        down = client.get("/readyz")

    assert up.status_code == 200
    assert up.json()["checks"]["storage"]["kind"] == "local"
    assert list((tmp_path / "media").iterdir()) == [], "the probe file must not be left behind"
    assert down.status_code == 503
    assert down.json()["failing"] == ["storage"]


def test_readyz_names_every_part_that_is_down(tmp_path):
    # Settings for the database are read once per process, so the broken database runs in its own process.
    env = child_env(
        tmp_path,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{_closed_port()}/nothing",
        REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0",
        S3_BUCKET="turbosite-test",
        S3_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}",
        S3_ACCESS_KEY_ID="x",
        S3_SECRET_ACCESS_KEY="y",
    )
    result = run_json(READYZ_IN_CHILD, env)

    assert result["status_code"] == 503
    assert result["body"]["failing"] == ["database", "broker", "storage"]
    assert result["body"]["checks"]["database"]["error"] == "OperationalError"


def test_readyz_database_down_alone(tmp_path):
    env = child_env(tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:{_closed_port()}/nothing")
    result = run_json(READYZ_IN_CHILD, env)

    assert result["status_code"] == 503
    assert result["body"]["failing"] == ["database"]
    assert result["body"]["checks"]["storage"]["kind"] == "local"
    assert result["body"]["checks"]["broker"]["kind"] == "in-process"


@pytest.mark.django_db(transaction=True)
def test_live_server_reaches_postgresql_redis_and_s3(live_server):
    # The browser tests' server thread runs on the same real services as the rest of the suite.
    response = requests.get(f"{live_server.url}/readyz", timeout=30)

    assert response.status_code == 200, response.text
    assert {name: part["kind"] for name, part in response.json()["checks"].items()} == {
        "database": "postgresql", "broker": "redis", "storage": "s3"}
