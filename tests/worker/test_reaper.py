"""The reaper: silent RUNNING jobs go back to the queue with a new message, or fail after the attempt limit."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from generation import reaper, worker
from generation.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    messages: list[str] = []
    monkeypatch.setattr("generation.queue.enqueue_job", lambda job_id: messages.append(str(job_id)))
    return messages


def running(job: Job, *, silent_for_s: float, attempts: int = 1) -> Job:
    """Make `job` look claimed by a worker that last beat `silent_for_s` seconds ago."""
    beat = timezone.now() - timedelta(seconds=silent_for_s)
    Job.objects.filter(id=job.id).update(status=Job.Status.RUNNING, attempts=attempts, worker="gpu-host:4242:gpu0",
                                         started_at=beat, heartbeat_at=beat, progress=0.4, stage="denoise")
    job.refresh_from_db()
    return job


def test_silent_job_is_requeued_and_sent_again_while_live_ones_are_left_alone(make_job, sent, settings):
    settings.TURBO_HEARTBEAT_STALE_S = 120
    lost = running(make_job(), silent_for_s=300)
    alive = running(make_job(), silent_for_s=5)

    result = reaper.reap_stale_jobs()

    assert result.requeued == [str(lost.id)] and result.failed == []
    assert sent == [str(lost.id)]
    lost.refresh_from_db()
    alive.refresh_from_db()
    assert lost.status == Job.Status.QUEUED and lost.progress == 0.0 and lost.worker == ""
    assert "gpu-host:4242:gpu0 stopped sending heartbeats" in lost.error_detail
    assert "gpu-host" not in lost.error and "stopped responding" in lost.error
    assert alive.status == Job.Status.RUNNING


def test_job_that_used_every_attempt_is_failed_with_the_count(make_job, sent, settings):
    settings.TURBO_MAX_ATTEMPTS = 3
    job = running(make_job(), silent_for_s=600, attempts=3)

    result = reaper.reap_stale_jobs()

    assert result.failed == [str(job.id)] and sent == []
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "worker was lost 3 times" in job.error
    assert "gpu-host" in job.error_detail and "gpu-host" not in job.error
    assert job.finished_at is not None


def test_requeued_job_runs_again_as_a_new_attempt(make_job, sent, fake_loader):
    job = running(make_job(), silent_for_s=600, attempts=1)
    reaper.reap_stale_jobs()
    assert worker.execute_job(sent[0]) == Job.Status.SUCCEEDED
    job.refresh_from_db()
    assert job.attempts == 2 and job.status == Job.Status.SUCCEEDED and job.error == ""


def test_lost_three_times_ends_failed(make_job, sent, fake_loader, settings):
    """Claim, lose the worker, reap: the third loss is final."""
    settings.TURBO_MAX_ATTEMPTS = 3
    job = make_job()
    outcomes = []
    for _ in range(3):
        assert job.claim(worker="doomed")
        running(job, silent_for_s=600, attempts=job.attempts)
        result = reaper.reap_stale_jobs()
        outcomes.append("requeued" if result.requeued else "failed")
        job.refresh_from_db()
    assert outcomes == ["requeued", "requeued", "failed"]
    assert job.status == Job.Status.FAILED and "lost 3 times" in job.error


def test_running_job_without_any_heartbeat_is_reaped_by_its_start_time(make_job, sent):
    job = running(make_job(), silent_for_s=600)
    Job.objects.filter(id=job.id).update(heartbeat_at=None)
    assert reaper.reap_stale_jobs().requeued == [str(job.id)]


def test_reap_jobs_command_reports_what_it_did(make_job, sent):
    job = running(make_job(), silent_for_s=50)
    out = StringIO()
    call_command("reap_jobs", "--stale-after", "30", stdout=out)
    assert f"requeued {job.id}" in out.getvalue() and out.getvalue().startswith("requeued 1, failed 0")
    assert sent == [str(job.id)]


def test_reaper_thread_runs_rounds_until_stopped(make_job, sent, settings):
    settings.TURBO_HEARTBEAT_STALE_S = 60
    job = running(make_job(), silent_for_s=120)
    thread = reaper.ReaperThread(interval_s=0.05)
    thread.start()
    try:
        for _ in range(100):
            if sent:
                break
            thread.stopped.wait(0.05)
    finally:
        thread.stop()
    assert sent[0] == str(job.id)
    assert not thread.is_alive()


def test_queued_jobs_are_sent_again_after_an_in_process_restart(make_job, sent):
    waiting = make_job()
    done = make_job()
    Job.objects.filter(id=done.id).update(status=Job.Status.SUCCEEDED)
    assert reaper.resend_queued_jobs() == 1
    assert sent == [str(waiting.id)]


def test_queued_jobs_whose_messages_were_lost_are_sent_again(make_job, monkeypatch):
    from generation import queue
    from turbosite import broker

    current = broker.ensure_broker()
    current.flush_all()  # the broker restarted empty
    old = make_job()
    Job.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(minutes=10))
    make_job()  # just created: its message may still be on the way
    assert reaper.resend_lost_messages(older_than_s=300) == [str(old.id)]
    assert queue.queue_depth() == 1
    # The message is there now: nothing is sent twice.
    assert reaper.resend_lost_messages(older_than_s=300) == []
    current.flush_all()
