"""Deployment-wide "only one" for background tasks that several processes schedule (every GPU worker's reaper, the
embedded web process): a Redis key when REDIS_URL is set, a process-local equivalent on the embedded default (one
process is the whole deployment there).

- `claim_period(name, seconds)`: true for one caller per period (SET NX with an expiry): "send the message once".
- `single_flight(name, ttl_s)`: a non-blocking lock held while a task runs; expires after `ttl_s` if its holder
  dies, so a killed process blocks the task for at most that long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from turbosite.redis_clients import shared_client

log = logging.getLogger(__name__)

_local_lock = threading.Lock()
_local_periods: dict[str, float] = {}
_local_held: set[str] = set()


def _key(name: str) -> str:
    return f"{settings.QUEUE_NAMESPACE}:lock:{name}"


def _redis() -> Any:
    return shared_client(settings.REDIS_URL, 5)


def claim_period(name: str, seconds: float) -> bool:
    if settings.REDIS_URL:
        return bool(_redis().set(_key(f"period:{name}"), "1", nx=True, px=max(1, int(seconds * 1000))))
    with _local_lock:
        now = time.monotonic()
        if _local_periods.get(name, float("-inf")) > now:
            return False
        _local_periods[name] = now + seconds
        return True


@contextmanager
def single_flight(name: str, ttl_s: float) -> Iterator[bool]:
    """Yields whether this caller holds the lock (False: someone else runs the task now; do nothing)."""
    if settings.REDIS_URL:
        from redis.exceptions import LockError

        lock = _redis().lock(_key(name), timeout=ttl_s, blocking=False)
        held = bool(lock.acquire())
        try:
            yield held
        finally:
            if held:
                try:
                    lock.release()
                except LockError:  # it expired while we ran: someone may hold it now, which is theirs to release
                    log.warning("lock %s expired before its task ended (ttl %s s)", name, ttl_s)
        return
    with _local_lock:
        held = name not in _local_held
        _local_held.add(name)
    try:
        yield held
    finally:
        if held:
            with _local_lock:
                _local_held.discard(name)


def forget_local() -> None:
    """Tests: clear the process-local periods and locks."""
    with _local_lock:
        _local_periods.clear()
        _local_held.clear()
