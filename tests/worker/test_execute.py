"""Job execution against the contract pipeline (a fake), the real PostgreSQL rows and the real S3 server."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import torch
from django.core.files.storage import default_storage
from dramatiq.middleware.shutdown import Shutdown

from generation import storage, worker
from generation.models import Job
from generation.stages import Stage
from inference.types import InferenceInputError, WeightsError
from inference.video import probe_video
from tests.worker.conftest import FAKE_DEVICE, FAKE_SIZE

pytestmark = pytest.mark.django_db(transaction=True)


def stored(name: str) -> bool:
    return bool(name) and default_storage.exists(name)


def assert_owner_reads_a_reason(job: Job, *technical: str) -> None:
    """The owner's message is a short human reason; the `technical` strings (exception text, file and server
    names) are kept for operators in error_detail and never reach the owner's message."""
    assert job.error.startswith("The video could not be made: "), job.error
    assert "Error" not in job.error and "Traceback" not in job.error, job.error
    for text in technical:
        assert text in job.error_detail, (text, job.error_detail)
        assert text not in job.error, (text, job.error)


def test_success_uploads_a_decodable_mp4_and_poster_and_records_the_run(make_job, fake_loader):
    job = make_job(num_frames=9, num_steps=2, seed=77, resize_mode="pad",
                   loras=[{"name": "ink", "strength": 0.5}, {"name": "glow", "strength": -1.0}])

    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.progress == 1.0 and job.stage == "done"
    assert job.output_video.name == storage.output_name(job)
    assert job.poster.name == storage.poster_name(job)
    assert (job.width, job.height, job.frames, job.fps) == (*FAKE_SIZE, 9, 16)
    assert job.gpu_name == FAKE_DEVICE and job.attempts == 1 and job.error == ""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.mp4"
        path.write_bytes(storage.read_bytes(job.output_video.name))
        assert job.bytes == path.stat().st_size
        frames, width, height, fps = probe_video(path)
    assert (frames, width, height, fps) == (9, *FAKE_SIZE, 16.0)
    assert storage.read_bytes(job.poster.name)[:3] == b"\xff\xd8\xff"  # JPEG
    for key in ("load_model", "read_input", "text_encode", "denoise", "decode", "encode", "upload", "total"):
        assert job.timings[key] >= 0, key
    request = fake_loader.pipeline().requests[0]
    assert (request.seed, request.num_steps, request.num_frames, request.prompt) == (77, 2, 9, job.prompt)
    assert request.resize_mode == "pad" and request.loras == (("ink", 0.5), ("glow", -1.0))
    assert request.image.size == (64, 48)


def test_s3_objects_carry_explicit_content_types(make_job, fake_loader):
    from tests.bootstrap import s3_server

    job = make_job()
    worker.execute_job(str(job.id))
    job.refresh_from_db()
    client = s3_server().client()
    video = client.head_object(Bucket="turbosite-test", Key=job.output_video.name)
    poster = client.head_object(Bucket="turbosite-test", Key=job.poster.name)
    assert video["ContentType"] == "video/mp4"
    assert poster["ContentType"] == "image/jpeg"


def test_pipeline_is_loaded_once_and_kept_across_jobs(make_job, fake_loader):
    first, second = make_job(), make_job(seed=5)
    worker.execute_job(str(first.id))
    worker.execute_job(str(second.id))
    assert fake_loader.loads == ["tiny"]
    second.refresh_from_db()
    assert "load_model" not in second.timings  # the second job did not pay for loading
    other = make_job(model="wan2.2-i2v-a14b")
    worker.execute_job(str(other.id))
    assert fake_loader.loads == ["tiny", "wan2.2-i2v-a14b"]
    assert worker.loaded_models() == ["wan2.2-i2v-a14b"]  # one model per GPU process


def test_duplicate_delivery_runs_the_job_once(make_job, fake_loader):
    job = make_job()
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert worker.execute_job(str(job.id)) is None
    assert len(fake_loader.pipeline().requests) == 1
    job.refresh_from_db()
    assert job.attempts == 1 and job.status == Job.Status.SUCCEEDED


def test_unknown_job_id_is_dropped(fake_loader):
    assert worker.execute_job("00000000-0000-0000-0000-000000000000") is None
    assert fake_loader.loads == []


def test_cancel_mid_run_stops_between_steps_and_keeps_nothing(make_job, fake_loader):
    job = make_job(num_steps=4)

    def user_cancels(step: int) -> None:
        if step == 2:
            Job.objects.get(id=job.id).cancel()

    fake_loader.options = {"on_step": user_cancels}
    assert worker.execute_job(str(job.id)) == Job.Status.CANCELED
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELED
    assert fake_loader.pipeline().steps_run == 2  # stopped before step 3
    assert not stored(storage.output_name(job)) and not stored(storage.poster_name(job))
    assert job.output_video.name == ""


def test_canceled_before_it_starts_is_not_run(make_job, fake_loader):
    job = make_job()
    job.cancel()
    assert worker.execute_job(str(job.id)) is None
    assert fake_loader.loads == []


def test_missing_weights_fail_naming_the_file(make_job, fake_loader):
    fake_loader.error = WeightsError("model wan2.2-i2v-a14b: missing weight files in /models: Wan2.1_VAE.pth")
    job = make_job(model="wan2.2-i2v-a14b")
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert_owner_reads_a_reason(job, "Wan2.1_VAE.pth", "/models", "WeightsError")
    assert "wan2.2-i2v-a14b is not installed" in job.error and "another model" in job.error
    assert job.finished_at is not None


def test_cuda_out_of_memory_suggests_smaller_work(make_job, fake_loader):
    fake_loader.options = {"fail_at": ("denoise", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to "
                                                                              "allocate 20.00 GiB"))}
    job = make_job(resolution="720p", num_frames=81)
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert "out of memory" in job.error and "lower resolution" in job.error and "fewer frames" in job.error
    assert "81 frames at 720p" in job.error
    assert_owner_reads_a_reason(job, "OutOfMemoryError", "Tried to allocate 20.00 GiB")


def test_storage_down_while_saving_fails_and_removes_the_partial_upload(make_job, fake_loader, monkeypatch):
    real_save = storage.save_bytes

    def poster_write_fails(name: str, data: bytes, content_type: str | None = None, **options) -> str:
        if name.endswith(".jpg"):
            raise ConnectionError("Could not connect to the endpoint URL")
        return real_save(name, data, content_type, **options)

    monkeypatch.setattr(storage, "save_bytes", poster_write_fails)
    job = make_job()
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert "storage was unavailable" in job.error and "Run it again" in job.error
    assert_owner_reads_a_reason(job, storage.poster_name(job), "Could not connect to the endpoint URL")
    assert not stored(storage.output_name(job)), "the mp4 uploaded before the failure must be deleted"
    assert job.output_video.name == ""


def test_transient_storage_error_is_retried_and_the_job_succeeds(make_job, fake_loader, monkeypatch):
    real_save = default_storage.save
    failures = {"left": 1}

    def flaky_save(name, content, max_length=None):
        if name.endswith(".mp4") and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("connection reset by peer")
        return real_save(name, content, max_length=max_length)

    monkeypatch.setattr(default_storage, "save", flaky_save)
    job = make_job()
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert failures["left"] == 0
    assert stored(storage.output_name(job))


def test_missing_input_image_fails_with_a_storage_reason(make_job, fake_loader):
    job = make_job()
    storage.delete_quietly(job.input_image.name)
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert "storage was unavailable" in job.error
    assert_owner_reads_a_reason(job, "reading the input image", job.input_image.name)


def test_undecodable_input_fails_naming_it(make_job, fake_loader):
    job = make_job(image=b"not an image at all")
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert "Try another image" in job.error
    assert_owner_reads_a_reason(job, "cannot be decoded", job.input_image.name)


def test_request_the_model_refuses_is_reported(make_job, fake_loader):
    fake_loader.options = {"fail_at": ("text_encode", InferenceInputError("num_frames must be 4k+1, got 6"))}
    job = make_job()
    worker.execute_job(str(job.id))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "cannot use this image with these settings" in job.error
    assert_owner_reads_a_reason(job, "num_frames must be 4k+1, got 6", "InferenceInputError")


def test_unexpected_error_names_the_stage_and_the_job(make_job, fake_loader):
    fake_loader.options = {"fail_at": ("decode", ValueError("tensor shapes do not match"))}
    job = make_job()
    worker.execute_job(str(job.id))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "while generating frames" in job.error or "while decoding frames" in job.error
    assert str(job.id) in job.error and "Run it again" in job.error
    assert_owner_reads_a_reason(job, "ValueError during de", "tensor shapes do not match", "Traceback", "worker.py")


def test_time_limit_fails_the_job_between_steps(make_job, fake_loader, settings):
    settings.TURBO_JOB_TIME_LIMIT_S = 1
    fake_loader.options = {"step_delay": 0.4}
    job = make_job(num_steps=4)
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert "time limit of 1 s" in job.error and "fewer frames" in job.error
    assert fake_loader.pipeline().steps_run < 4


def test_progress_and_stage_are_written_while_running(make_job, fake_loader, settings):
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 0
    seen: list[tuple[str, float]] = []
    job = make_job(num_steps=4)

    def record(step: int) -> None:
        row = Job.objects.get(id=job.id)
        seen.append((row.stage, row.progress))

    fake_loader.options = {"on_step": record}
    worker.execute_job(str(job.id))
    assert [stage for stage, _ in seen] == ["denoise"] * 4
    progresses = [progress for _, progress in seen]
    assert progresses == pytest.approx([Stage.DENOISE.progress(step / 4) for step in (1, 2, 3, 4)])
    assert Stage.DENOISE.start < progresses[0] < progresses[-1] <= Stage.DECODE.start


def test_the_stage_written_is_the_stage_running(make_job, fake_loader, settings, monkeypatch):
    """Whatever the throttle, the row names the stage that is working now (it used to lag one stage behind)."""
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 60_000
    seen: dict[str, str] = {}
    job = make_job(num_steps=2)

    def row_stage() -> str:
        return Job.objects.values_list("stage", flat=True).get(id=job.id)

    fake_loader.options = {"on_work": lambda stage, fraction: seen.setdefault(stage, row_stage())}
    save_bytes = storage.save_bytes
    monkeypatch.setattr(storage, "save_bytes",
                        lambda *args, **kwargs: (seen.setdefault("upload", row_stage()), save_bytes(*args, **kwargs))[1])
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert seen == {"text_encode": "text_encode", "image_encode": "image_encode", "denoise": "denoise",
                    "decode": "decode", "upload": "uploading"}
    assert Stage("uploading").label == "Saving the video"


def test_progress_moves_while_the_vae_decodes(make_job, fake_loader, settings):
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 0
    seen: list[tuple[str, float]] = []
    job = make_job(num_steps=1)

    def record(stage: str, fraction: float) -> None:
        if stage == "decode":
            seen.append(Job.objects.values_list("stage", "progress").get(id=job.id))

    fake_loader.options = {"on_work": record, "decode_chunks": 4}
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert [stage for stage, _ in seen] == ["decode"] * 5
    assert [progress for _, progress in seen] == pytest.approx(
        [Stage.DECODE.progress(chunk / 4) for chunk in range(5)])
    job.refresh_from_db()
    assert job.progress == 1.0 and job.stage == "done"


def test_live_timings_show_the_stages_already_run(make_job, fake_loader, settings):
    """While a job runs its row carries the measured time of each finished stage (the ETA counts on them)."""
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 0
    job = make_job(num_steps=1)
    seen: dict[str, dict] = {}
    fake_loader.options = {"on_work": lambda stage, fraction: seen.setdefault(
        stage, Job.objects.values_list("timings", flat=True).get(id=job.id))}
    worker.execute_job(str(job.id))
    assert "read_input" in seen["text_encode"] and "text_encode" not in seen["text_encode"]
    assert {"read_input", "text_encode", "image_encode"} <= set(seen["denoise"])
    assert {"text_encode", "image_encode", "denoise"} <= set(seen["decode"])


def test_progress_writes_are_throttled_but_stage_changes_always_land(make_job, fake_loader, settings):
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 60_000
    seen: list[tuple[str, float]] = []
    job = make_job(num_steps=3)
    fake_loader.options = {"on_step": lambda step: seen.append(Job.objects.values_list("stage", "progress")
                                                               .get(id=job.id))}
    worker.execute_job(str(job.id))
    # the denoise start is a stage change (written), the three steps fall inside the throttle window
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] == ("denoise", Stage.DENOISE.start)


def test_heartbeat_beats_during_a_long_step(make_job, fake_loader, settings):
    settings.TURBO_HEARTBEAT_INTERVAL_S = 0.1
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 60_000
    beats: list = []
    job = make_job(num_steps=1)

    def long_step(step: int) -> None:
        beats.append(Job.objects.values_list("heartbeat_at", flat=True).get(id=job.id))
        time.sleep(0.6)  # one long GPU step: no progress is written meanwhile
        beats.append(Job.objects.values_list("heartbeat_at", flat=True).get(id=job.id))

    fake_loader.options = {"on_step": long_step}
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert beats[1] > beats[0]


def test_job_taken_back_by_the_reaper_is_let_go_without_writing(make_job, fake_loader):
    job = make_job(num_steps=4)

    def reaper_requeues(step: int) -> None:
        if step == 1:
            Job.objects.get(id=job.id).requeue("worker silent")

    fake_loader.options = {"on_step": reaper_requeues}
    assert worker.execute_job(str(job.id)) is None
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.error == "worker silent"
    assert not stored(storage.output_name(job))


def test_shutdown_puts_the_job_back_on_the_queue(make_job, fake_loader, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr("generation.queue.enqueue_job", lambda job_id: sent.append(str(job_id)))
    fake_loader.options = {"fail_at": ("denoise", Shutdown())}
    job = make_job()
    assert worker.execute_job(str(job.id)) == Job.Status.QUEUED
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and sent == [str(job.id)]


def test_heartbeat_keeps_beating_after_a_failed_write(make_job, fake_loader, settings, monkeypatch):
    settings.TURBO_HEARTBEAT_INTERVAL_S = 0.05
    settings.TURBO_PROGRESS_WRITE_INTERVAL_MS = 60_000
    job = make_job(num_steps=1)
    real_beat = worker._Heartbeat.beat
    failures = []

    def flaky_beat(self) -> bool:
        if not failures:
            failures.append(1)
            raise RuntimeError("server closed the connection unexpectedly")
        return real_beat(self)

    monkeypatch.setattr(worker._Heartbeat, "beat", flaky_beat)
    seen: list = []

    def long_step(step: int) -> None:
        time.sleep(0.5)  # no progress writes meanwhile: only the heartbeat thread touches the row
        seen.append(Job.objects.values_list("heartbeat_at", flat=True).get(id=job.id))

    fake_loader.options = {"on_step": long_step}
    started = Job.objects.values_list("created_at", flat=True).get(id=job.id)
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert failures == [1]
    assert seen[0] is not None and seen[0] > started


def test_a_run_taken_over_by_another_attempt_leaves_that_attempts_files(make_job):
    job = make_job()
    assert job.claim(worker="old")
    run = worker._Run(job=job, attempt=1, deadline=time.monotonic() + 60)
    name = run.upload(storage.output_name(job), b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    assert job.requeue("silent", attempt=1) and job.claim(worker="new")  # attempt 2 writes the same name

    run.delete_outputs()
    assert stored(name), "the stale attempt removed the file of the attempt that replaced it"

    own = worker._Run(job=job, attempt=2, deadline=time.monotonic() + 60)
    own.upload(storage.output_name(job), b"partial", "video/mp4")
    own.delete_outputs()
    assert not stored(name)
