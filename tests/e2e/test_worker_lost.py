"""A worker killed mid-job: another worker's reaper sees the heartbeat stop, requeues the job, and runs it."""

from __future__ import annotations

import signal

import pytest

from generation.models import Job
from tests.e2e.test_worker_process import api, poll, submit  # noqa: F401  (api is a fixture)
from tests.e2e.worker_process import start_worker

pytestmark = pytest.mark.django_db(transaction=True)


def submit_and_wait_until_running(client) -> dict:
    """A job long enough (17 frames) for the worker to be stopped while it runs."""
    created = submit(client, num_frames=17, num_steps=2)
    running = poll(client, created["id"], {"RUNNING", "SUCCEEDED", "FAILED", "CANCELED"}, interval=0.05)
    assert running["status"] == "RUNNING", running
    return created


def test_job_of_a_killed_worker_is_requeued_and_finished_by_another(api):  # noqa: F811
    first = start_worker({"TURBO_REAPER_INTERVAL_S": "3600"})
    second = None
    try:
        created = submit_and_wait_until_running(api)
        first.process.send_signal(signal.SIGKILL)  # no goodbye: only the missing heartbeat tells
        first.process.wait(timeout=10)
        lost_worker = Job.objects.get(id=created["id"]).worker

        second = start_worker({"TURBO_HEARTBEAT_STALE_S": "3", "TURBO_REAPER_INTERVAL_S": "1"})
        done = poll(api, created["id"], {"SUCCEEDED", "FAILED", "CANCELED"})
        assert done["status"] == "SUCCEEDED", f"{done}\n{second.log()}"
        job = Job.objects.get(id=created["id"])
        assert job.attempts == 2 and job.worker != lost_worker
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.log()


def test_worker_stopped_mid_job_hands_it_back_and_the_next_worker_finishes_it(api):  # noqa: F811
    first = start_worker({"TURBO_REAPER_INTERVAL_S": "3600"})
    second = None
    try:
        created = submit_and_wait_until_running(api)
        assert first.stop(timeout=60) == 0, first.log()  # SIGTERM: a deploy or a scale-down
        job = Job.objects.get(id=created["id"])
        assert job.status == Job.Status.QUEUED and "shut down" in job.error, first.log()

        second = start_worker({"TURBO_REAPER_INTERVAL_S": "3600"})
        done = poll(api, created["id"], {"SUCCEEDED", "FAILED", "CANCELED"})
        assert done["status"] == "SUCCEEDED", f"{done}\n{second.log()}"
        assert Job.objects.get(id=created["id"]).attempts == 2
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.log()
