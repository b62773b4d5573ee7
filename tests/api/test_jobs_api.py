"""The v1 jobs API on the real PostgreSQL and S3 server: create, list, read, cancel, retry, delete, and who may."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from rest_framework.test import APIClient

from generation import storage
from generation.models import Job
from tests.bootstrap import s3_server

JOBS = "/api/v1/jobs/"


def detail(job) -> str:
    return f"{JOBS}{job.id}/"


@pytest.fixture
def alice(user, token_client) -> APIClient:
    return token_client(user)


@pytest.fixture
def bob(other_user, token_client) -> APIClient:
    return token_client(other_user)


def post_job(client: APIClient, upload, **fields):
    headers = {}
    if "idempotency_key" in fields:
        headers["HTTP_IDEMPOTENCY_KEY"] = fields.pop("idempotency_key")
    data = {"prompt": "a red square drifts left", "image": upload, **fields}
    return client.post(JOBS, data, format="multipart", **headers)


# -- create ----------------------------------------------------------------------------------------------------

def test_create_stores_the_normalised_input_and_queues_after_commit(alice, user, image_upload, enqueued,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_job(alice, image_upload(), seed="42", num_steps="2", num_frames="9", ode="true")
        assert enqueued == [], "the message must wait for the commit"
    assert response.status_code == 201, response.json()
    body = response.json()
    assert len(callbacks) == 1 and enqueued == [body["id"]]
    assert response["Location"].endswith(f"{JOBS}{body['id']}/")
    assert body["status"] == "QUEUED" and body["queue_position"] == 1 and body["output_url"] is None
    assert body["parameters"] == {"prompt": "a red square drifts left", "seed": 42, "num_steps": 2,
                                  "resolution": "480p", "num_frames": 9, "adaptive_resolution": True,
                                  "ode": True, "resize_mode": "stretch", "loras": [], "model": "tiny"}
    job = Job.objects.get(id=body["id"])
    assert job.owner == user and job.input_image.name == f"inputs/{user.id}/{job.id}.png"
    head = s3_server().client().head_object(Bucket=default_storage.bucket_name, Key=job.input_image.name)
    assert head["ContentType"] == "image/png"
    assert body["input_url"].startswith(f"http://localhost:{s3_server().port}/")


def test_create_fills_model_defaults_and_random_seed(alice, image_upload):
    first = post_job(alice, image_upload()).json()
    second = post_job(alice, image_upload()).json()
    assert first["parameters"]["resolution"] == "480p" and first["parameters"]["num_frames"] == 17
    assert first["parameters"]["adaptive_resolution"] is True and first["parameters"]["ode"] is False
    assert 0 <= first["parameters"]["seed"] < 2**63
    assert first["parameters"]["seed"] != second["parameters"]["seed"]


@pytest.mark.parametrize(("fields", "field", "fragment"), [
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": "x" * 2001}, "prompt", "limit is 2000"),
    ({"prompt": "left \u202e right"}, "prompt", "bidirectional"),
    ({"num_frames": "18"}, "num_frames", "4k+1"),
    ({"num_frames": "165"}, "num_frames", "between 5 and 161"),
    ({"model": "sora"}, "model", "unknown model"),
])
def test_create_rejects_bad_parameters_naming_them(alice, image_upload, fields, field, fragment):
    response = post_job(alice, image_upload(), **fields)
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field and fragment in body["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(("fields", "field"), [({"num_steps": "5"}, "num_steps"), ({"seed": "-1"}, "seed"),
                                               ({"resolution": "4k"}, "resolution"), ({"ode": "maybe"}, "ode"),
                                               ({"resize_mode": "squash"}, "resize_mode")])
def test_create_rejects_bad_types_and_ranges(alice, image_upload, fields, field):
    response = post_job(alice, image_upload(), **fields)
    assert response.status_code == 400
    assert response.json()["field"] == field and response.json()["detail"]  # the API's one error shape


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_create_takes_a_resize_mode_and_retry_keeps_it(alice, image_upload, enqueued, mode):
    response = post_job(alice, image_upload(), resize_mode=mode)
    assert response.status_code == 201, response.json()
    job = Job.objects.get(id=response.json()["id"])
    assert response.json()["parameters"]["resize_mode"] == mode and job.resize_mode == mode
    job.fail("boom")
    again = alice.post(f"{detail(job)}retry/")
    assert again.status_code == 201 and again.json()["parameters"]["resize_mode"] == mode


def test_create_rejects_a_non_image_and_stores_nothing(alice):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = post_job(alice, SimpleUploadedFile("x.png", b"not a picture at all", content_type="image/png"))
    assert response.status_code == 400 and response.json()["field"] == "image"
    assert not Job.objects.exists()


def test_oversized_image_is_413(alice, image_upload, settings):
    settings.TURBO_MAX_UPLOAD_BYTES = 200
    response = post_job(alice, image_upload(width=256, height=256))
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert not Job.objects.exists()


def test_model_without_weights_is_refused_with_409(alice, image_upload, settings, tmp_path):
    settings.TURBO_MODEL_DIR = str(tmp_path)
    response = post_job(alice, image_upload(), model="wan2.2-i2v-a14b")
    assert response.status_code == 409
    assert "weights are not installed" in response.json()["detail"]


def test_active_job_limit_answers_429_with_a_message(alice, user, image_upload, make_job, settings):
    settings.TURBO_MAX_ACTIVE_JOBS = 2
    make_job(user, Job.Status.RUNNING)
    make_job(user, Job.Status.SUCCEEDED)  # finished jobs do not count
    assert post_job(alice, image_upload()).status_code == 201
    response = post_job(alice, image_upload())
    assert response.status_code == 429 and "limit is 2" in response.json()["detail"]
    assert response["Retry-After"]
    assert Job.objects.filter(owner=user).count() == 3


def test_submission_rate_is_throttled(alice, image_upload, settings, monkeypatch):
    from generation.api.throttles import JobCreateThrottle

    monkeypatch.setattr(JobCreateThrottle, "THROTTLE_RATES", {"job_create": "2/min"})
    settings.TURBO_MAX_ACTIVE_JOBS = 0
    codes = [post_job(alice, image_upload()).status_code for _ in range(3)]
    assert codes == [201, 201, 429]


# -- idempotency -----------------------------------------------------------------------------------------------

def test_idempotency_key_replays_the_first_job(alice, image_upload, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = post_job(alice, image_upload(), idempotency_key="k-1", seed="5")
        again = post_job(alice, image_upload(), idempotency_key="k-1", seed="5")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1 and enqueued == [first.json()["id"]]


def test_idempotency_key_with_another_body_is_422(alice, image_upload):
    assert post_job(alice, image_upload(), idempotency_key="k-2").status_code == 201
    other_prompt = post_job(alice, image_upload(), idempotency_key="k-2", prompt="something else")
    other_image = post_job(alice, image_upload(colour=(0, 0, 255)), idempotency_key="k-2")
    assert other_prompt.status_code == 422 and other_image.status_code == 422
    assert "Idempotency-Key" in other_prompt.json()["detail"]
    assert Job.objects.count() == 1


def test_idempotency_keys_belong_to_one_user(alice, bob, image_upload):
    a = post_job(alice, image_upload(), idempotency_key="shared")
    b = post_job(bob, image_upload(), idempotency_key="shared")
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


# -- read ------------------------------------------------------------------------------------------------------

def test_list_is_own_jobs_newest_first_paginated_and_filtered(alice, user, other_user, make_job):
    jobs = [make_job(user, status) for status in (Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.QUEUED)]
    make_job(other_user, Job.Status.QUEUED)
    body = alice.get(JOBS).json()
    assert body["count"] == 3 and [j["id"] for j in body["results"]] == [str(j.id) for j in reversed(jobs)]

    page = alice.get(JOBS, {"page_size": 2}).json()
    assert len(page["results"]) == 2 and page["next"]
    assert alice.get(JOBS, {"status": "failed"}).json()["results"][0]["id"] == str(jobs[1].id)
    assert alice.get(JOBS, {"status": "queued,succeeded"}).json()["count"] == 2
    bad = alice.get(JOBS, {"status": "DONE"})
    assert bad.status_code == 400 and bad.json()["field"] == "status" and "QUEUED" in bad.json()["detail"]


def test_succeeded_job_has_working_short_lived_links(alice, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    body = alice.get(detail(job)).json()
    for key in ("id", "status", "progress", "stage", "queue_position", "eta_seconds", "timings", "error",
                "parameters", "created_at", "started_at", "finished_at", "width", "height", "frames", "fps",
                "bytes", "output_url", "poster_url", "input_url"):
        assert key in body, key
    assert body["status"] == "SUCCEEDED" and body["frames"] == 17 and body["timings"] == {"denoise": 1.5,
                                                                                          "decode": 0.25}
    assert body["queue_position"] is None and body["eta_seconds"] is None
    for key in ("output_url", "poster_url"):
        assert "X-Amz-Expires=" in body[key] and "X-Amz-Signature=" in body[key]
    assert storage.output_name(job) in body["output_url"] and storage.poster_name(job) in body["poster_url"]


def test_failed_job_carries_its_error(alice, user, make_job):
    job = make_job(user, Job.Status.FAILED, error="The image could not be read.")
    body = alice.get(detail(job)).json()
    assert body["error"] == "The image could not be read." and body["output_url"] is None


def test_queue_position_and_eta_follow_the_queue(alice, user, other_user, make_job):
    make_job(other_user, Job.Status.SUCCEEDED)  # one finished run of 12 s gives the ETA a basis
    make_job(other_user, Job.Status.QUEUED)
    mine = make_job(user, Job.Status.QUEUED)
    body = alice.get(detail(mine)).json()
    assert body["queue_position"] == 2
    assert body["eta_seconds"] == pytest.approx(24.0, abs=1.0)


# -- cancel, retry, delete ---------------------------------------------------------------------------------------

def test_cancel_a_queued_job_and_refuse_a_finished_one(alice, user, make_job):
    queued = make_job(user, Job.Status.QUEUED)
    response = alice.post(f"{detail(queued)}cancel/")
    assert response.status_code == 200 and response.json()["status"] == "CANCELED"
    assert alice.post(f"{detail(queued)}cancel/").status_code == 200  # repeating is harmless
    done = make_job(user, Job.Status.SUCCEEDED)
    refused = alice.post(f"{detail(done)}cancel/")
    assert refused.status_code == 409 and "already finished" in refused.json()["detail"]


def test_retry_makes_a_new_job_with_same_parameters_and_seed(alice, user, make_job, enqueued,
                                                             django_capture_on_commit_callbacks):
    failed = make_job(user, Job.Status.FAILED, seed=123456789)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(f"{detail(failed)}retry/")
    assert response.status_code == 201
    body = response.json()
    new = Job.objects.get(id=body["id"])
    assert body["retry_of"] == str(failed.id) and new.seed == failed.seed and new.prompt == failed.prompt
    assert (new.num_steps, new.resolution, new.num_frames, new.model) == (4, "480p", 17, "tiny")
    assert new.input_image.name == storage.input_name(new) != failed.input_image.name
    assert storage.read_bytes(new.input_image.name) == storage.read_bytes(failed.input_image.name)
    assert enqueued == [str(new.id)]


def test_delete_removes_the_files_and_cancels_a_running_job(alice, user, make_job):
    done = make_job(user, Job.Status.SUCCEEDED)
    names = [done.input_image.name, done.output_video.name, done.poster.name]
    assert all(default_storage.exists(n) for n in names)
    assert alice.delete(detail(done)).status_code == 204
    assert not any(default_storage.exists(n) for n in names)
    assert not Job.objects.filter(id=done.id).exists()

    running = make_job(user, Job.Status.RUNNING)
    canceled: list[str] = []
    original = Job.cancel

    def spy(self):
        canceled.append(str(self.id))
        return original(self)

    Job.cancel = spy
    try:
        assert alice.delete(detail(running)).status_code == 204
    finally:
        Job.cancel = original
    assert canceled == [str(running.id)] and not Job.objects.filter(id=running.id).exists()


# -- who may ---------------------------------------------------------------------------------------------------

def test_anonymous_requests_are_refused(api_client, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    for method, url in [("get", JOBS), ("post", JOBS), ("get", detail(job)), ("delete", detail(job)),
                        ("post", f"{detail(job)}cancel/"), ("post", f"{detail(job)}retry/"),
                        ("get", "/api/v1/models/")]:
        response = getattr(api_client, method)(url)
        assert response.status_code == 401, (method, url)
        assert "output_url" not in response.content.decode()
    assert Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED


def test_another_users_job_is_404_everywhere_and_untouched(alice, bob, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    queued = make_job(user, Job.Status.QUEUED)
    for method, url in [("get", detail(job)), ("delete", detail(job)), ("post", f"{detail(queued)}cancel/"),
                        ("post", f"{detail(job)}retry/"), ("delete", detail(queued))]:
        response = getattr(bob, method)(url)
        assert response.status_code == 404, (method, url)
        assert "amz" not in response.content.decode().lower()
    assert bob.get(JOBS).json()["count"] == 0
    assert Job.objects.get(id=queued.id).status == Job.Status.QUEUED
    assert Job.objects.filter(owner=user).count() == 2
    assert default_storage.exists(job.output_video.name)


def test_malformed_job_id_is_404(alice):
    assert alice.get(f"{JOBS}not-a-uuid/").status_code == 404


def test_session_writes_need_the_csrf_token(user, make_job):
    job = make_job(user, Job.Status.QUEUED)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.get(detail(job)).status_code == 200  # reads need no token
    refused = browser.post(f"{detail(job)}cancel/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    browser.get("/api/v1/jobs/")  # any page works to get the cookie; set it as a form would
    token = "a" * 32
    browser.cookies["csrftoken"] = token
    accepted = browser.post(f"{detail(job)}cancel/", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200 and accepted.json()["status"] == "CANCELED"


# -- models, tokens, schema ------------------------------------------------------------------------------------

def test_models_listing(alice):
    models = {m["name"]: m for m in alice.get("/api/v1/models/").json()}
    assert models["tiny"]["installed"] is True and models["tiny"]["default"] is True
    assert models["tiny"]["max_frames"] == 161 and models["tiny"]["resolutions"] == ["480p", "720p"]
    a14b = models["wan2.2-i2v-a14b"]
    assert a14b["installed"] is False and a14b["missing"] and a14b["default"] is False


def test_token_for_username_and_password(api_client, user):
    good = api_client.post("/api/v1/auth/token/", {"username": "alice", "password": user.plain_password})
    assert good.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {good.json()['token']}")
    assert client.get(JOBS).status_code == 200
    bad = api_client.post("/api/v1/auth/token/", {"username": "alice", "password": "wrong"})
    assert bad.status_code == 400 and "token" not in bad.json()


def test_schema_describes_the_multipart_create_and_enums(alice):
    response = alice.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    import json

    schema = json.loads(response.content)
    create = schema["paths"]["/api/v1/jobs/"]["post"]
    assert "multipart/form-data" in create["requestBody"]["content"]
    assert {"201", "200", "422", "429"} <= set(create["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in create["parameters"])
    components = schema["components"]["schemas"]
    status_enum = next(v["enum"] for v in components.values() if set(v.get("enum", [])) >= {"QUEUED", "SUCCEEDED"})
    assert set(status_enum) == set(Job.Status.values)
    resize_enum = next(v["enum"] for v in components.values() if set(v.get("enum", [])) >= {"stretch", "pad"})
    assert resize_enum == ["stretch", "crop", "pad"]
    assert "/v1/turbodiffusion/wan22-i2v/jobs" in schema["paths"]


def test_docs_page_serves_swagger_ui_from_our_own_origin(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn.jsdelivr.net" not in html
