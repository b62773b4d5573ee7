"""generation.services and generation.models_catalog below the HTTP layer: defaults, limits, queue hand-off."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import models_catalog, services
from generation.models import Job
from generation.services import JobRejected
from generation.stages import Stage


def test_defaults_come_from_the_model_config():
    params = services.validate_parameters(prompt="  a cat  \r\n", model=None)
    assert params == services.JobParameters(prompt="a cat", seed=None, num_steps=4, resolution="480p",
                                            num_frames=17, adaptive_resolution=True, ode=False, model="tiny",
                                            resize_mode="stretch")


@pytest.mark.parametrize(("kwargs", "field", "fragment"), [
    ({"seed": 2**63}, "seed", "between 0 and"),
    ({"num_steps": 0}, "num_steps", "1, 2, 3 or 4"),
    ({"num_frames": 1}, "num_frames", "4k+1"),
    ({"resolution": "1080p"}, "resolution", "480p, 720p"),
    ({"model": "nope"}, "model", "known models: tiny, wan2.2-i2v-a14b"),
    ({"seed": "abc"}, "seed", "must be an integer"),
    ({"resize_mode": "fill"}, "resize_mode", "stretch, crop, pad"),
])
def test_parameter_errors_name_the_field_and_allowed_values(kwargs, field, fragment):
    with pytest.raises(JobRejected) as caught:
        services.validate_parameters(prompt="p", **kwargs)
    assert caught.value.status_code == 400 and caught.value.field == field and fragment in caught.value.message


def test_resize_mode_is_checked_and_part_of_the_fingerprint():
    # That the table's modes are the worker's own list: tests/api/test_limits.py.
    assert services.validate_parameters(prompt="p", resize_mode=" crop ").resize_mode == "crop"
    assert services.validate_parameters(prompt="p").fingerprint("a") != services.validate_parameters(
        prompt="p", resize_mode="pad").fingerprint("a")


def test_fingerprint_depends_on_parameters_and_image():
    params = services.validate_parameters(prompt="p", seed=1)
    same = services.validate_parameters(prompt=" p ", seed="1")
    other = services.validate_parameters(prompt="p", seed=2)
    assert params.fingerprint("aa") == same.fingerprint("aa")
    assert params.fingerprint("aa") != other.fingerprint("aa") != params.fingerprint("bb")


def test_frames_for_duration_stays_within_the_model_and_positive():
    assert services.frames_for_duration(5) == 81
    assert services.frames_for_duration(10) == 161
    with pytest.raises(JobRejected) as too_long:
        services.frames_for_duration(60)
    assert too_long.value.field == "duration_seconds" and "at most 10 s" in too_long.value.message
    with pytest.raises(JobRejected):
        services.frames_for_duration(0)


@pytest.mark.django_db
def test_catalog_reports_installed_weights(tmp_path, settings):
    """What the catalog says comes from the GPU workers' reports (their registry rows), not from the web's disk."""
    from generation.models import Worker
    from generation.worker import weights_report

    settings.TURBO_MODEL_DIR = str(tmp_path)
    facts = models_catalog.get_model("wan2.2-i2v-a14b")
    assert not facts.installed and "Wan2.1_VAE.pth" in facts.missing  # no worker has reported anything yet
    Worker.report("gpu-host:1", weights_report(), starting=True)
    facts = models_catalog.get_model("wan2.2-i2v-a14b")
    assert not facts.installed and "Wan2.1_VAE.pth" in facts.missing
    for name in (facts.missing):
        target = tmp_path / name
        if name.endswith(".pth"):
            target.write_bytes(b"x")
        else:
            target.mkdir(parents=True)
            (target / "spiece.model").write_bytes(b"x")
    assert not models_catalog.get_model("wan2.2-i2v-a14b").installed  # files alone say nothing to the web
    Worker.report("gpu-host:1", weights_report())  # the worker's next heartbeat
    assert models_catalog.get_model("wan2.2-i2v-a14b").installed
    assert models_catalog.get_model(None).name == settings.TURBO_DEFAULT_MODEL == "tiny"


@pytest.mark.django_db
def test_catalog_counts_only_workers_heard_from_recently(settings):
    from generation.models import Worker

    installed = {"wan2.2-i2v-a14b": {"installed": True, "missing": []}}
    lacking = {"wan2.2-i2v-a14b": {"installed": False, "missing": ["Wan2.1_VAE.pth"]}}
    Worker.report("gpu-a:1", installed)
    Worker.report("gpu-b:2", lacking)
    assert models_catalog.get_model("wan2.2-i2v-a14b").installed  # one live worker can run it
    Worker.objects.filter(name="gpu-a:1").update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.TURBO_HEARTBEAT_STALE_S + 1))
    facts = models_catalog.get_model("wan2.2-i2v-a14b")
    assert not facts.installed and facts.missing == ["Wan2.1_VAE.pth"]  # the silent one no longer counts
    a14b = next(m for m in models_catalog.list_models() if m["name"] == "wan2.2-i2v-a14b")
    assert a14b["installed"] is False and a14b["missing"] == ["Wan2.1_VAE.pth"]
    Worker.retire("gpu-b:2")
    assert models_catalog.get_model("wan2.2-i2v-a14b").missing == list(
        models_catalog.MODELS["wan2.2-i2v-a14b"].weight_files)


def test_the_web_catalog_describes_the_models_as_inference_configs_do():
    """The web keeps its own torch-free copy of the model facts; it must not drift from inference/configs.py."""
    from inference.configs import MODELS

    assert set(models_catalog.MODELS) == set(MODELS)
    for name, config in MODELS.items():
        spec = models_catalog.MODELS[name]
        assert spec.resolutions == tuple(config.resolutions)
        assert (spec.default_resolution, spec.default_frames, spec.max_frames, spec.fps) == (
            config.default_resolution, config.default_frames, config.max_frames, config.fps)
        assert spec.builtin_weights == config.random_weights
        files = () if config.random_weights else (config.high_noise_file, config.low_noise_file, config.vae_file,
                                                  config.text_encoder_file, config.tokenizer_dir)
        assert spec.weight_files == files


@pytest.mark.django_db(transaction=True)
def test_a_send_that_fails_after_commit_is_a_503_that_leaves_nothing(user, image_upload, monkeypatch):
    from django.core.files.storage import default_storage

    def unreachable(job_id):
        raise ConnectionError("redis down")

    monkeypatch.setattr("generation.services.enqueue_job", unreachable)
    saved: list[str] = []
    real_save = services.storage.save_bytes
    monkeypatch.setattr(services.storage, "save_bytes", lambda name, *a: saved.append(name) or real_save(name, *a))
    with pytest.raises(JobRejected) as caught:
        services.create_job(user, image=image_upload(), prompt="p")
    assert caught.value.status_code == 503 and "queue" in caught.value.message
    assert not Job.objects.exists()
    assert len(saved) == 1 and not default_storage.exists(saved[0])


def test_an_unreachable_broker_refuses_before_storing_anything(alice_client, image_upload, monkeypatch):
    monkeypatch.setattr(services, "broker_available", lambda: False)
    monkeypatch.setattr(services.storage, "save_bytes", lambda *a: pytest.fail("nothing may be stored"))
    response = alice_client.post("/api/v1/jobs/", {"prompt": "p", "image": image_upload()}, format="multipart")
    assert response.status_code == 503 and response["Retry-After"]
    assert "queue is unavailable" in response.json()["detail"] and not Job.objects.exists()


@pytest.fixture
def alice_client(user, token_client):
    return token_client(user)


def test_enqueue_goes_through_generation_queue(user, image_upload, monkeypatch, django_capture_on_commit_callbacks):
    from generation import queue

    monkeypatch.undo()  # drop the recorder: the real services.enqueue_job must call queue.enqueue_job
    sent = []
    monkeypatch.setattr(queue, "enqueue_job", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        job = services.create_job(user, image=image_upload(), prompt="p")
    assert sent == [job.id]


def test_eta_of_a_running_job_follows_its_stage(user, make_job):
    make_job(user, Job.Status.SUCCEEDED)  # 12 s, of which the timings name denoise 1.5 s and decode 0.25 s
    job = make_job(user, Job.Status.RUNNING, stage="decode", progress=0.9)
    Job.objects.filter(id=job.id).update(started_at=timezone.now() - timedelta(seconds=30))
    job.refresh_from_db()
    # decode overran its 0.25 s: what is left is the measured share of encoding and upload (12 - 1.75 s spread
    # over the stages the timings do not name, by their progress shares)
    rest = 12 - 1.75
    shares = sum(s.share for s in (Stage.READING_INPUT, Stage.TEXT_ENCODE, Stage.IMAGE_ENCODE, Stage.ENCODING,
                                   Stage.UPLOADING))
    expected = rest * (Stage.ENCODING.share + Stage.UPLOADING.share) / shares
    assert services.eta_seconds(job) == pytest.approx(expected, abs=0.2)
    assert services.queue_position(job) is None


def test_retry_needs_the_stored_input(user, make_job):
    from generation import storage

    job = make_job(user, Job.Status.FAILED)
    storage.delete_quietly(job.input_image.name)
    with pytest.raises(JobRejected) as caught:
        services.retry_job(job)
    assert caught.value.status_code == 409 and "no longer stored" in caught.value.message


@pytest.mark.django_db(transaction=True)
def test_active_limit_holds_for_concurrent_submissions(user, image_upload, settings, monkeypatch, enqueued):
    import contextlib
    import threading

    from django.db import connection

    settings.TURBO_MAX_ACTIVE_JOBS = 1
    real_check = services._check_active_limit
    # Between counting and inserting, each submission waits (up to 2 s) for the other to have counted too. Without
    # the per-user lock both count 0 and both insert; with it the second one cannot count until the first commits.
    both_counted = threading.Barrier(2, timeout=2)

    def slow_check(owner) -> None:
        real_check(owner)
        if connection.in_atomic_block:
            with contextlib.suppress(threading.BrokenBarrierError):
                both_counted.wait()

    monkeypatch.setattr(services, "_check_active_limit", slow_check)
    outcomes: list[object] = []
    uploads = [image_upload(), image_upload()]

    def submit(upload) -> None:
        try:
            outcomes.append(services.create_job(user, image=upload, prompt="p"))
        except JobRejected as exc:
            outcomes.append(exc.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(u,)) for u in uploads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 2 and 429 in outcomes, outcomes
    assert Job.objects.filter(owner=user).count() == 1 and len(enqueued) == 1


def test_a_retried_request_that_waited_for_its_twin_gets_the_twins_job(user, image_upload, settings):
    """Both requests passed the early replay check; the first committed while the second waited for the lock."""
    settings.TURBO_MAX_ACTIVE_JOBS = 1
    first = services.create_job(user, image=image_upload(), prompt="a kite", seed=3, model="tiny",
                                idempotency_key="twin-1")
    params = services.validate_parameters(prompt="a kite", seed=3, num_steps=4, resolution=None, num_frames=None,
                                 adaptive_resolution=True, ode=False, model="tiny")
    with pytest.raises(services._AlreadySubmitted) as replay:
        services._insert(user, params, b"png", key="twin-1", fingerprint=first.request_fingerprint)
    assert replay.value.submission.job.id == first.id and replay.value.submission.created is False
    assert Job.objects.filter(owner=user).count() == 1


def test_retry_validates_again_against_the_model_catalog(user, image_upload):
    job = services.create_job(user, image=image_upload(), prompt="a kite", model="tiny")
    Job.objects.filter(id=job.id).update(model="retired-model")
    job.refresh_from_db()
    with pytest.raises(JobRejected) as rejected:
        services.retry_job(job)
    assert rejected.value.status_code == 400 and rejected.value.field == "model"


def test_typical_run_time_is_read_once_per_cache_period(user, make_job, django_assert_num_queries):
    from django.core.cache import cache

    make_job(user, Job.Status.SUCCEEDED)  # started 12 s before it finished
    assert services.typical_run_seconds("tiny") == pytest.approx(12.0, abs=0.5)
    slow = make_job(user, Job.Status.SUCCEEDED)
    Job.objects.filter(id=slow.id).update(started_at=slow.finished_at - timedelta(seconds=48))
    with django_assert_num_queries(0):
        assert services.typical_run_seconds("tiny") == pytest.approx(12.0, abs=0.5)
    cache.clear()  # what the 30 s expiry does
    assert services.typical_run_seconds("tiny") == pytest.approx(30.0, abs=0.5)
