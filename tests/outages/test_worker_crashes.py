"""Crashes and outages around a real GPU-worker process (manage.py run_gpu_worker with a fake pipeline) on the
real Redis broker, PostgreSQL and S3 server: nothing stays RUNNING forever, and the worker keeps serving."""

from __future__ import annotations

import signal

import pytest
from django.db import connection

from generation import storage
from generation.models import Job
from tests.outages.conftest import send_run_job
from tests.outages.processes import TcpRelay, child_env, start_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "0.8"  # seconds per denoising step while a test needs time to strike mid-job (4 steps)


def row(job: Job) -> Job:
    return Job.objects.get(id=job.id)


def runs_of(log_path, prompt: str) -> int:
    return log_path.read_text().splitlines().count(prompt) if log_path.exists() else 0


def wait_running(job: Job, timeout: float = 30) -> Job:
    return wait_for(lambda: (j := row(job)).status == Job.Status.RUNNING and j.stage == "denoise" and j, timeout,
                    f"job {job.id} to be denoising")


def wait_status(job: Job, statuses: tuple[str, ...], timeout: float = 60) -> Job:
    return wait_for(lambda: (j := row(job)).status in statuses and j, timeout, f"job {job.id} to reach {statuses}")


def test_worker_killed_mid_job_is_reaped_and_the_job_runs_again_to_success(queued_job, processes, tmp_path):
    runs = tmp_path / "runs.log"
    env = child_env(HARDENING_STEP_SECONDS=SLOW, HARDENING_RUN_LOG=str(runs))
    job = queued_job("killed mid-run")
    first = start_worker(tmp_path, env, "first", "--no-reaper")
    processes.append(first)
    send_run_job(env, job.id)
    wait_running(job)
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert row(job).status == Job.Status.RUNNING  # a killed process cleans nothing up: the reaper must

    second = start_worker(tmp_path, {**env, "HARDENING_STEP_SECONDS": "0", "TURBO_HEARTBEAT_STALE_S": "2",
                                     "TURBO_REAPER_INTERVAL_S": "1"}, "second")
    processes.append(second)
    done = wait_status(job, (Job.Status.SUCCEEDED, Job.Status.FAILED))
    assert done.status == Job.Status.SUCCEEDED, done.error
    assert done.attempts == 2
    assert done.worker.endswith(f":{second.pid}")
    assert runs_of(runs, "killed mid-run") == 2
    assert storage.read_bytes(done.output_video.name)[4:8] == b"ftyp"
    assert f"job {job.id} requeued" in second.output()  # by the second worker's reaper


def test_worker_killed_on_the_last_allowed_attempt_ends_failed_with_a_reason(queued_job, processes, tmp_path):
    runs = tmp_path / "runs.log"
    env = child_env(HARDENING_STEP_SECONDS=SLOW, HARDENING_RUN_LOG=str(runs), TURBO_MAX_ATTEMPTS="1")
    job = queued_job("killed, no attempts left")
    first = start_worker(tmp_path, env, "first", "--no-reaper")
    processes.append(first)
    send_run_job(env, job.id)
    wait_running(job)
    first.signal(signal.SIGKILL)
    first.wait(10)

    reaper_host = start_worker(tmp_path, {**env, "TURBO_HEARTBEAT_STALE_S": "2", "TURBO_REAPER_INTERVAL_S": "1"},
                               "second")
    processes.append(reaper_host)
    done = wait_status(job, (Job.Status.FAILED, Job.Status.SUCCEEDED), 30)
    assert done.status == Job.Status.FAILED
    assert "worker was lost 1 times" in done.error and "Retry" in done.error
    assert done.attempts == 1 and runs_of(runs, "killed, no attempts left") == 1


def test_the_same_message_delivered_twice_runs_the_job_once(queued_job, processes, tmp_path):
    runs = tmp_path / "runs.log"
    env = child_env(HARDENING_RUN_LOG=str(runs))
    job = queued_job("delivered twice")
    send_run_job(env, job.id, times=2)
    worker = start_worker(tmp_path, env)
    processes.append(worker)
    done = wait_status(job, (Job.Status.SUCCEEDED, Job.Status.FAILED))
    assert done.status == Job.Status.SUCCEEDED, done.error
    wait_for(lambda: "duplicate or stale delivery skipped" in worker.output(), 20, "the second delivery")
    assert runs_of(runs, "delivered twice") == 1
    assert row(job).attempts == 1


def test_cuda_out_of_memory_fails_that_job_with_advice_and_the_worker_serves_the_next(queued_job, processes,
                                                                                       tmp_path):
    env = child_env()
    too_big = queued_job("[oom] a whale breaches")
    after = queued_job("a small boat drifts")
    worker = start_worker(tmp_path, env)
    processes.append(worker)
    send_run_job(env, too_big.id)
    send_run_job(env, after.id)
    failed = wait_status(too_big, (Job.Status.FAILED, Job.Status.SUCCEEDED))
    assert failed.status == Job.Status.FAILED
    assert "ran out of memory" in failed.error and "lower resolution or fewer frames" in failed.error
    served = wait_status(after, (Job.Status.SUCCEEDED, Job.Status.FAILED))
    assert served.status == Job.Status.SUCCEEDED, served.error
    assert served.worker == failed.worker and worker.popen.poll() is None  # same process, still alive


def test_sigterm_during_a_job_hands_it_back_and_exits_cleanly(queued_job, processes, tmp_path):
    runs = tmp_path / "runs.log"
    env = child_env(HARDENING_STEP_SECONDS=SLOW, HARDENING_RUN_LOG=str(runs))
    job = queued_job("interrupted by a deploy")
    first = start_worker(tmp_path, env, "first")
    processes.append(first)
    send_run_job(env, job.id)
    wait_running(job)
    first.signal(signal.SIGTERM)
    assert first.wait(40) == 0, first.output()
    assert "shutting down" in first.output()
    after = row(job)
    assert after.status in (Job.Status.QUEUED, Job.Status.SUCCEEDED)  # finished, or handed back: never RUNNING
    if after.status == Job.Status.QUEUED:
        assert "shut down" in after.error
        second = start_worker(tmp_path, {**env, "HARDENING_STEP_SECONDS": "0"}, "second")
        processes.append(second)
        done = wait_status(job, (Job.Status.SUCCEEDED, Job.Status.FAILED))
        assert done.status == Job.Status.SUCCEEDED, done.error
        assert done.attempts == 2


def terminate_other_backends() -> int:
    """What a PostgreSQL restart does to clients: every other connection to this database is cut."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_database_connections_cut_under_a_worker_it_recovers(queued_job, processes, tmp_path):
    env = child_env(HARDENING_STEP_SECONDS=SLOW, TURBO_HEARTBEAT_STALE_S="3", TURBO_REAPER_INTERVAL_S="1")
    worker = start_worker(tmp_path, env)
    processes.append(worker)

    # Cut while a job runs: that job still reaches an end state (here via the reaper), never RUNNING forever.
    running = queued_job("connections cut mid-run")
    send_run_job(env, running.id)
    wait_running(running)
    assert terminate_other_backends() >= 1
    ended = wait_status(running, (Job.Status.SUCCEEDED, Job.Status.FAILED), 60)
    assert ended.status == Job.Status.SUCCEEDED, ended.error

    # Cut while idle: the next job is served on fresh connections.
    wait_for(lambda: terminate_other_backends() >= 0, 5, "the cut")
    later = queued_job("after the cut")
    send_run_job(env, later.id)
    done = wait_status(later, (Job.Status.SUCCEEDED, Job.Status.FAILED), 60)
    assert done.status == Job.Status.SUCCEEDED, done.error
    assert worker.popen.poll() is None


def s3_relay_env(relays, **extra: str) -> tuple[dict[str, str], TcpRelay]:
    from urllib.parse import urlsplit

    from django.conf import settings

    endpoint = urlsplit(settings.S3_ENDPOINT_URL)
    relay = TcpRelay(endpoint.hostname, endpoint.port)
    relays.append(relay)
    return child_env(S3_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}", **extra), relay


def test_s3_down_while_the_output_uploads_is_retried_then_failed_with_the_reason(queued_job, processes, relays,
                                                                                 tmp_path):
    env, relay = s3_relay_env(relays, HARDENING_STEP_SECONDS=SLOW)
    job = queued_job("storage goes away")
    worker = start_worker(tmp_path, env)
    processes.append(worker)
    send_run_job(env, job.id)
    wait_running(job)  # the input was read through the relay; the outage starts now
    relay.down()
    done = wait_status(job, (Job.Status.FAILED, Job.Status.SUCCEEDED), 90)
    assert done.status == Job.Status.FAILED
    assert "storage was unavailable" in done.error and "outputs/" not in done.error
    assert "outputs/" in done.error_detail  # the name of what failed is for the operator
    assert relay.refused_while_down >= 3  # the upload was tried again, not given up at the first error
    assert "try 2 of" in worker.output()  # the storage layer's own backoff, not only the S3 client's
    assert not done.output_video.name


def test_s3_back_during_the_retries_the_job_succeeds(queued_job, processes, relays, tmp_path):
    env, relay = s3_relay_env(relays, HARDENING_STEP_SECONDS=SLOW)
    job = queued_job("storage hiccups")
    worker = start_worker(tmp_path, env)
    processes.append(worker)
    send_run_job(env, job.id)
    wait_running(job)
    relay.down()
    wait_for(lambda: relay.refused_while_down >= 1, 30, "the upload to hit the outage")
    relay.up()
    done = wait_status(job, (Job.Status.FAILED, Job.Status.SUCCEEDED), 60)
    assert done.status == Job.Status.SUCCEEDED, done.error
    assert storage.read_bytes(done.output_video.name)[4:8] == b"ftyp"
