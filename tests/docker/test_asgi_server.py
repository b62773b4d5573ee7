"""The production web server, started as docker/Dockerfile.web starts it (its CMD, DEBUG off, PostgreSQL, Redis,
S3): open event streams hold no server thread, ordinary requests answer beside them, and an event published for a
job reaches every stream that follows it; `Prefer: wait` requests hold no database connection while they wait."""

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
from tests.factories import delete_job_files, png_bytes, stored_job
from tests.outages.processes import image_web_command
from turbosite import broker

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 8  # twice the threads gunicorn's threaded worker used to get, and twice the pool's connections


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {"DB_POOL_MAX_SIZE": "4", **settings}
        env = child_env(data_dir, DEBUG="0", SECRET_KEY=secrets.token_urlsafe(40), ALLOWED_HOSTS="127.0.0.1",
                        DATABASE_URL=database_url(), REDIS_URL=os.environ["REDIS_URL"],
                        QUEUE_NAMESPACE=os.environ["QUEUE_NAMESPACE"], **settings,
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
        return self.request("GET", path, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        # Behind the TLS proxy, as the image's HEALTHCHECK asks (DEBUG off redirects plain http).
        headers = {"X-Forwarded-Proto": "https", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=kwargs.pop("timeout", 10),
                                **kwargs)

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


POOL = 2  # the web process's database connections
WAITERS = POOL + 3  # Prefer: wait requests held at once, more than the pool


@pytest.fixture
def small_pool_server(tmp_path, django_db_blocker) -> Iterator[Server]:
    running = Server(tmp_path, DB_POOL_MAX_SIZE=str(POOL), DB_CONNECT_TIMEOUT="5",
                     TURBO_PREFER_WAIT_MAX_WAITERS=str(WAITERS), TURBO_MAX_ACTIVE_JOBS="0")
    yield running
    running.stop()
    wait_for_other_sessions_to_close()
    broker.ensure_broker().flush_all()  # the GPU messages of the jobs it created: no worker took them


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


class Waiter(threading.Thread):
    """One program creating a job with `Prefer: wait=N`: records the answer and when it came."""

    def __init__(self, server: Server, token: str, prompt: str, wait_s: int) -> None:
        super().__init__(daemon=True)
        self.server, self.token, self.prompt, self.wait_s = server, token, prompt, wait_s
        self.response: requests.Response | None = None
        self.answered_at = 0.0

    def run(self) -> None:
        self.response = self.server.request(
            "POST", "/api/v1/jobs/", headers={"Authorization": f"Token {self.token}", "Prefer": f"wait={self.wait_s}"},
            files={"image": ("still.png", png_bytes(), "image/png")}, data={"prompt": self.prompt, "num_frames": "5"},
            timeout=self.wait_s + 30)
        self.answered_at = time.monotonic()


def test_prefer_wait_requests_do_not_starve_the_database_pool(small_pool_server, user):
    server = small_pool_server
    token = Token.objects.create(user=user).key
    connection.close()
    until_finished = [Waiter(server, token, f"waits for the end {n}", 40) for n in range(WAITERS - 1)]
    until_deadline = Waiter(server, token, "waits for the deadline", 8)
    waiters = [*until_finished, until_deadline]
    started = time.monotonic()
    for waiter in waiters:
        waiter.start()
    try:
        deadline = time.monotonic() + 15
        while Job.objects.filter(prompt__startswith="waits for").count() < WAITERS:
            assert time.monotonic() < deadline, server.output()
            answered = [(w.response.status_code, w.response.text[:200]) for w in waiters if w.response is not None]
            assert not answered, f"{answered}\n{server.output()}"
            time.sleep(0.1)
        connection.close()
        time.sleep(1.0)  # every waiter is past its create and waiting on its job
        assert all(waiter.response is None for waiter in waiters), "a wait ended before its job did"

        # More waits than the pool has connections, and ordinary requests still answer at once.
        job_ids = dict(Job.objects.filter(prompt__startswith="waits for").values_list("prompt", "id"))
        connection.close()
        for path in ("/api/v1/jobs/?page_size=5", f"/api/v1/jobs/{job_ids['waits for the end 0']}/", "/readyz"):
            asked = time.monotonic()
            response = server.get(path, headers={"Authorization": f"Token {token}"}, timeout=10)
            assert response.status_code == 200, (path, response.status_code, response.text[:300], server.output())
            assert time.monotonic() - asked < 2.0, f"{path} waited for a database connection behind the waits"

        # The job ends: its waits answer at once, with the finished job.
        for waiter in until_finished:
            job = Job.objects.get(id=job_ids[waiter.prompt])
            assert job.claim(worker="test-gpu:0")
            assert job.succeed()
        finished = time.monotonic()
        connection.close()
        for waiter in until_finished:
            waiter.join(15)
            assert waiter.response is not None, f"no answer after the job ended:\n{server.output()}"
            assert waiter.response.status_code == 201, waiter.response.text
            assert waiter.response.headers["Preference-Applied"] == "wait=40"
            assert waiter.response.json()["status"] == "SUCCEEDED"
            assert waiter.answered_at - finished < 1.5, "the wait did not hear the job end"

        # The one whose job never ends answers at its deadline, as GET would.
        until_deadline.join(15)
        assert until_deadline.response is not None and until_deadline.response.status_code == 201
        assert until_deadline.response.headers["Preference-Applied"] == "wait=8"
        assert until_deadline.response.json()["status"] == "QUEUED"
        assert 8.0 <= until_deadline.answered_at - started < 14.0
        assert "Traceback" not in server.output(), server.output()
    finally:
        for waiter in waiters:
            waiter.join(60)
        delete_job_files(list(Job.objects.filter(prompt__startswith="waits for")))
