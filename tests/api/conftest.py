"""Fixtures for the API tests: a recorder in place of the queue, sample uploads, jobs made directly in any
state with their files in storage, and a switch to the local-folder storage."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image

from generation import storage
from generation.models import Job

# Starts like an ISO-BMFF file so it is recognisably "an mp4"; the API never decodes it.
FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8
FAKE_JPEG = b"\xff\xd8\xff\xe0" + b"poster" * 50 + b"\xff\xd9"


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


def png_bytes(width: int = 96, height: int = 80, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_upload() -> Callable[..., SimpleUploadedFile]:
    """image_upload(colour=..., width=..., height=...) -> a fresh PNG upload (each call a new file object)."""

    def make(colour: tuple[int, int, int] = (200, 40, 40), width: int = 96, height: int = 80) -> SimpleUploadedFile:
        return SimpleUploadedFile("photo.png", png_bytes(width, height, colour), content_type="image/png")

    return make


@pytest.fixture
def make_job(db) -> Callable[..., Job]:
    """make_job(owner, status=..., **fields) -> a job row in that state with its files stored, as a worker would
    leave it (input png always; mp4 + poster for SUCCEEDED)."""

    def make(owner, status: str = Job.Status.QUEUED, **fields) -> Job:
        now = timezone.now()
        values = {"prompt": "a red square drifts", "seed": 7, "num_steps": 4, "resolution": "480p",
                  "num_frames": 17, "model": "tiny", **fields}
        job = Job(id=uuid.uuid4(), owner=owner, status=status, **values)
        job.input_image.name = storage.save_bytes(storage.input_name(job), png_bytes(), "image/png")
        if status in (Job.Status.RUNNING, *Job.FINISHED):
            job.started_at = now - timedelta(seconds=12)
            job.worker = job.worker or "gpu-host:0"
            job.heartbeat_at = now
        if status in Job.FINISHED:
            job.finished_at = now
        if status == Job.Status.SUCCEEDED:
            job.output_video.name = storage.save_bytes(storage.output_name(job), FAKE_MP4, "video/mp4")
            job.poster.name = storage.save_bytes(storage.poster_name(job), FAKE_JPEG, "image/jpeg")
            job.progress, job.stage = 1.0, "done"
            job.width, job.height, job.frames, job.fps, job.bytes = 160, 96, 17, 16, len(FAKE_MP4)
            job.timings = {"denoise": 1.5, "decode": 0.25}
        if status == Job.Status.FAILED:
            job.error = job.error or "The model ran out of memory; choose 480p."
        job.save(force_insert=True)
        return job

    return make


@pytest.fixture
def local_storage(settings, tmp_path):
    """Switch the default storage to a local folder (the embedded default) for one test."""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media"), "base_url": "/media/"},
    }}
    return tmp_path / "media"
