"""The web's server process: gunicorn's process manager with one uvicorn event loop per worker (ASGI).

gunicorn keeps what it does well for production (a fixed number of worker processes, restarting one that dies or
stops answering its heartbeat within --timeout, graceful reloads on SIGHUP); each worker serves
`turbosite.asgi:application` on a uvicorn event loop, so an open Server-Sent Events stream costs a coroutine, not
a server thread. Run as `gunicorn turbosite.asgi:application --worker-class turbosite.uvicorn_worker.UvicornWorker`
(docker/Dockerfile.web, bench/load_api.py).
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker


class UvicornWorker(_UvicornWorker):
    # Django's ASGI handler answers no lifespan events ("lifespan": "auto" would only log that it tried).
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "auto", "lifespan": "off"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # On shutdown uvicorn waits for open connections; event streams last minutes, so it stops waiting a little
        # before gunicorn's --graceful-timeout would kill the process (clients reconnect to another worker).
        self.config.timeout_graceful_shutdown = max(1, int(self.cfg.graceful_timeout) - 5)
