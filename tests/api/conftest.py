"""Fixtures for the API tests: a recorder in place of the queue, sample uploads, jobs made directly in any
state with their files in storage, and a switch to the local-folder storage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile

from generation.models import Job
from tests.factories import png_bytes, png_upload, stored_job


@pytest.fixture(autouse=True)
def enqueued(monkeypatch) -> list[str]:
    """Job ids handed to the queue; the real broker stays untouched."""
    sent: list[str] = []
    monkeypatch.setattr("generation.services.enqueue_job", lambda job_id: sent.append(str(job_id)))
    return sent


@pytest.fixture(autouse=True)
def _fresh_throttle_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def image_upload() -> Callable[..., SimpleUploadedFile]:
    """image_upload(colour=..., width=..., height=...) -> a fresh PNG upload (each call a new file object)."""

    def make(colour: tuple[int, int, int] = (200, 40, 40), width: int = 96, height: int = 80) -> SimpleUploadedFile:
        return png_upload("photo.png", png_bytes(width, height, colour))

    return make


@pytest.fixture
def make_job(db) -> Callable[..., Job]:
    """make_job(owner, status=..., **fields) -> a job row in that state with its files stored, as a worker would
    leave it (input png always; mp4 + poster for SUCCEEDED)."""
    return stored_job


@pytest.fixture
def local_storage(settings, tmp_path):
    """Switch the default storage to a local folder (the embedded default) for one test."""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media"), "base_url": "/media/"},
    }}
    return tmp_path / "media"
