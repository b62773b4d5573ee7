"""After crashes: a worker starting removes the job folders (partial mp4s) that killed workers of its host left,
never those of workers still running; and the reaper's log names the worker it gave up on."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from generation import reaper, worker
from generation.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _job_folder(root: Path, pid: int) -> Path:
    folder = root / f"{worker.TEMP_PREFIX}{pid}-abc123"
    folder.mkdir()
    (folder / "video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 partial")
    return folder


def test_folders_of_dead_workers_go_and_those_of_live_ones_stay(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _job_folder(tmp_path, _dead_pid())
        live = _job_folder(tmp_path, sleeper.pid)
        mine = _job_folder(tmp_path, os.getpid())
        unrelated = tmp_path / "someone-else-123"
        unrelated.mkdir()

        assert worker.remove_stale_temp_folders(str(tmp_path)) == [str(dead)]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not dead.exists()
    assert live.exists() and mine.exists() and unrelated.exists()


def test_a_job_encodes_in_a_folder_named_after_its_process(make_job, fake_loader, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[str] = []
    fake_loader.options = {"on_step": lambda step: seen.extend(p.name for p in tmp_path.iterdir())}
    assert worker.execute_job(str(make_job().id)) == Job.Status.SUCCEEDED
    assert seen and all(name.startswith(f"{worker.TEMP_PREFIX}{os.getpid()}-") for name in seen)
    assert list(tmp_path.iterdir()) == []  # gone once the job ended


def test_the_gpu_worker_command_cleans_up_before_taking_jobs(monkeypatch, settings):
    from django.core.management import CommandError, call_command

    cleaned: list[bool] = []
    monkeypatch.setattr(worker, "remove_stale_temp_folders", lambda folder=None: cleaned.append(True) or [])
    monkeypatch.setattr("turbosite.broker.ping", lambda: False)  # stop right after the start-up checks
    with pytest.raises(CommandError):
        call_command("run_gpu_worker", "--preload", "none")
    assert cleaned == []  # nothing is touched when the worker cannot start at all
    monkeypatch.setattr("turbosite.broker.ping", lambda: True)
    monkeypatch.setattr("generation.actors.start_worker", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        call_command("run_gpu_worker", "--preload", "none", "--no-reaper")
    assert cleaned == [True]
    # A worker that failed to start stops reporting itself alive.
    assert not [t for t in threading.enumerate() if t.name == "worker-presence" and t.is_alive()]


def _running(job: Job, *, attempts: int) -> Job:
    beat = timezone.now() - timedelta(seconds=600)
    Job.objects.filter(id=job.id).update(status=Job.Status.RUNNING, attempts=attempts, worker="gpu-host:4242:gpu0",
                                         started_at=beat, heartbeat_at=beat)
    job.refresh_from_db()
    return job


def test_reaper_log_lines_name_the_worker_it_gave_up_on(make_job, settings, monkeypatch, caplog):
    monkeypatch.setattr("generation.queue.enqueue_job", lambda job_id: None)
    settings.TURBO_MAX_ATTEMPTS = 2
    requeued = _running(make_job(), attempts=1)
    failed = _running(make_job(), attempts=2)
    with caplog.at_level(logging.WARNING, logger="generation.reaper"):
        reaper.reap_stale_jobs(stale_after_s=60)
    lines = {record.getMessage() for record in caplog.records}
    assert any(str(requeued.id) in line and "gpu-host:4242:gpu0" in line for line in lines), lines
    assert any(str(failed.id) in line and "gpu-host:4242:gpu0" in line for line in lines), lines
