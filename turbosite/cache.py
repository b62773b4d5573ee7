"""The shared cache: Django's Redis cache, except that an unreachable Redis reads as a miss and drops writes, and
`clear()` deletes this cache's own keys only.

What lives in the cache (submission-throttle counts, the ETA's typical run time) is worth having, never worth a
500: while Redis is down the queue refuses new jobs with a clear 503 anyway, and reads of jobs keep working.
Django's own `clear()` would FLUSHDB, taking the queue (and any other deployment sharing the Redis) with it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_WARN_EVERY_S = 30.0


class TolerantRedisCache(RedisCache):
    _last_warning = 0.0

    def _failed(self, operation: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - TolerantRedisCache._last_warning >= _WARN_EVERY_S:
            TolerantRedisCache._last_warning = now
            log.warning("cache: Redis %s failed (%s: %s); treated as a miss", operation, type(exc).__name__, exc)

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        try:
            return super().get(key, default, version)
        except RedisError as exc:
            self._failed("get", exc)
            return default

    def get_many(self, keys: Any, version: int | None = None) -> dict:
        try:
            return super().get_many(keys, version)
        except RedisError as exc:
            self._failed("get_many", exc)
            return {}

    def set(self, key: Any, value: Any, timeout: Any = ..., version: int | None = None) -> None:
        try:
            if timeout is ...:
                super().set(key, value, version=version)
            else:
                super().set(key, value, timeout, version)
        except RedisError as exc:
            self._failed("set", exc)

    def add(self, key: Any, value: Any, timeout: Any = ..., version: int | None = None) -> bool:
        try:
            if timeout is ...:
                return super().add(key, value, version=version)
            return super().add(key, value, timeout, version)
        except RedisError as exc:
            self._failed("add", exc)
            return False

    def delete(self, key: Any, version: int | None = None) -> bool:
        try:
            return super().delete(key, version)
        except RedisError as exc:
            self._failed("delete", exc)
            return False

    def clear(self) -> None:
        """Delete the keys under this cache's KEY_PREFIX, nothing else in the Redis database."""
        try:
            client = self._cache.get_client(write=True)
            pattern = self.make_key("*").replace("[", "\\[").replace("]", "\\]")
            batch: list = []
            for key in client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        except RedisError as exc:
            self._failed("clear", exc)
