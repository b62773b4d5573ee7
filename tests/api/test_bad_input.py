"""The bad-input table of docs/hardening.md through the real API: each refusal is a specific 4xx with a clear
message and nothing is stored or queued; each accepted oddity is stored normalised under our own name."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation import storage
from generation.models import Job
from tests import images

JOBS = "/api/v1/jobs/"


@pytest.fixture
def alice(user, token_client, settings, monkeypatch):
    settings.TURBO_MAX_ACTIVE_JOBS = 0  # many submissions per test; the active-job limit is tested elsewhere
    from generation.api.throttles import JobCreateThrottle

    monkeypatch.setattr(JobCreateThrottle, "THROTTLE_RATES",
                        {**JobCreateThrottle.THROTTLE_RATES, "job_create": "100000/min"})
    return token_client(user)


def stored_inputs(user) -> list[str]:
    try:
        return default_storage.listdir(f"inputs/{user.id}")[1]
    except FileNotFoundError:
        return []


def post(client, data: bytes, *, name: str = "photo.png", content_type: str = "image/png", **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    body = {"prompt": "the camera slowly pans", "num_frames": 5, **fields,
            "image": SimpleUploadedFile(name, data, content_type=content_type)}
    return client.post(JOBS, body, format="multipart")


def refused(client, user, callbacks, data: bytes, status: int = 400, **kwargs) -> dict:
    with callbacks() as sent:
        response = post(client, data, **kwargs)
    assert response.status_code == status, response.content
    assert Job.objects.count() == 0 and stored_inputs(user) == [] and sent == []
    return response.json()


def accepted(client, callbacks, data: bytes, **kwargs) -> tuple[Job, Image.Image]:
    with callbacks() as sent:
        response = post(client, data, **kwargs)
    assert response.status_code == 201, response.content
    assert len(sent) == 1  # queued after commit
    job = Job.objects.get(id=response.json()["id"])
    assert job.input_image.name == f"inputs/{job.owner_id}/{job.id}.png"
    stored = Image.open(io.BytesIO(storage.read_bytes(job.input_image.name)))
    assert stored.format == "PNG" and stored.mode == "RGB"
    return job, stored


@pytest.mark.parametrize(("data", "code"), [
    (b"<html>not a picture</html>" * 40, "not_image"),
    (images.noise_png()[:20_000], "truncated"),
    (images.png_header_only(8000, 6000), "too_many_pixels"),
    (images.png_header_only(30000, 30000), "too_many_pixels"),
    (images.encode(images.solid(size=(40, 40)), "PNG"), "too_small"),
    (images.encode(images.solid(size=(1000, 100)), "PNG"), "aspect_ratio"),
    (images.encode(images.solid(), "TIFF"), "unsupported_format"),
])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_images_are_refused_by_code_with_nothing_stored_or_queued(alice, user,
                                                                     django_capture_on_commit_callbacks, data, code):
    body = refused(alice, user, django_capture_on_commit_callbacks, data)
    assert body["code"] == code and body["field"] == "image" and len(body["detail"]) > 20


def test_zero_bytes_is_refused(alice, user, django_capture_on_commit_callbacks):
    body = refused(alice, user, django_capture_on_commit_callbacks, b"")
    assert "empty" in str(body).lower()


def test_over_the_size_limit_is_413_and_never_stored(alice, user, django_capture_on_commit_callbacks, settings):
    data = images.noise_png((256, 256))
    settings.TURBO_MAX_UPLOAD_BYTES = 50_000
    body = refused(alice, user, django_capture_on_commit_callbacks, data, status=413)
    assert body["code"] == "too_large" and "limit is" in body["detail"]


@pytest.mark.parametrize(("prompt", "code"), [
    ("   ", "prompt_empty"),
    ("x" * 2001, "prompt_too_long"),
    ("a cat\x00walks", "prompt_control_character"),
    ("a cat \u202eslaw", "prompt_bidi_character"),
])
def test_bad_prompts_are_refused_with_nothing_stored(alice, user, django_capture_on_commit_callbacks, prompt, code):
    body = refused(alice, user, django_capture_on_commit_callbacks, images.encode(images.solid(), "PNG"),
                   prompt=prompt)
    if "\x00" in prompt:
        # DRF's CharField refuses NUL itself, before the service sees it (PostgreSQL could not store it anyway).
        assert "null characters" in body["detail"].lower() and body["field"] == "prompt"
    else:
        assert body["code"] == code and body["field"] == "prompt"


def test_animated_gif_becomes_its_first_frame(alice, django_capture_on_commit_callbacks):
    _, stored = accepted(alice, django_capture_on_commit_callbacks, images.animated("GIF"), name="a.gif",
                         content_type="image/gif")
    assert np.abs(np.asarray(stored)[5, 5].astype(int) - (255, 0, 0)).max() <= 6


def test_cmyk_and_sixteen_bit_and_alpha_are_stored_as_plain_rgb(alice, django_capture_on_commit_callbacks):
    cmyk = images.encode(Image.new("CMYK", (96, 96), (0, 255, 255, 0)), "JPEG", quality=95)
    _, stored = accepted(alice, django_capture_on_commit_callbacks, cmyk, name="print.jpg", content_type="image/jpeg")
    assert np.abs(np.asarray(stored)[40, 40].astype(int) - (255, 0, 0)).max() <= 10

    grey16 = images.encode(Image.fromarray(np.full((80, 80), 32896, np.uint16)), "PNG")
    _, stored = accepted(alice, django_capture_on_commit_callbacks, grey16)
    assert abs(int(np.asarray(stored)[10, 10, 0]) - 128) <= 1  # mid-grey, not clipped white

    clear = images.encode(Image.new("RGBA", (96, 96), (0, 0, 0, 0)), "PNG")
    _, stored = accepted(alice, django_capture_on_commit_callbacks, clear)
    assert tuple(np.asarray(stored)[10, 10]) == (255, 255, 255)


def test_exif_rotated_photo_is_stored_upright(alice, django_capture_on_commit_callbacks):
    _, stored = accepted(alice, django_capture_on_commit_callbacks, images.with_orientation(images.halves(), 6),
                         name="phone.jpg", content_type="image/jpeg")
    assert stored.size == (80, 160)
    assert np.abs(np.asarray(stored)[10, 40].astype(int) - (255, 0, 0)).max() <= 40  # left half now on top


def test_content_type_that_lies_is_decided_by_decoding(alice, user, django_capture_on_commit_callbacks):
    accepted(alice, django_capture_on_commit_callbacks, images.encode(images.solid(), "JPEG"), name="notes.txt",
             content_type="text/plain")
    Job.objects.all().delete()
    for name in stored_inputs(user):
        default_storage.delete(f"inputs/{user.id}/{name}")
    body = refused(alice, user, django_capture_on_commit_callbacks, b"#!/bin/sh\nrm -rf /\n" * 30, name="x.png")
    assert body["code"] == "not_image"


def test_file_name_with_path_parts_is_never_used(alice, user, django_capture_on_commit_callbacks):
    job, _ = accepted(alice, django_capture_on_commit_callbacks, images.encode(images.solid(), "PNG"),
                      name="../../../etc/passwd")
    assert "passwd" not in job.input_image.name and ".." not in job.input_image.name
    assert stored_inputs(user) == [f"{job.id}.png"]
