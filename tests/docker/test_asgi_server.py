"""The production web server, started as docker/Dockerfile.web starts it (its CMD, DEBUG off, PostgreSQL, Redis,
S3): open event streams hold no server thread, ordinary requests answer beside them, and an event published for a
job reaches every stream that follows it."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.db import connection
from rest_framework.authtoken.models import Token

from generation import storage
from generation.models import Job
from tests.django_process import child_env
from tests.e2e.worker_process import test_database_url as database_url
from tests.e2e.worker_process import wait_for_other_sessions_to_close
from tests.factories import delete_job_files, stored_job
from tests.outages.processes import image_web_command

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 8  # twice the threads gunicorn's threaded worker used to get, and twice the pool's connections


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = child_env(data_dir, DEBUG="0", SECRET_KEY=secrets.token_urlsafe(40), ALLOWED_HOSTS="127.0.0.1",
                        DATABASE_URL=database_url(), REDIS_URL=os.environ["REDIS_URL"],
                        QUEUE_NAMESPACE=os.environ["QUEUE_NAMESPACE"], DB_POOL_MAX_SIZE="4",
                        **{k: v for k, v in os.environ.items() if k.startswith("S3_")})
        self.log = (data_dir / "server.log").open("w+")
        collect = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=120)
        assert collect.returncode == 0, collect.stderr
        self.process = subprocess.Popen(image_web_command(self.port), cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.output()}"
            try:
                if self.get("/healthz").status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        pytest.fail(f"the server did not answer /healthz within 60 s:\n{self.output()}")

    def get(self, path: str, **kwargs) -> requests.Response:
        # Behind the TLS proxy, as the image's HEALTHCHECK asks (DEBUG off redirects plain http).
        headers = {"X-Forwarded-Proto": "https", **kwargs.pop("headers", {})}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def server(tmp_path, django_db_blocker) -> Iterator[Server]:
    running = Server(tmp_path)
    yield running
    running.stop()
    wait_for_other_sessions_to_close()


class Stream(threading.Thread):
    """One EventSource-like reader: collects event names until the stream ends."""

    def __init__(self, server: Server, path: str, token: str) -> None:
        super().__init__(daemon=True)
        self.response = server.get(path, headers={"Authorization": f"Token {token}", "Accept": "text/event-stream"},
                                   stream=True, timeout=30)
        self.events: list[tuple[str, dict]] = []
        self.first = threading.Event()

    def run(self) -> None:
        name = ""
        for line in self.response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                self.events.append((name, json.loads(line.removeprefix("data: "))))
                self.first.set()
        self.first.set()


def test_streams_hold_no_thread_and_events_reach_them(server, user):
    job = stored_job(user, Job.Status.RUNNING)
    token = Token.objects.create(user=user).key
    connection.close()  # the server's requests must not wait on a transaction of ours
    try:
        streams = [Stream(server, f"/api/v1/jobs/{job.id}/events", token) for _ in range(STREAMS)]
        for stream in streams:
            assert stream.response.status_code == 200, server.output()
            assert stream.response.headers["Content-Type"].startswith("text/event-stream")
            stream.start()
        for stream in streams:
            assert stream.first.wait(15), f"no first event:\n{server.output()}"
            assert stream.events[0][0] == "status"

        # Every stream is open, in one worker process: ordinary requests still answer at once.
        for path, headers in (("/healthz", {}), (f"/api/v1/jobs/{job.id}/", {"Authorization": f"Token {token}"}),
                              ("/api/v1/jobs/?page_size=5", {"Authorization": f"Token {token}"})):
            started = time.monotonic()
            response = server.get(path, headers=headers, timeout=5)
            assert response.status_code == 200, (path, response.text[:300])
            assert time.monotonic() - started < 2.0, f"{path} waited behind the streams"
        assert server.get(f"/api/v1/jobs/{job.id}/", headers={"Authorization": f"Token {token}"}).json()["id"] \
            == str(job.id)
        static = re.search(r'href="(/static/css/[^"]+\.css)"', server.get("/accounts/login/").text)
        assert static, "the login page links its stylesheet"
        css = server.get(static.group(1))
        assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css") and css.content

        # The worker's announcements (Redis pub/sub, as the GPU worker sends them) reach every stream.
        assert Job.objects.get(id=job.id).report_progress(progress=0.5, stage="denoise")
        connection.close()
        deadline = time.monotonic() + 10  # well before the 15 s heartbeat's re-read: pub/sub brought it
        while not all(any(name == "progress" for name, _ in s.events) for s in streams):
            assert time.monotonic() < deadline, [[name for name, _ in s.events] for s in streams]
            time.sleep(0.05)
        assert all(data["percent"] == 50.0 for s in streams for name, data in s.events if name == "progress")
        assert Job.objects.get(id=job.id).succeed(output_video=storage.output_name(job),
                                                  poster=storage.poster_name(job))
        connection.close()
        for stream in streams:
            stream.join(20)
            assert not stream.is_alive(), "the stream did not end after completed"
            names = [name for name, _ in stream.events]
            assert names[0] == "status" and names[-1] == "completed", names
            assert stream.events[-1][1]["status"] == "SUCCEEDED"
        assert "Traceback" not in server.output(), server.output()
        assert "synchronous iterators" not in server.output()
    finally:
        delete_job_files([job])
