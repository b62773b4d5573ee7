"""The Dramatiq broker: Redis when settings.REDIS_URL is set, else an in-process StubBroker.

This module only configures the broker; it knows nothing of jobs. `generation.queue` sends to it,
`generation.actors` declares the actor on it (an actor binds to whichever broker is global at declaration time, so
`ensure_broker()` runs first), and `generation.embedded` runs the in-process worker on the embedded default.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
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

# The queues this deployment runs. GPU jobs and webhook deliveries never share one: a delivery must not wait behind
# a minutes-long video, nor a video behind a slow receiver.
GPU_QUEUE = "gpu"
WEBHOOK_QUEUE = "webhooks"
# Housekeeping (retention): storage deletes, never on a GPU's time.
MAINTENANCE_QUEUE = "maintenance"

_lock = threading.RLock()
_broker: dramatiq.Broker | None = None
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


class OnWorkerThreadBoot(Middleware):
    """Runs `work` once, in the first Dramatiq worker thread to boot, before that thread takes a message.

    For work whose effect is per thread and must precede the jobs: the GPU worker's warm-up, since PyTorch keeps
    cuDNN's tuned convolution plans per thread and the worker thread is the one that runs the jobs. The queue's
    consumer may already hold the one message it prefetches meanwhile; it waits for the work like any later one."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._work = work
        self._claim = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: threading.Thread) -> None:
        with self._claim:
            if self._claimed:
                return
            self._claimed = True
        try:
            self._result = self._work()
        except BaseException as exc:  # handed to wait(), in the thread that started the worker
            self._error = exc
        finally:
            self._done.set()

    def wait(self, stop: threading.Event | None = None) -> Any:
        """The work's result once it ran (its exception raised here); None if `stop` is set first."""
        while not self._done.wait(0.5):  # a timeout, so a signal handler on the main thread gets to run
            if stop is not None and stop.is_set():
                return None
        if self._error is not None:
            raise self._error
        return self._result


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


def queue_depth(queue_name: str) -> int | None:
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


def waiting_message_args(queue_name: str = GPU_QUEUE) -> list[str] | None:
    """The first argument of each message waiting in the queue, oldest first (for the "gpu" queue: job ids);
    None when the broker cannot be read. Messages a worker already took are not in it."""
    broker = ensure_broker()
    try:
        if isinstance(broker, RedisBroker):
            key = f"{broker.namespace}:{queue_name}"
            ids = broker.client.lrange(key, 0, -1)
            encoded = broker.client.hmget(f"{key}.msgs", ids) if ids else []
        else:
            queue = broker.queues.get(queue_name)
            with queue.mutex if queue is not None else contextlib.nullcontext():
                encoded = list(queue.queue) if queue is not None else []
        args = []
        for data in encoded:
            if data is None:
                continue  # acknowledged between the two reads
            message = dramatiq.Message.decode(data)
            args.append(str(message.args[0]) if message.args else "")
        return args
    except Exception:  # a probe: any failure means "unknown"
        log.warning("could not read the messages of queue %r", queue_name, exc_info=True)
        return None


def message_key(message: dramatiq.Message) -> str:
    """The id under which the broker keeps `message` until a worker acknowledges it (Redis: its per-enqueue id)."""
    return str(message.options.get("redis_message_id") or message.message_id)


def messages_present(keys: list[str], queue_name: str = GPU_QUEUE) -> set[str] | None:
    """Which of `keys` (message_key values) the broker still holds: waiting, delayed or taken by a worker and not
    yet acknowledged (Dramatiq's Redis broker keeps a message's body in `<queue>.msgs` until the ack). None when
    this cannot be known: the in-process broker, or Redis unreachable."""
    broker = ensure_broker()
    if not isinstance(broker, RedisBroker) or not keys:
        return None if not isinstance(broker, RedisBroker) else set()
    try:
        pipe = broker.client.pipeline(transaction=False)
        for key in keys:
            for name in (queue_name, f"{queue_name}.DQ"):
                pipe.hexists(f"{broker.namespace}:{name}.msgs", key)
        found = pipe.execute()
    except Exception:
        log.warning("could not check which messages the broker holds", exc_info=True)
        return None
    return {key for index, key in enumerate(keys) if found[2 * index] or found[2 * index + 1]}


def enqueue_first(messages: list[dramatiq.Message]) -> list[dramatiq.Message]:
    """Put `messages` at the head of their queue, in the given order (so they are the next ones taken). The Redis
    broker only appends, so this writes its two keys the way its enqueue script does, at the other end of the list.
    Elsewhere (in process) they are appended. Returns the messages as sent (with their broker ids)."""
    broker = ensure_broker()
    if not isinstance(broker, RedisBroker):
        return [broker.enqueue(message) for message in messages]
    sent = [message.copy(options={"redis_message_id": str(uuid.uuid4())}) for message in messages]
    pipe = broker.client.pipeline(transaction=True)
    for message in reversed(sent):
        queue = f"{broker.namespace}:{message.queue_name}"
        pipe.hset(f"{queue}.msgs", message.options["redis_message_id"], message.encode())
        pipe.lpush(queue, message.options["redis_message_id"])
    pipe.execute()
    return sent


def ping() -> bool:
    """Whether the broker answers (always true in process)."""
    broker = ensure_broker()
    if isinstance(broker, RedisBroker):
        try:
            return bool(broker.client.ping())
        except Exception:
            return False
    return True


def start_worker(*, queues: set[str], threads: int = 1, on_boot: OnWorkerThreadBoot | None = None) -> dramatiq.Worker:
    """Start a Dramatiq worker in this process on `queues`. The caller imports the actors of those queues first
    (generation.actors, generation.webhooks.actors): a message is run by the actor declared under its name.
    `on_boot` runs its work in the first worker thread before that thread takes a message."""
    global _booted
    broker = ensure_broker()
    if on_boot is not None:
        broker.add_middleware(on_boot)
    with _lock:
        # The dramatiq CLI emits process_boot; the time-limit watchdog only starts on it (once per process is enough).
        if not _booted:
            broker.emit_after("process_boot")
            _booted = True
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=1000)
    # Take only what the threads can run now: a message prefetched behind a minutes-long job would wait for this GPU
    # while another worker's GPU sits idle.
    worker.queue_prefetch = threads
    worker.start()
    return worker
