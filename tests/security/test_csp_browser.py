"""The Content-Security-Policy in a real browser (headless Chromium): every page works under it. The new-video
preview (blob:), posters and inputs from the S3 public endpoint (img-src) and the video itself (media-src) load,
and Chromium reports no violation on any page."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from django.utils import timezone

from generation import storage
from generation.models import Job
from tests import images
from tests.browser import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def violations(console_errors: list[str]) -> list[str]:
    return [text for text in console_errors if "Content Security Policy" in text]


@pytest.fixture
def playable_job(user):
    """A SUCCEEDED job whose output is a real H.264 mp4 with a poster, in the S3 bucket."""
    from inference.video import write_mp4, write_poster

    job = Job(owner=user, prompt="a lighthouse at dusk", seed=3, num_frames=9, model="tiny",
              status=Job.Status.SUCCEEDED, progress=1.0, finished_at=timezone.now(), width=64, height=48, frames=9,
              fps=16)
    frames = np.random.default_rng(0).integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        video, poster = write_mp4(frames, Path(folder, "v.mp4"), 16), write_poster(frames[0], Path(folder, "p.jpg"))
        storage.save_bytes(storage.output_name(job), video.read_bytes(), "video/mp4")
        storage.save_bytes(storage.poster_name(job), poster.read_bytes(), "image/jpeg")
    storage.save_bytes(storage.input_name(job), images.encode(images.solid(), "PNG"), "image/png")
    job.output_video.name, job.poster.name = storage.output_name(job), storage.poster_name(job)
    job.input_image.name = storage.input_name(job)
    job.save(force_insert=True)
    yield job
    for name in (job.output_video.name, job.poster.name, job.input_image.name):
        storage.delete_quietly(name)


def test_pages_work_under_the_policy(live_server, page, console_errors, user, playable_job, tmp_path):
    from django.conf import settings

    s3 = settings.S3_PUBLIC_ENDPOINT_URL.rstrip("/")
    log_in(page, live_server.url, "alice", user.plain_password)

    page.goto(f"{live_server.url}/")
    picture = tmp_path / "still.png"
    picture.write_bytes(images.encode(images.solid(size=(120, 90)), "PNG"))
    page.set_input_files("input[type=file]", str(picture))
    page.wait_for_function("() => { const i = document.getElementById('image-preview');"
                           " return i && !i.hidden && i.naturalWidth === 120; }")
    assert page.get_attribute("#image-preview", "src").startswith(("blob:", "data:"))

    page.goto(f"{live_server.url}/history/")
    poster = page.locator("img[data-field=picture]").first
    assert poster.get_attribute("src").startswith(s3)
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=poster.element_handle())

    page.goto(f"{live_server.url}/jobs/{playable_job.id}/")
    video = page.locator("video[data-testid=video]")
    assert video.get_attribute("src").startswith(s3)
    # media-src must allow the S3 origin: the browser reads the mp4's metadata from there.
    page.wait_for_function("(v) => v.readyState >= 1 && v.videoWidth === 64", arg=video.element_handle())

    assert violations(console_errors) == []


def test_admin_and_account_pages_raise_no_violation(live_server, page, console_errors, user, playable_job):
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    log_in(page, live_server.url, "alice", user.plain_password)
    for path in ("/accounts/", "/admin/", "/admin/generation/job/", f"/admin/generation/job/{playable_job.id}/change/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status < 400, path
        page.wait_for_load_state("load")
    assert violations(console_errors) == []


def test_api_docs_page_raises_no_violation(live_server, page, console_errors):
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".swagger-ui .info", timeout=15_000)  # Swagger UI rendered from our own origin
    assert violations(console_errors) == []
