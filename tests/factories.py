"""Test data shared by the suites, made one way each: users with known passwords (hashed fast), small images and
uploads, stand-in outputs, and jobs stored as the services and the worker would leave them (so tests can start from
any state without running the pipeline). Also the fixtures for suites that create jobs through the services (a
suite's conftest.py imports them): the queue replaced by a recorder, and a fresh throttle cache."""

from __future__ import annotations

import functools
import io
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image

from generation import storage
from generation.models import Job

# Starts like an ISO-BMFF file so it is recognisably "an mp4"; nothing here decodes it.
FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8
FAKE_JPEG = b"\xff\xd8\xff\xe0" + b"poster" * 50 + b"\xff\xd9"


# The production hasher costs a quarter second per call on these CPUs, and the hash is not what tests test: suites
# put Django's fastest hasher first (the production ones stay listed, so hashes made elsewhere still verify).
FAST_PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher",
                         *[h for h in settings.PASSWORD_HASHERS if not h.endswith("MD5PasswordHasher")]]


def password_hash(password: str) -> str:
    """A salted hash can be reused across test users, so each known password is hashed once per run and hasher.
    Subprocess servers verify it as usual."""
    return _cached_hash(password, settings.PASSWORD_HASHERS[0])


@functools.cache
def _cached_hash(password: str, hasher: str) -> str:
    return make_password(password)


def make_user(username: str, password: str, **fields):
    """A saved user whose `plain_password` attribute holds the password that logs it in."""
    new_user = get_user_model().objects.create_user(username, f"{username}@example.com", None, **fields)
    new_user.password = password_hash(password)
    new_user.save(update_fields=["password"])
    new_user.plain_password = password
    return new_user


def png_bytes(width: int = 96, height: int = 80, colour: tuple[int, int, int] = (200, 40, 40), *,
              gradient_row: bool = False) -> bytes:
    """A PNG of one colour; `gradient_row` draws a gradient across the middle row, so it is not one flat colour."""
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), colour)
    if gradient_row:
        for x in range(width):
            image.putpixel((x, height // 2), (x * 2 % 256, 50, 90))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_upload(name: str = "photo.png", data: bytes | None = None) -> SimpleUploadedFile:
    """A fresh PNG upload (each call a new file object), by default of png_bytes()."""
    return SimpleUploadedFile(name, png_bytes() if data is None else data, content_type="image/png")


def stored_job(owner, status: str = Job.Status.QUEUED, *, image: bytes | None = None, **fields: Any) -> Job:
    """A job row in `status` with its files in storage: the input PNG always; mp4 + poster when SUCCEEDED."""
    now = timezone.now()
    values = {"prompt": "a red square drifts", "seed": 7, "num_steps": 4, "resolution": "480p",
              "num_frames": 17, "model": "tiny", **fields}
    job = Job(id=uuid.uuid4(), owner=owner, status=status, **values)
    job.input_image.name = storage.save_bytes(storage.input_name(job), image or png_bytes(), "image/png")
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
        job.width, job.height, job.frames, job.fps, job.bytes = 160, 96, job.num_frames, 16, len(FAKE_MP4)
        job.timings = {"denoise": 1.5, "decode": 0.25}
    if status == Job.Status.FAILED:
        job.error = job.error or "The model ran out of memory; choose 480p."
    job.save(force_insert=True)
    return job


def delete_job_files(jobs: Iterable[Job]) -> None:
    for job in jobs:
        for name in (storage.input_name(job), storage.output_name(job), storage.poster_name(job)):
            storage.delete_quietly(name)


# -- fixtures for the suites that create jobs (autouse once imported into a suite's conftest.py) ------------------

@pytest.fixture(autouse=True)
def enqueued(monkeypatch) -> list[str]:
    """Job ids handed to the GPU queue, recorded instead of sent: the real broker stays untouched, and a test moves
    its jobs through their states by hand (or with a thread that plays the worker)."""
    sent: list[str] = []
    monkeypatch.setattr("generation.services.enqueue_job", lambda job_id: sent.append(str(job_id)))
    return sent


@pytest.fixture(autouse=True)
def fresh_throttle_cache() -> Iterator[None]:
    """The submission throttle counts in the cache: every test starts and leaves it empty."""
    cache.clear()
    yield
    cache.clear()
