"""A storage server that accepts connections but answers nothing (SIGSTOP on our own SeaweedFS): the worker's
upload is bounded, the job ends FAILED with the reason, and once the server answers again the reaper's sweep leaves
no output object of the failed job behind, even one whose stalled write lands late."""

from __future__ import annotations

import time

import pytest

from generation import storage, worker
from generation.models import Job, PendingDelete
from tests.outages.processes import wait_for
from tests.s3server import HUNG_BUCKET as BUCKET

pytestmark = pytest.mark.django_db(transaction=True)


def test_hung_storage_during_the_upload_fails_the_job_in_bounded_time_and_keeps_no_output(
        hung_s3, make_job, fake_loader, settings, monkeypatch):
    settings.TURBO_WORKER_STORAGE_DEADLINE_S = 6
    job = make_job()
    fake_loader.options = {"on_step": lambda step: hung_s3.freeze() if step == 1 else None}
    uploads: list[float] = []
    real_save = storage.save_bytes

    def timed_save(*args, **kwargs):
        started = time.monotonic()
        try:
            return real_save(*args, **kwargs)
        finally:
            uploads.append(time.monotonic() - started)

    monkeypatch.setattr(storage, "save_bytes", timed_save)

    assert worker.execute_job(str(job.id)) == Job.Status.FAILED

    # The upload gave up within the worker's deadline (one request timeout may end just past it), not after
    # minutes of botocore's own retries; the poster was not even tried.
    assert len(uploads) == 1
    assert uploads[0] <= 6 + 1, uploads
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "storage" in job.error.lower()
    assert not job.output_video.name
    pending = set(PendingDelete.objects.values_list("name", flat=True))
    assert storage.output_name(job) in pending  # its write may still land: recorded for the reaper

    hung_s3.thaw()
    # The PUT the server had received before it stalled lands now: a FAILED job's video, unless swept.
    assert wait_for(lambda: hung_s3.keys(BUCKET, "outputs/") == [storage.output_name(job)], 10,
                    "the stalled write to land")
    for _ in range(2):
        storage.sweep_pending_deletes(settle_s=0)
    assert hung_s3.keys(BUCKET, "outputs/") == []
    assert not PendingDelete.objects.exists()
    assert hung_s3.keys(BUCKET, "inputs/") == [storage.input_name(job)]  # the input stays: a retry needs it


def test_sweep_keeps_files_of_running_and_succeeded_jobs(hung_s3, make_job):
    running = make_job()
    Job.objects.filter(id=running.id).update(status=Job.Status.RUNNING)
    for name in (storage.output_name(running), storage.input_name(running)):
        storage.remember_for_deletion(name)
    storage.save_bytes(storage.output_name(running), b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    gone = make_job()
    orphan = storage.input_name(gone)
    Job.objects.filter(id=gone.id).delete()
    storage.remember_for_deletion(orphan)

    assert storage.sweep_pending_deletes(settle_s=0) == [orphan]

    keys = hung_s3.keys(BUCKET)
    assert orphan not in keys
    assert storage.output_name(running) in keys and storage.input_name(running) in keys
    # A running job's output is decided later; its input record is dropped (the job needs the file).
    assert set(PendingDelete.objects.values_list("name", flat=True)) == {storage.output_name(running), orphan}
