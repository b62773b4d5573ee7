"""WhiteNoise under both servers.

WhiteNoise answers static files with a synchronous file response. Under ASGI, Django reads such a response whole
in a thread and warns on each one; this subclass gives ASGI requests an asynchronous iterator instead, which reads
the file in blocks off the event loop. Under WSGI (`make run`, tests) nothing changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import FileResponse, HttpRequest
from whitenoise.middleware import WhiteNoiseMiddleware as _WhiteNoiseMiddleware


async def _blocks(response: FileResponse, file: Any) -> AsyncIterator[bytes]:
    read = sync_to_async(file.read, thread_sensitive=False)
    while chunk := await read(response.block_size):  # block_size: the ASGI handler's chunk size
        yield chunk


class WhiteNoiseMiddleware(_WhiteNoiseMiddleware):
    def __call__(self, request: HttpRequest) -> Any:
        response = super().__call__(request)
        if isinstance(request, ASGIRequest) and isinstance(response, FileResponse) and not response.is_async:
            file = response.file_to_stream
            if file is not None:  # its close stays registered: Django closes it after the last block
                response.streaming_content = _blocks(response, file)
        return response
