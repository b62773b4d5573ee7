"""The process's Redis clients for its own short commands (locks, event publishing): one per URL and read timeout,
made on first use. redis-py clients are thread-safe and pool their connections, so sharing one is the point; a
pub/sub listener, which holds a connection for minutes, makes and closes its own."""

from __future__ import annotations

import functools
from typing import Any

CONNECT_TIMEOUT_S = 2


@functools.lru_cache(maxsize=8)
def shared_client(url: str, socket_timeout_s: float) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=socket_timeout_s)
