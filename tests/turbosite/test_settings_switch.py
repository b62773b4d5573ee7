"""The environment alone picks the database (SQLite or PostgreSQL) and the file storage (local folder or S3),
and a production-like environment passes `manage.py check --deploy` without a single warning."""

from __future__ import annotations

import os
import secrets
import uuid
from urllib.parse import urlsplit

import pytest

from tests.bootstrap import s3_server
from tests.django_process import child_env, manage, run_json

# Connects for real and writes one file through default_storage, then reports what it used.
PROBE = """
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connection

connection.ensure_connection()
storage = storages["default"]
name = storage.save(PROBE_NAME, ContentFile(b"switch"))
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "vendor": connection.vendor,
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "storage": type(storage).__module__ + "." + type(storage).__name__,
    "location": str(getattr(storage, "location", "")),
    "bucket": getattr(storage, "bucket_name", None),
    "endpoint": getattr(storage, "endpoint_url", None),
    "saved": name,
    "redis_url": settings.REDIS_URL,
}))
"""


def _probe(env: dict[str, str], name: str) -> dict:
    return run_json(f"PROBE_NAME = {name!r}\n" + PROBE, env)


def _postgres_url() -> str:
    # The run's own database name exists only as test_<name>; the maintenance database always exists.
    parts = urlsplit(os.environ["DATABASE_URL"])
    return f"{parts.scheme}://{parts.netloc}/postgres"


def test_no_environment_gives_sqlite_and_local_folder(tmp_path):
    result = _probe(child_env(tmp_path), "switch/local.txt")

    assert result["engine"] == "django.db.backends.sqlite3"
    assert result["vendor"] == "sqlite"
    assert result["db_name"] == str(tmp_path / "db.sqlite3")
    assert result["storage"] == "django.core.files.storage.filesystem.FileSystemStorage"
    assert result["location"] == str(tmp_path / "media")
    assert (tmp_path / "media" / result["saved"]).read_bytes() == b"switch"
    assert result["redis_url"] == ""


def test_environment_gives_postgresql_and_s3(tmp_path):
    server = s3_server()
    assert server is not None, "the suite must run with its own S3 server (not TURBO_TEST_EMBEDDED)"
    env = child_env(
        tmp_path,
        DATABASE_URL=_postgres_url(),
        REDIS_URL="redis://127.0.0.1:6379/0",
        S3_BUCKET=os.environ["S3_BUCKET"],
        S3_ENDPOINT_URL=server.endpoint,
        S3_PUBLIC_ENDPOINT_URL=f"http://localhost:{server.port}",
        S3_ACCESS_KEY_ID=server.access_key,
        S3_SECRET_ACCESS_KEY=server.secret_key,
    )
    name = f"switch/{uuid.uuid4().hex}.txt"
    result = _probe(env, name)

    assert result["engine"] == "django.db.backends.postgresql"
    assert result["vendor"] == "postgresql"
    assert result["db_name"] == "postgres"
    assert result["storage"] == "storages.backends.s3.S3Storage"
    assert result["bucket"] == os.environ["S3_BUCKET"]
    assert result["endpoint"] == server.endpoint
    assert result["redis_url"] == "redis://127.0.0.1:6379/0"
    assert not (tmp_path / "media").exists()
    # The file really reached the S3 server.
    body = server.client().get_object(Bucket=os.environ["S3_BUCKET"], Key=result["saved"])["Body"].read()
    assert body == b"switch"


def _production_env(tmp_path, **overrides: str) -> dict[str, str]:
    server = s3_server()
    assert server is not None
    variables = {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "turbo.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://turbo.example.com",
        "DATABASE_URL": _postgres_url(),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "S3_BUCKET": os.environ["S3_BUCKET"],
        "S3_ENDPOINT_URL": server.endpoint,
        "S3_PUBLIC_ENDPOINT_URL": "https://files.turbo.example.com",
        "S3_ACCESS_KEY_ID": server.access_key,
        "S3_SECRET_ACCESS_KEY": server.secret_key,
    }
    variables.update(overrides)
    return child_env(tmp_path, **variables)


def test_check_deploy_is_clean_in_production_environment(tmp_path):
    done = manage(["check", "--deploy", "--fail-level", "WARNING"], _production_env(tmp_path))

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "System check identified no issues (0 silenced)." in output
    assert "WARNING" not in output


def test_check_deploy_reports_debug_left_on(tmp_path):
    # The same command does see problems: with DEBUG on it must complain, so the clean result above means something.
    done = manage(["check", "--deploy", "--fail-level", "WARNING"], _production_env(tmp_path, DEBUG="1"))

    assert done.returncode != 0
    assert "security.W018" in done.stdout + done.stderr


@pytest.mark.parametrize("secret", ["", "   "])
def test_production_refuses_to_start_without_secret_key(tmp_path, secret):
    done = manage(["check"], _production_env(tmp_path, SECRET_KEY=secret))

    assert done.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in done.stderr
