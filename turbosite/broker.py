"""The Dramatiq broker: Redis when settings.REDIS_URL is set, else an in-process StubBroker.

`ensure_broker()` must run before any actor is declared (generation/actors.py calls it at import), because an actor
binds to whichever broker is global at declaration time.

On the embedded default (no Redis) nothing outside the web process can see the StubBroker's queue, so the web
process itself runs one worker thread (`start_embedded_worker`), started lazily by the first real HTTP request or
explicitly; migrate, shell and the test client never start it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
from django.conf import settings
from django.db import close_old_connections
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"
WEBHOOK_QUEUE = "webhooks"  # webhook deliveries: never behind a GPU job (generation/webhooks/actors.py)

_lock = threading.RLock()
_broker: dramatiq.Broker | None = None
_embedded_worker: dramatiq.Worker | None = None
_embedded_webhook_worker: dramatiq.Worker | None = None
_booted = False


class DjangoConnections(Middleware):
    """Each message starts and ends with usable database connections (stale ones from a long idle are closed)."""

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        close_old_connections()

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        close_old_connections()

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: threading.Thread) -> None:
        from django.db import connections

        connections.close_all()


def _middleware() -> list[Middleware]:
    # Retries stays so the actor option max_retries=0 is honoured explicitly (job retries are our own business).
    return [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries(max_retries=0),
            DjangoConnections()]


def build_broker() -> dramatiq.Broker:
    if settings.REDIS_URL:
        return RedisBroker(url=settings.REDIS_URL, namespace=settings.QUEUE_NAMESPACE, middleware=_middleware())
    return StubBroker(middleware=_middleware())


def ensure_broker() -> dramatiq.Broker:
    """Create the broker once per process and make it Dramatiq's global broker."""
    global _broker
    with _lock:
        if _broker is None:
            _broker = build_broker()
            dramatiq.set_broker(_broker)
            log.info("dramatiq broker: %s", describe_broker(_broker))
        return _broker


def describe_broker(broker: dramatiq.Broker | None = None) -> str:
    broker = broker or ensure_broker()
    if isinstance(broker, RedisBroker):
        return f"redis (namespace {broker.namespace!r})"
    return "in-process"


def is_embedded() -> bool:
    return isinstance(ensure_broker(), StubBroker)


def queue_depth(queue_name: str = GPU_QUEUE) -> int | None:
    """Messages waiting in the broker's queue (not yet taken by a worker); None when the broker is unreachable."""
    broker = ensure_broker()
    try:
        if isinstance(broker, RedisBroker):
            return int(broker.client.llen(f"{broker.namespace}:{queue_name}"))
        queue = broker.queues.get(queue_name)
        return queue.qsize() if queue is not None else 0
    except Exception:  # a probe: any failure means "unknown"
        log.warning("could not read the depth of queue %r", queue_name, exc_info=True)
        return None


def ping() -> bool:
    """Whether the broker answers (always true in process)."""
    broker = ensure_broker()
    if isinstance(broker, RedisBroker):
        try:
            return bool(broker.client.ping())
        except Exception:
            return False
    return True


def start_worker(*, queues: set[str] | None = None, threads: int = 1) -> dramatiq.Worker:
    """Start a Dramatiq worker in this process for the given queues (the actors must be imported first)."""
    # Importing declares run_job ("gpu") and deliver_webhook ("webhooks") on the broker.
    import generation.actors
    import generation.webhooks.actors  # noqa: F401

    global _booted
    broker = ensure_broker()
    with _lock:
        # The dramatiq CLI emits process_boot; the time-limit watchdog only starts on it (once per process is enough).
        if not _booted:
            broker.emit_after("process_boot")
            _booted = True
    worker = dramatiq.Worker(broker, queues=queues or {GPU_QUEUE}, worker_threads=threads, worker_timeout=1000)
    # Take only what the threads can run now: a message prefetched behind a minutes-long job would wait for this GPU
    # while another worker's GPU sits idle.
    worker.queue_prefetch = threads
    worker.start()
    return worker


def start_embedded_worker() -> dramatiq.Worker | None:
    """Start the in-process worker thread and reaper once (embedded default only). Returns the worker or None."""
    global _embedded_worker, _embedded_webhook_worker
    with _lock:
        if _embedded_worker is not None:
            return _embedded_worker
        if not is_embedded():
            return None
        _embedded_worker = start_worker(threads=1)
        # Deliveries get threads of their own: a slow receiver never waits behind a video, nor a video behind it.
        _embedded_webhook_worker = start_worker(queues={WEBHOOK_QUEUE}, threads=2)
        from generation.reaper import resend_queued_jobs, start_reaper_thread

        start_reaper_thread()
        # The previous process's in-memory queue died with it: queued rows get a fresh message.
        resend_queued_jobs()
        log.info("embedded worker thread started (in-process broker)")
        return _embedded_worker


def embedded_worker() -> dramatiq.Worker | None:
    return _embedded_worker


def stop_embedded_worker(timeout_ms: int = 10_000) -> None:
    global _embedded_worker, _embedded_webhook_worker
    with _lock:
        if _embedded_worker is not None:
            _embedded_worker.stop(timeout=timeout_ms)
            _embedded_worker = None
        if _embedded_webhook_worker is not None:
            _embedded_webhook_worker.stop(timeout=timeout_ms)
            _embedded_webhook_worker = None


def start_embedded_worker_on_request(sender: type, **kwargs: Any) -> None:
    """request_started receiver: the first request served by a real WSGI handler starts the embedded worker.

    The Django test client's handler is skipped, so unit tests never get a background worker by accident.
    """
    if _embedded_worker is not None or not settings.TURBO_EMBEDDED_WORKER:
        return
    from django.test.client import ClientHandler

    if isinstance(sender, type) and issubclass(sender, ClientHandler):
        return
    try:
        start_embedded_worker()
    except Exception:
        log.exception("could not start the embedded worker thread")
