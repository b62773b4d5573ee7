"""What the long-running worker commands (run_gpu_worker, run_webhook_worker) share: they need the Redis broker,
and they run until SIGTERM or Ctrl-C, then stop their threads in order and exit 0."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import IO

from django.conf import settings
from django.core.management.base import CommandError

from turbosite import broker


def require_broker(without_redis: str) -> None:
    """CommandError unless REDIS_URL is set and answers; `without_redis` says who does the work on the embedded
    default instead."""
    if not settings.REDIS_URL:
        raise CommandError(f"REDIS_URL is not set: {without_redis}")
    if not broker.ping():
        raise CommandError(f"the Redis broker at REDIS_URL does not answer ({broker.describe_broker()})")


def stop_signals() -> threading.Event:
    """An event that SIGTERM and Ctrl-C set instead of killing the process. Installed before the worker threads
    start, so a stop that comes during start-up still shuts them down in order."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def serve_until(stop: threading.Event, out: IO[str], ready: str, shut_down: Callable[[], None]) -> None:
    """Say `ready` (deploy scripts and tests wait for that line), wait for `stop`, then say so and `shut_down`."""
    out.write(ready)
    out.flush()
    try:
        while not stop.wait(1.0):  # a timeout, so the signal handler gets to run on the main thread
            pass
    finally:
        out.write("shutting down")
        out.flush()
        shut_down()
