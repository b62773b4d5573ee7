"""Retention as its own actor on the "maintenance" queue, with the real Redis broker and S3 server: the reaper's
schedule sends one message per period for the whole deployment (however many processes ask), a Dramatiq worker on
that queue expires old jobs and deletes their files, a full batch sends the next one, two runs never work at once,
and a file that cannot be deleted keeps its job unexpired until a later round deletes it."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError
from django.core.files.storage import default_storage
from django.utils import timezone

from generation import storage
from generation.lifecycle import actors, retention
from generation.lifecycle.models import JobExpiry
from generation.models import Job
from generation.reaper import ReaperThread
from tests.django_process import child_env, run_json
from tests.factories import delete_job_files, stored_job
from tests.outages.processes import TcpRelay
from turbosite import broker, locks

pytestmark = pytest.mark.django_db(transaction=True)


def files_of(job: Job) -> list[str]:
    return [storage.input_name(job), storage.output_name(job), storage.poster_name(job)]


@pytest.fixture
def aged(user, settings) -> Iterator:
    settings.TURBO_RETENTION_DAYS = 30
    made: list[Job] = []

    def make(days: float = 31) -> Job:
        job = stored_job(user, Job.Status.SUCCEEDED)
        Job.objects.filter(id=job.id).update(finished_at=timezone.now() - timedelta(days=days))
        made.append(job)
        return Job.objects.get(id=job.id)

    yield make
    delete_job_files(made)


@pytest.fixture(autouse=True)
def clean_maintenance_state() -> Iterator[None]:
    def clean() -> None:
        broker.ensure_broker().flush(broker.MAINTENANCE_QUEUE)
        client = locks._redis()
        for key in client.scan_iter(f"{os.environ['QUEUE_NAMESPACE']}:lock:*"):
            client.delete(key)

    clean()
    yield
    clean()


@pytest.fixture
def maintenance_worker() -> Iterator[None]:
    worker = actors.start_worker(threads=1)
    yield
    worker.stop(timeout=10_000)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def depth() -> int:
    return broker.queue_depth(broker.MAINTENANCE_QUEUE) or 0


def test_the_schedule_sends_one_message_per_period_for_the_whole_deployment(settings, monkeypatch, tmp_path):
    settings.TURBO_RETENTION_DAYS = 30
    monkeypatch.setattr(retention, "RETENTION_INTERVAL_S", 2)
    assert retention.schedule_retention() is True
    assert retention.schedule_retention() is False  # same period, same process
    other_process = run_json(  # another web or GPU worker process of the deployment, same Redis
        "from generation.lifecycle import retention\nprint(json.dumps({'sent': retention.schedule_retention()}))",
        child_env(tmp_path, REDIS_URL=os.environ["REDIS_URL"], QUEUE_NAMESPACE=os.environ["QUEUE_NAMESPACE"]))
    assert other_process == {"sent": False}
    assert depth() == 1
    time.sleep(2.2)
    assert retention.schedule_retention() is True and depth() == 2  # the next period
    settings.TURBO_RETENTION_DAYS = 0
    time.sleep(2.2)
    assert retention.schedule_retention() is False and depth() == 2  # 0 keeps everything: nothing to run


def test_the_reapers_round_schedules_and_the_maintenance_worker_deletes_from_s3(aged, maintenance_worker):
    old, young = aged(), aged(days=29)
    assert all(default_storage.exists(name) for name in files_of(old))
    reaper = ReaperThread(interval_s=0.2)
    reaper.start()
    try:
        wait_until(lambda: JobExpiry.objects.filter(job=old).exists())
    finally:
        reaper.stop()
    assert not any(default_storage.exists(name) for name in files_of(old))
    old.refresh_from_db()
    assert old.output_video.name == "" and old.status == Job.Status.SUCCEEDED
    assert default_storage.exists(storage.output_name(young)) and not JobExpiry.objects.filter(job=young).exists()
    assert depth() == 0  # one message for all those rounds, consumed; no GPU queue message either
    assert broker.queue_depth(broker.GPU_QUEUE) == 0


def test_a_full_batch_sends_the_next_until_the_backlog_is_gone(aged, maintenance_worker, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 2)
    jobs = [aged(days=31 + i) for i in range(5)]
    calls: list[retention.Round | None] = []
    real = retention.run_retention

    def counted(trigger: str = "") -> retention.Round | None:
        calls.append(result := real(trigger))
        return result

    monkeypatch.setattr(retention, "run_retention", counted)
    from generation import queue

    queue.send_retention("schedule")
    wait_until(lambda: JobExpiry.objects.filter(job__in=jobs).count() == 5)
    wait_until(lambda: len(calls) >= 3)
    assert [len(call.expired) for call in calls[:3]] == [2, 2, 1]  # batches of two, oldest first
    time.sleep(0.5)
    assert len(calls) == 3 and depth() == 0  # the short batch sent nothing more


def test_two_runs_never_work_at_once(aged):
    job = aged()
    with locks.single_flight(retention.LOCK, 60) as mine:
        assert mine
        assert retention.run_retention("schedule") is None  # another process holds it: nothing touched
    assert not JobExpiry.objects.filter(job=job).exists() and default_storage.exists(storage.output_name(job))
    assert retention.run_retention("schedule").expired == [str(job.id)]  # free again
    assert retention.run_retention("schedule").expired == []  # idempotent


def test_a_file_that_cannot_be_deleted_keeps_its_job_for_the_next_round(aged, monkeypatch):
    stuck, other = aged(days=40), aged(days=35)
    backend = type(default_storage._wrapped)  # the S3 storage (set up: the fixture stored files through it)
    real_delete = backend.delete

    def refuse_one(self, name: str) -> None:  # a key the bucket policy protects: S3 answers 403 for it alone
        if name == storage.poster_name(stuck):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "DeleteObject")
        real_delete(self, name)

    monkeypatch.setattr(backend, "delete", refuse_one)
    result = retention.run_retention("schedule")
    assert result.kept == [str(stuck.id)] and result.expired == [str(other.id)]  # the round went on
    assert not JobExpiry.objects.filter(job=stuck).exists()
    assert default_storage.exists(storage.poster_name(stuck))  # what could not go stays, and so does the job
    assert Job.objects.get(id=stuck.id).poster.name != ""
    monkeypatch.undo()
    assert retention.run_retention("schedule").expired == [str(stuck.id)]
    assert not any(default_storage.exists(name) for name in files_of(stuck))


def test_storage_down_stops_the_round_and_marks_nothing(aged, settings):
    jobs = [aged(days=31 + i) for i in range(3)]
    endpoint = urlsplit(os.environ["S3_ENDPOINT_URL"])
    relay = TcpRelay(endpoint.hostname, endpoint.port)
    direct = copy.deepcopy(settings.STORAGES)
    through_relay = copy.deepcopy(direct)
    through_relay["default"]["OPTIONS"]["endpoint_url"] = f"http://127.0.0.1:{relay.port}"
    settings.TURBO_STORAGE_DEADLINE_S = 3
    try:
        settings.STORAGES = through_relay  # Django rebuilds default_storage on this change
        relay.down()  # every connection to S3 is reset, as when the server crashed
        started = time.monotonic()
        result = retention.run_retention("schedule")
        assert result.storage_down and result.expired == [] and result.kept == []
        assert relay.refused_while_down > 0 and time.monotonic() - started < 15  # one job tried, not all three
        assert not JobExpiry.objects.filter(job__in=jobs).exists()
        assert all(Job.objects.get(id=job.id).output_video.name for job in jobs)
        relay.up()
        assert sorted(retention.run_retention("schedule").expired) == sorted(str(job.id) for job in jobs)
    finally:
        settings.STORAGES = direct
        relay.close()
    for job in jobs:
        assert not any(default_storage.exists(name) for name in files_of(job))


def test_the_webhooks_service_process_runs_retention(aged):
    """docker/compose.yaml's `webhooks` service (`manage.py run_webhook_worker`) consumes the maintenance queue."""
    import subprocess
    import sys

    from generation import queue
    from tests.django_process import REPO
    from tests.e2e.worker_process import test_database_url as database_url
    from tests.e2e.worker_process import wait_for_other_sessions_to_close

    job = aged()
    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    process = subprocess.Popen([sys.executable, "manage.py", "run_webhook_worker", "--threads", "1"], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = ""
        while "webhook worker ready" not in ready:  # log lines come first
            ready = process.stdout.readline()
            assert ready, "the worker exited before it was ready"
        assert "queues webhooks, maintenance" in ready
        queue.send_retention("schedule")
        wait_until(lambda: JobExpiry.objects.filter(job=job).exists())
        assert not default_storage.exists(storage.output_name(job))
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
        wait_for_other_sessions_to_close()
    assert process.returncode == 0, out
