"""Real processes and services for the crash and outage tests: GPU-worker processes, a gunicorn web server, a
private redis-server, and a TCP relay that plays an S3 outage. Each test gets its own Redis namespace and ports,
so nothing here touches the machine's shared Redis queue of other runs, or its PostgreSQL server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.db import connection

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll until `condition()` is truthy and return it; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def child_env(**overrides: str) -> dict[str, str]:
    """The test process's environment, pointed at the test database (pytest-django's test_ copy) and a fresh
    Redis namespace, plus `overrides`."""
    db = connection.settings_dict
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "turbosite.settings",
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "QUEUE_NAMESPACE": f"hardening-{uuid.uuid4().hex[:12]}",
        "TURBO_HEARTBEAT_INTERVAL_S": "1",
        "TURBO_PROGRESS_WRITE_INTERVAL_MS": "0",
        "LOG_LEVEL": "INFO",
    })
    env.update(overrides)
    return env


class Process:
    """A child process in its own session (so signals reach it and nothing else), output kept in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=10)
        self._log.close()


def start_worker(tmp_path: Path, env: dict[str, str], name: str = "worker", *args: str) -> Process:
    process = Process([sys.executable, "-m", "tests.outages.worker_main", *args], env, tmp_path / f"{name}.log")
    wait_for(lambda: "ready: queue" in process.output() or process.popen.poll() is not None, 60,
             f"{name} to start")
    assert process.popen.poll() is None, f"{name} exited early:\n{process.output()}"
    return process


def image_web_command(port: int, workers: int = 1) -> list[str]:
    """docker/Dockerfile.web's CMD as the container's shell would run it, with `workers` processes, on loopback."""
    text = (REPO / "docker" / "Dockerfile.web").read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    assert command[:2] == ["sh", "-c"] and command[2].startswith("exec gunicorn turbosite.asgi:application ")
    line = (command[2].removeprefix("exec ").replace("0.0.0.0:${PORT}", f"127.0.0.1:{port}")
            .replace("${WEB_CONCURRENCY:-3}", str(workers)))
    argv = shlex.split(line)
    assert "${" not in line, f"a variable the test does not set: {line}"
    return [str(Path(sys.executable).parent / argv[0]), *argv[1:]]


def compose_web_pool_size() -> str:
    """The database pool docker/compose.yaml gives each web process (its default)."""
    text = (REPO / "docker" / "compose.yaml").read_text()
    return re.search(r"DB_POOL_MAX_SIZE: \$\{DB_POOL_MAX_SIZE:-(\d+)\}", text).group(1)


def start_web(tmp_path: Path, env: dict[str, str], production_workers: int = 0) -> tuple[Process, str]:
    """A web server on a free port: a small threaded gunicorn, or with `production_workers` the production image's
    own command (ASGI) with that many processes and the database pool docker/compose.yaml gives it."""
    port = free_port()
    if production_workers:
        env = {"DB_POOL_MAX_SIZE": compose_web_pool_size(), **env}
    args = (image_web_command(port, production_workers) if production_workers else
            [sys.executable, "-m", "gunicorn", "turbosite.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "2", "--timeout", "60"])
    process = Process(args, env, tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.popen.poll() is not None:
            raise AssertionError(f"web server exited:\n{process.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(answers, 60, "the web server to listen")
    return process, base


class RedisServer:
    """Our own redis-server on a free port: stopping it is an outage for this test alone."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = Process(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.tmp_path)],
                               dict(os.environ), self.tmp_path / f"redis-{self.port}.log")
        wait_for(self.ping, 20, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


class TcpRelay:
    """Forwards a local port to `target`. `down()` makes it accept and drop every connection (the service is
    broken), `up()` restores it; `refused_while_down` counts the connections dropped, i.e. the client's tries."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_down = False
        self.refused_while_down = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_down:
                self.refused_while_down += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: what a crashed server looks like to the client
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.is_down:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
