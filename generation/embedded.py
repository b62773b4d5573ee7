"""The embedded default (no REDIS_URL): nothing outside the web process can see the in-process broker's queue, so
the web process runs one worker thread and the reaper itself.

`GenerationConfig.ready()` connects `start_on_request` to request_started: the first request served by a real
WSGI handler starts them; migrate, shell and the test client never do.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
from django.conf import settings

from generation import reaper
from turbosite import broker

log = logging.getLogger(__name__)

_lock = threading.Lock()
_worker: dramatiq.Worker | None = None
_webhook_worker: dramatiq.Worker | None = None
_maintenance_worker: dramatiq.Worker | None = None
_presence: threading.Thread | None = None


def start() -> dramatiq.Worker | None:
    """Start the in-process worker threads (jobs, webhook deliveries, maintenance) and the reaper once (embedded default only).
    Returns the job worker or None."""
    global _worker, _webhook_worker, _maintenance_worker, _presence
    with _lock:
        if _worker is not None:
            return _worker
        if not broker.is_embedded():
            return None
        # Imported here, not at the top: the actors bring the GPU stack (torch), which a web process only loads
        # when it runs jobs itself.
        from generation import actors, worker
        from generation.lifecycle import actors as maintenance_actors
        from generation.webhooks import actors as webhook_actors

        _presence = worker.Presence()  # tells the pages and the API which models this process can run
        _presence.start()
        _worker = actors.start_worker(threads=1)
        # Deliveries get threads of their own: a slow receiver never waits behind a video, nor a video behind it.
        _webhook_worker = webhook_actors.start_worker(threads=2)
        _maintenance_worker = maintenance_actors.start_worker(threads=1)  # retention, sent by the reaper's round
        reaper.start_reaper_thread()
        # The previous process's in-memory queue died with it: queued rows get a fresh message.
        reaper.resend_queued_jobs()
        log.info("embedded worker thread started (in-process broker)")
        return _worker


def embedded_worker() -> dramatiq.Worker | None:
    return _worker


def stop(timeout_ms: int = 10_000) -> None:
    global _worker, _webhook_worker, _maintenance_worker, _presence
    with _lock:
        for running in (_worker, _webhook_worker, _maintenance_worker):
            if running is not None:
                running.stop(timeout=timeout_ms)
        if _presence is not None:
            _presence.stop()
        _worker = _webhook_worker = _maintenance_worker = _presence = None


def start_on_request(sender: type, **kwargs: Any) -> None:
    """request_started receiver: the first request served by a real WSGI handler starts the embedded worker.

    The Django test client's handler is skipped, so unit tests never get a background worker by accident.
    """
    if _worker is not None or not settings.TURBO_EMBEDDED_WORKER:
        return
    from django.test.client import ClientHandler

    if isinstance(sender, type) and issubclass(sender, ClientHandler):
        return
    try:
        start()
    except Exception:
        log.exception("could not start the embedded worker thread")
