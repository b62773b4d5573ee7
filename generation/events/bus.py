"""Where job changes are announced: a Redis channel per job when REDIS_URL is set (the worker publishes, any web
process listens), else an in-process fan-out (the embedded worker thread and the web share a process).

A message only says "job X changed (status|progress)"; listeners read the job from the database, so what they
send is always the current, ownership-checked state, and a lost message costs nothing but a little delay (the
stream re-reads the job at every heartbeat anyway).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from typing import Any

from django.conf import settings

from turbosite.redis_clients import shared_client

log = logging.getLogger(__name__)

_local_lock = threading.Lock()
_local: dict[str, set[queue.Queue[str]]] = defaultdict(set)


def channel(job_id: Any) -> str:
    return f"{settings.QUEUE_NAMESPACE}:job-events:{job_id}"


def publish(job_id: Any, kind: str) -> None:
    if settings.REDIS_URL:
        shared_client(settings.REDIS_URL, 2).publish(channel(job_id), kind)
        return
    with _local_lock:
        listeners = list(_local.get(str(job_id), ()))
    for listener in listeners:
        listener.put_nowait(kind)


def on_job_changed(sender: Any, *, job: Any, kind: str, **_: Any) -> None:
    try:
        publish(job.id, kind)
    except Exception:  # the bus is a convenience; the job must never suffer for it
        log.warning("job %s: could not publish a %s event", job.id, kind, exc_info=True)


class LocalSubscription:
    """In-process listener for one job (embedded default)."""

    def __init__(self, job_id: Any) -> None:
        self.key = str(job_id)
        self.queue: queue.Queue[str] = queue.Queue()
        with _local_lock:
            _local[self.key].add(self.queue)

    def get(self, timeout: float) -> str | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        with _local_lock:
            _local[self.key].discard(self.queue)
            if not _local[self.key]:
                _local.pop(self.key, None)


class RedisSubscription:
    """Redis pub/sub listener for one job (blocking; for WSGI servers)."""

    def __init__(self, job_id: Any) -> None:
        import redis

        self.client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel(job_id))

    def get(self, timeout: float) -> str | None:
        message = self.pubsub.get_message(timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        data = message["data"]
        return data.decode() if isinstance(data, bytes) else str(data)

    def close(self) -> None:
        try:
            self.pubsub.close()
        finally:
            self.client.close()


class AsyncRedisSubscription:
    """Redis pub/sub listener for one job on the event loop (for ASGI servers)."""

    def __init__(self, job_id: Any) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.job_id = job_id

    async def start(self) -> None:
        await self.pubsub.subscribe(channel(self.job_id))

    async def get(self, timeout: float) -> str | None:
        message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        data = message["data"]
        return data.decode() if isinstance(data, bytes) else str(data)

    async def close(self) -> None:
        try:
            await self.pubsub.aclose()
        finally:
            await self.client.aclose()


def subscribe(job_id: Any) -> LocalSubscription | RedisSubscription:
    return RedisSubscription(job_id) if settings.REDIS_URL else LocalSubscription(job_id)
