"""Start a real GPU worker process (`manage.py run_gpu_worker`, tiny model) on this run's Redis namespace, S3 server
and the live server's test database. Used by the e2e and browser tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if " ready: queue 'gpu'" in line:
                self.ready.set()

    def log(self) -> str:
        return "\n".join(self.lines[-80:])

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def test_database_url() -> str:
    """The live server's database (pytest-django's test_<name>), for a process outside this one."""
    params = connection.settings_dict
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


def start_worker(extra_env: dict[str, str] | None = None) -> WorkerProcess:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": test_database_url(),
        "TURBO_DEFAULT_MODEL": "tiny",
        "TURBO_HEARTBEAT_INTERVAL_S": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
    })
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(extra_env or {})
    process = subprocess.Popen([sys.executable, "manage.py", "run_gpu_worker"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    worker = WorkerProcess(process)
    threading.Thread(target=worker._pump, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not worker.ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            pytest.fail(f"the GPU worker did not become ready:\n{worker.log()}")
    return worker


def wait_for_other_sessions_to_close(timeout: float = 10) -> None:
    """PostgreSQL ends a dead client's session a moment after the process exits; dropping the test database
    before then fails, so wait for the worker's sessions to go."""
    deadline = time.monotonic() + timeout
    try:
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid <> pg_backend_pid()")
                if cursor.fetchone()[0] == 0:
                    return
                time.sleep(0.1)
    finally:
        # With Playwright's event loop about, this may be a connection of its own that nobody else would close.
        connection.close()


# -- fixtures (imported by the conftest.py of each suite that needs them) --------------------------------------

@pytest.fixture(scope="module")
def gpu_worker(django_db_setup, django_db_blocker) -> Iterator[WorkerProcess]:
    with django_db_blocker.unblock():
        worker = start_worker()
    yield worker
    code = worker.stop()
    with django_db_blocker.unblock():
        wait_for_other_sessions_to_close()
    assert code == 0, f"the worker exited with {code}:\n{worker.log()}"


@pytest.fixture(scope="session")
def live_server(django_db_setup, live_server):
    """pytest-django's live server, set up after the test database so that it is stopped (and its connection
    closed) before the database is dropped."""
    return live_server
