"""Webhook fixtures: a real HTTP receiver on loopback that answers from a script, and a Dramatiq worker thread on
the "webhooks" queue of this run's Redis namespace."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from generation.webhooks import actors
from tests.factories import enqueued, fresh_throttle_cache  # noqa: F401  (the queue recorded, not sent)
from turbosite import broker


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next scripted reply: a status code, or (seconds to stall, status code).
    Once the script runs out it answers 200."""

    server: ThreadingHTTPServer
    script: list[int | tuple[float, int]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/turbo"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} webhook requests, got {len(self.received)}")


def _handler(receiver_ref: list[Receiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = receiver_ref[0]
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with receiver.lock:
                receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply = receiver.script.pop(0) if receiver.script else 200
            stall, status = reply if isinstance(reply, tuple) else (0.0, reply)
            if stall:
                time.sleep(stall)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:  # a followed redirect would arrive here
            self.do_POST()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    ref: list[Receiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
    server.daemon_threads = True
    ref.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ref[0]
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_settings(settings) -> Any:
    """Loopback receivers allowed, one-second attempts and a quick retry schedule."""
    settings.TURBO_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.TURBO_WEBHOOK_TIMEOUT_S = 1
    settings.TURBO_WEBHOOK_RETRY_SCHEDULE_S = [0.2, 0.2, 0.2]
    return settings


@pytest.fixture
def webhook_worker(webhook_settings) -> Iterator[Any]:
    current = broker.ensure_broker()
    current.flush_all()
    worker = actors.start_worker(threads=2)
    yield worker
    worker.stop(timeout=5_000)
    current.flush_all()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    def wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError("condition not met in time")

    return wait
