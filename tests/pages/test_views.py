"""The pages through Django's test client: the form, the gallery, the job page and its actions, their empty and
error states, and isolation between users (another user's job is a 404 everywhere)."""

from __future__ import annotations

import re

import pytest
from django.middleware.csrf import CSRF_SECRET_LENGTH
from django.urls import reverse

from generation import services, storage
from generation.models import Job
from tests.pages.conftest import upload

pytestmark = pytest.mark.django_db


def form_data(**overrides):
    data = {"image": upload(), "prompt": "the lake ripples", "num_steps": "2", "resolution": "480p",
            "num_frames": "9", "adaptive_resolution": "on", "model": "tiny", "seed": "4242"}
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def make_job(owner, **kwargs) -> Job:
    return services.create_job(owner, image=upload(), prompt=kwargs.pop("prompt", "waves"), num_frames=5,
                               model="tiny", **kwargs)


def finish_successfully(job: Job) -> Job:
    """Store an output as the worker would and mark the job SUCCEEDED."""
    storage.save_bytes(storage.output_name(job), b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    storage.save_bytes(storage.poster_name(job), b"\xff\xd8\xff\xe0poster", "image/jpeg")
    assert job.claim(worker="test")
    assert job.succeed(output_video=storage.output_name(job), poster=storage.poster_name(job), width=160, height=96,
                       frames=5, fps=16, bytes=12, timings={"denoise": 1.5, "total": 2.0}, gpu_name="Test GPU")
    return job


def assert_no_inline_script_or_style(html: str) -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html), "inline script"
    assert "<style" not in html
    assert not re.search(r"\son[a-z]+=\"", html), "inline event handler"


@pytest.mark.parametrize("name,kwargs", [("new-video", {}), ("history", {}),
                                         ("job", {"job_id": "00000000-0000-0000-0000-000000000001"})])
def test_pages_need_a_login(client, name, kwargs):
    response = client.get(reverse(name, kwargs=kwargs))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_home_is_the_new_video_form(browser_client):
    response = browser_client.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    for name in ("image", "prompt", "seed", "num_steps", "resolution", "num_frames", "adaptive_resolution", "ode",
                 "model", "resize_mode"):
        assert f'name="{name}"' in html, name
    assert 'enctype="multipart/form-data"' in html and "css/pages.css" in html and "js/new_video.js" in html
    assert '<option value="tiny" selected>tiny (default)</option>' in html
    assert_no_inline_script_or_style(html)


def test_submitting_the_form_creates_the_job_and_shows_it(browser_client, user):
    response = browser_client.post("/", form_data())
    job = Job.objects.get(owner=user)
    assert response.status_code == 302 and response["Location"] == reverse("job", kwargs={"job_id": job.id})
    assert (job.seed, job.num_steps, job.num_frames, job.resolution, job.model, job.prompt) == (
        4242, 2, 9, "480p", "tiny", "the lake ripples")
    assert job.adaptive_resolution is True and job.ode is False and job.status == Job.Status.QUEUED
    assert job.resize_mode == "stretch"  # the default: the model's own preprocessing

    page = browser_client.get(response["Location"])
    html = page.content.decode()
    assert f'data-job-poll="{reverse("api:job-detail", kwargs={"pk": job.id})}"' in html
    assert 'data-reload-on-finish="true"' in html and "<progress" in html and 'data-testid="cancel"' in html
    assert "Your video is queued" in html
    assert_no_inline_script_or_style(html)


def test_the_form_offers_the_resize_modes_and_passes_the_choice(browser_client, user):
    html = browser_client.get("/").content.decode()
    assert '<option value="stretch" selected>' in html and '<option value="pad">' in html
    browser_client.post("/", form_data(resize_mode="pad"))
    job = Job.objects.get(owner=user)
    assert job.resize_mode == "pad"
    assert "Image fit" in browser_client.get(reverse("job", kwargs={"job_id": job.id})).content.decode()
    refused = browser_client.post("/", form_data(resize_mode="squash"))
    assert refused.status_code == 400 and Job.objects.count() == 1  # the form shows the error, nothing is made
    assert "squash is not one of the available choices" in refused.content.decode()


def test_the_form_offers_installed_loras_with_strengths(browser_client, user, settings, tmp_path):
    import json

    settings.TURBO_MODEL_DIR = str(tmp_path)
    for name in ("ink", "glow"):
        (tmp_path / "loras" / name).mkdir(parents=True)
        (tmp_path / "loras" / name / "manifest.json").write_text(json.dumps(
            {"title": name.title(), "description": "A look.", "model": "tiny", "default_strength": 0.75,
             "high_noise": "h.safetensors"}))
    html = browser_client.get("/").content.decode()
    assert 'name="lora__ink"' in html and "LoRA: Glow (tiny)" in html and 'placeholder="0.75"' in html
    browser_client.post("/", form_data(lora__ink="1.25", lora__glow=""))
    job = Job.objects.get(owner=user)
    assert job.loras == [{"name": "ink", "strength": 1.25}]
    assert "ink (1.25)" in browser_client.get(reverse("job", kwargs={"job_id": job.id})).content.decode()


def test_rules_from_the_service_come_back_as_form_errors(browser_client, user):
    response = browser_client.post("/", form_data(num_frames="6"))
    assert response.status_code == 400
    assert "num_frames must be 4k+1" in response.content.decode()
    assert not Job.objects.filter(owner=user).exists()


def test_an_unreadable_image_is_an_error_on_the_image_field(browser_client, user):
    response = browser_client.post("/", form_data(image=upload("notes.png", b"this is not a picture")))
    assert response.status_code == 400
    assert response.context["form"].errors.get("image")
    assert not Job.objects.filter(owner=user).exists()


def test_a_missing_prompt_and_image_are_form_errors(browser_client):
    response = browser_client.post("/", {"prompt": ""})
    form = response.context["form"]
    assert response.status_code == 400 and "prompt" in form.errors and "image" in form.errors


def test_the_active_job_limit_is_a_form_error(browser_client, user, settings):
    settings.TURBO_MAX_ACTIVE_JOBS = 1
    make_job(user)
    response = browser_client.post("/", form_data())
    assert response.status_code == 429, "the page answers with the service's status, like the API"
    assert "jobs queued or running" in response.content.decode()


def test_history_empty_state(browser_client):
    html = browser_client.get(reverse("history")).content.decode()
    assert 'data-testid="empty-state"' in html and "No videos yet" in html


def test_history_lists_only_my_jobs_newest_first_with_live_progress(browser_client, user, other_user):
    first = make_job(user, prompt="first")
    second = make_job(user, prompt="second")
    make_job(other_user, prompt="not yours")
    html = browser_client.get(reverse("history")).content.decode()
    assert html.index("second") < html.index("first")
    assert "not yours" not in html
    assert html.count('data-testid="job-card"') == 2
    for job in (first, second):
        assert f'data-job-poll="{reverse("api:job-detail", kwargs={"pk": job.id})}"' in html
    assert "js/job_progress.js" in html
    assert_no_inline_script_or_style(html)


def test_history_filters_by_status(browser_client, user):
    kept = make_job(user, prompt="keeps going")
    gone = make_job(user, prompt="stopped early")
    gone.cancel()
    html = browser_client.get(reverse("history") + "?status=canceled").content.decode()
    assert "stopped early" in html and "keeps going" not in html
    assert kept.status == Job.Status.QUEUED


def test_finished_job_page_has_a_player_download_timings_and_no_poll(browser_client, user):
    job = finish_successfully(make_job(user))
    html = browser_client.get(reverse("job", kwargs={"job_id": job.id})).content.decode()
    video = re.search(r'<video[^>]*src="([^"]+)"[^>]*poster="([^"]+)"', html)
    assert video, "no <video> with src and poster"
    assert storage.output_name(job) in video.group(1) and storage.poster_name(job) in video.group(2)
    assert 'data-testid="download"' in html
    assert "response-content-disposition" in html.lower() or "dl=turbosite-" in html  # S3 or local link
    assert "Test GPU" in html and "denoise" in html and "data-job-poll" not in html
    assert f"Run again (seed {job.seed})" in html


def test_failed_job_shows_its_reason_and_escapes_the_prompt(browser_client, user):
    job = make_job(user, prompt='<script>alert("x")</script> a cat')
    job.fail("The GPU ran out of memory generating 81 frames at 720p. Try a lower resolution or fewer frames.")
    html = browser_client.get(reverse("job", kwargs={"job_id": job.id})).content.decode()
    assert 'data-testid="job-error"' in html and "Try a lower resolution" in html
    assert '<script>alert("x")' not in html and "&lt;script&gt;alert" in html


def test_cancel_rerun_and_delete(browser_client, user):
    job = make_job(user, seed=99)
    response = browser_client.post(reverse("job-cancel", kwargs={"job_id": job.id}))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELED

    response = browser_client.post(reverse("job-rerun", kwargs={"job_id": job.id}))
    rerun = Job.objects.exclude(id=job.id).get(owner=user)
    assert response["Location"] == reverse("job", kwargs={"job_id": rerun.id})
    assert (rerun.seed, rerun.retry_of_id, rerun.num_frames, rerun.prompt) == (99, job.id, job.num_frames, job.prompt)

    input_name = job.input_image.name
    response = browser_client.post(reverse("job-delete", kwargs={"job_id": job.id}))
    assert response["Location"] == reverse("history")
    assert not Job.objects.filter(id=job.id).exists()
    from django.core.files.storage import default_storage

    assert not default_storage.exists(input_name)


def test_actions_need_post(browser_client, user):
    job = make_job(user)
    for name in ("job-cancel", "job-rerun", "job-delete"):
        assert browser_client.get(reverse(name, kwargs={"job_id": job.id})).status_code == 405
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_another_users_job_is_not_found_for_every_page_and_action(browser_client, other_user):
    theirs = make_job(other_user)
    assert browser_client.get(reverse("job", kwargs={"job_id": theirs.id})).status_code == 404
    for name in ("job-cancel", "job-rerun", "job-delete"):
        assert browser_client.post(reverse(name, kwargs={"job_id": theirs.id})).status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == Job.Status.QUEUED and Job.objects.count() == 1


def test_the_browser_client_really_enforces_csrf(browser_client, user):
    from django.test import Client

    assert browser_client.post("/", form_data()).status_code in (200, 302)  # the token travels like a form's
    bare = Client(enforce_csrf_checks=True)
    bare.force_login(user)
    refused = bare.post("/", form_data())
    assert refused.status_code == 403  # without the token the same post is refused: the checks are on
    stolen = browser_client.post("/", form_data(), HTTP_X_CSRFTOKEN="x" * CSRF_SECRET_LENGTH)
    assert stolen.status_code == 403
