"""The Job state machine: each change is one conditional UPDATE, so a lost race returns False and a change the
machine forbids raises IllegalTransition. Runs on the real PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from generation.models import IllegalTransition, Job


def _job(owner, **fields) -> Job:
    return Job.objects.create(owner=owner, prompt="a lighthouse at dusk", seed=7, model="tiny", **fields)


def _fresh(job: Job) -> Job:
    return Job.objects.get(id=job.id)


@pytest.mark.django_db
def test_second_claim_loses(user):
    job = _job(user)
    first, second = _fresh(job), _fresh(job)  # two workers that each loaded the QUEUED row

    assert first.claim(worker="worker-a", gpu_name="H100") is True
    assert second.claim(worker="worker-b") is False

    row = _fresh(job)
    assert row.status == Job.Status.RUNNING
    assert row.worker == "worker-a"
    assert row.attempts == 1
    assert row.started_at is not None and row.heartbeat_at is not None
    assert second.status == Job.Status.QUEUED, "the loser's instance is left as it was"


@pytest.mark.django_db
def test_finishing_needs_a_running_job(user):
    job = _job(user)

    assert job.succeed(width=64) is False
    assert _fresh(job).status == Job.Status.QUEUED
    assert _fresh(job).width is None
    assert job.requeue("lost worker") is False
    assert job.report_progress(progress=0.5, stage="denoise") is False
    assert _fresh(job).progress == 0.0


@pytest.mark.django_db
def test_full_run_then_nothing_moves_a_finished_job(user):
    job = _job(user)
    assert job.claim(worker="w") is True
    assert job.report_progress(progress=1.7, stage="decode", timings={"decode": 0.2}) is True
    assert _fresh(job).progress == 1.0, "progress is clamped to 0..1"
    assert job.succeed(width=832, height=480, frames=81, fps=16, bytes=1234) is True

    row = _fresh(job)
    assert (row.status, row.progress, row.stage, row.width, row.frames) == (Job.Status.SUCCEEDED, 1.0, "done", 832, 81)
    assert row.finished_at is not None
    for attempt in (lambda j: j.cancel(), lambda j: j.fail("late"), lambda j: j.claim(worker="x"),
                    lambda j: j.requeue(), lambda j: j.succeed()):
        assert attempt(_fresh(job)) is False
    assert _fresh(job).status == Job.Status.SUCCEEDED


@pytest.mark.django_db
def test_cancel_from_queued_and_running(user):
    queued, running = _job(user), _job(user)
    assert running.claim(worker="w")

    assert queued.cancel() is True
    assert running.cancel() is True
    assert running.report_progress(progress=0.3, stage="denoise") is False, "a canceled job is no longer the worker's"
    assert {_fresh(queued).status, _fresh(running).status} == {Job.Status.CANCELED}


@pytest.mark.django_db
def test_requeue_returns_running_job_and_next_claim_counts_an_attempt(user):
    job = _job(user)
    assert job.claim(worker="w1")
    assert job.requeue("worker lost") is True
    assert (job.status, job.worker, job.error) == (Job.Status.QUEUED, "", "worker lost")
    assert job.claim(worker="w2") is True
    assert (job.attempts, job.worker) == (2, "w2")


@pytest.mark.django_db
def test_fail_keeps_a_bounded_reason(user):
    job = _job(user)
    assert job.fail("x" * 20_000) is True
    assert len(_fresh(job).error) == 10_000
    assert _fresh(job).status == Job.Status.FAILED


@pytest.mark.django_db
@pytest.mark.parametrize(("target", "source"), [
    (Job.Status.SUCCEEDED, Job.Status.QUEUED),
    (Job.Status.RUNNING, Job.Status.SUCCEEDED),
    (Job.Status.QUEUED, Job.Status.CANCELED),
    (Job.Status.CANCELED, Job.Status.FAILED),
])
def test_impossible_source_is_illegal(user, target, source):
    job = _job(user)
    with pytest.raises(IllegalTransition, match=str(source)):
        job._transition(target, sources=[source])
    assert _fresh(job).status == Job.Status.QUEUED


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_have_one_winner(user):
    """Eight threads, each with its own PostgreSQL connection, claim the same job at the same moment."""
    job = _job(user)
    contenders = 8
    barrier = threading.Barrier(contenders)
    results: list[bool] = []
    lock = threading.Lock()

    def contend(index: int) -> None:
        try:
            mine = Job.objects.get(id=job.id)
            barrier.wait(timeout=10)
            won = mine.claim(worker=f"worker-{index}")
            with lock:
                results.append(won)
        finally:
            connection.close()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == [False] * (contenders - 1) + [True]
    row = _fresh(job)
    assert row.attempts == 1
    assert row.worker.startswith("worker-")


@pytest.mark.django_db
def test_a_replaced_worker_cannot_write_over_the_attempt_that_took_over(user):
    job = _job(user)
    stale = _fresh(job)
    assert stale.claim(worker="worker-a")  # attempt 1, then worker-a goes silent
    assert _fresh(job).requeue("heartbeat lost", attempt=1)
    replacement = _fresh(job)
    assert replacement.claim(worker="worker-b")  # attempt 2

    assert stale.report_progress(progress=0.9, stage="decode", attempt=1) is False
    assert stale.succeed(attempt=1, width=1) is False
    assert stale.fail("late failure", attempt=1) is False
    assert _fresh(job).requeue("stale reaper decision", attempt=1) is False
    row = _fresh(job)
    assert (row.status, row.worker, row.attempts, row.width, row.error) == (Job.Status.RUNNING, "worker-b", 2, None,
                                                                               "")

    assert replacement.report_progress(progress=0.5, stage="denoise", attempt=2) is True
    assert replacement.succeed(attempt=2, width=160) is True
    assert _fresh(job).status == Job.Status.SUCCEEDED and _fresh(job).width == 160


@pytest.mark.django_db
def test_a_workers_writes_hold_only_while_its_attempt_runs(user):
    from generation.models import Standing

    job = _job(user)
    assert job.beat(1) is False and job.record_gpu("H200") is False  # not running yet
    assert job.standing(1) is Standing.LOST
    assert job.claim(worker="worker-a")
    Job.objects.filter(id=job.id).update(heartbeat_at=None)

    assert job.standing(1) is Standing.OURS and job.standing(2) is Standing.LOST
    assert job.beat(1) is True and _fresh(job).heartbeat_at is not None
    assert job.beat(2) is False
    assert job.record_gpu("NVIDIA H200" + "x" * 200) is True
    assert _fresh(job).gpu_name == ("NVIDIA H200" + "x" * 200)[:128] == job.gpu_name
    assert job.claimed_again(1) is False

    assert job.requeue("lost", attempt=1) and job.claim(worker="worker-b")  # the reaper gave it to attempt 2
    assert job.claimed_again(1) is True and job.standing(1) is Standing.LOST
    assert job.beat(1) is False and job.beat(2) is True

    assert job.cancel()
    assert job.standing(2) is Standing.CANCELED
    Job.objects.filter(id=job.id).delete()
    assert job.standing(2) is Standing.LOST and job.claimed_again(2) is False
