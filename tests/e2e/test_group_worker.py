"""One job across a group of GPU processes (manage.py run_gpu_worker with TURBO_GPUS_PER_JOB=2, ranks on the CPU
with gloo, the real tiny model): a rank killed mid-job fails the job with a reason, nothing stays RUNNING, the group
starts again and serves the next job."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from generation.models import Job
from tests.e2e import worker_process
from tests.e2e.test_worker_process import api, poll, submit  # noqa: F401  (api is a fixture)
from tests.e2e.worker_process import WorkerProcess, start_worker

pytestmark = pytest.mark.django_db(transaction=True)

GROUP_ENV = {"TURBO_GPUS_PER_JOB": "2", "TURBO_DEVICE": "cpu", "TURBO_REAPER_INTERVAL_S": "3600"}


def rank_pids(worker: WorkerProcess) -> list[list[int]]:
    """The rank pids of every group the supervisor started so far, in order."""
    return [[int(pid) for pid in match.group(1).split(", ")]
            for line in list(worker.lines) if (match := re.search(r"group of 2 started: rank pids ([\d, ]+)", line))]


def wait_for(condition, timeout: float, what: str, worker: WorkerProcess):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{worker.log()}"
        time.sleep(0.1)
    return value


def test_a_rank_killed_mid_job_fails_the_job_and_the_group_restarts(api, monkeypatch):  # noqa: F811
    # Three processes load torch and the model before the group is ready: more than one worker takes.
    monkeypatch.setattr(worker_process, "READY_TIMEOUT_S", 2 * worker_process.READY_TIMEOUT_S)
    worker = start_worker(GROUP_ENV)
    try:
        (leader, follower), = rank_pids(worker)
        created = submit(api, num_frames=17, num_steps=2)
        running = poll(api, created["id"], {"RUNNING", "SUCCEEDED", "FAILED", "CANCELED"}, interval=0.05)
        assert running["status"] == "RUNNING", running
        os.kill(follower, signal.SIGKILL)

        failed = poll(api, created["id"], {"SUCCEEDED", "FAILED", "CANCELED"})
        assert failed["status"] == "FAILED", f"{failed}\n{worker.log()}"
        # Rank 0 (its collective broke) or the supervisor (it saw the rank die) wrote it; both say what happened.
        assert "of the 2 GPU processes" in failed["error"] and "restarts" in failed["error"], failed["error"]
        assert "Retry" in failed["error"]
        assert not Job.objects.filter(status=Job.Status.RUNNING).exists()

        groups = wait_for(lambda: len(rank_pids(worker)) >= 2 and rank_pids(worker), 120, "a new group", worker)
        assert leader not in groups[1] and follower not in groups[1]
        for pid in (leader, follower):  # the old group is gone, rank 0 included
            wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}") or _is_zombie(p), 20, f"pid {pid} to end", worker)

        wait_for(lambda: sum(" ready: queue 'gpu'" in line for line in list(worker.lines)) >= 2,
                 worker_process.READY_TIMEOUT_S, "the new group to be ready", worker)
        after = submit(api, num_frames=5, num_steps=2)
        done = poll(api, after["id"], {"SUCCEEDED", "FAILED", "CANCELED"})
        assert done["status"] == "SUCCEEDED", f"{done}\n{worker.log()}"
        assert Job.objects.get(id=after["id"]).gpu_name == "2 x cpu"
    finally:
        code = worker.stop()
    assert code == 0, worker.log()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")
    except OSError:
        return True
