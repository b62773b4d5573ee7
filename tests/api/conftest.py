"""Fixtures for the API tests: a recorder in place of the queue and a fresh throttle cache (tests/factories.py),
sample uploads, jobs made directly in any state with their files in storage, and a switch to the local-folder
storage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from generation.models import Job
from tests.factories import enqueued, fresh_throttle_cache, png_bytes, png_upload, stored_job  # noqa: F401
from tests.s3server import hung_s3, own_s3  # noqa: F401  (for the tests that freeze a storage server)


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
