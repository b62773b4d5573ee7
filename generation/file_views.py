"""Serve a stored file to whoever holds a valid signed link, the local-folder twin of an S3 presigned URL.

The signature is the permission (made by generation.storage.signed_url after the ownership check), so the view
needs no session: a <video> tag or an API client fetches the link as it would a presigned S3 URL. Bad and expired
links both answer 403, as S3 does, with a body that says which. Single byte ranges are honoured so browsers can
seek in videos.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_safe

from generation import storage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


def _forbidden(message: str) -> HttpResponse:
    return HttpResponse(message, status=403, content_type="text/plain; charset=utf-8")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte for a single `bytes=` range, None to send the whole file; ValueError if unsatisfiable."""
    match = _RANGE.match(header.strip())
    if not match or (not match[1] and not match[2]):
        return None  # absent, malformed or multi-range: RFC 9110 lets us ignore it and send everything
    if not match[1]:  # suffix: the last N bytes
        length = int(match[2])
        if length == 0:
            raise ValueError("empty suffix range")
        return max(0, size - length), size - 1
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    if first >= size or last < first:
        raise ValueError(f"range {header!r} outside 0..{size - 1}")
    return first, last


def _read_span(handle, first: int, last: int) -> Iterator[bytes]:
    try:
        handle.seek(first)
        left = last - first + 1
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        handle.close()


@require_safe
def serve_signed(request: HttpRequest, name: str) -> HttpResponse:
    if ".." in name.split("/") or name.startswith("/"):
        return _forbidden("invalid file link")
    download_name = request.GET.get("dl") or None
    try:
        storage.check_local_link(name, request.GET.get("t", ""), request.GET.get("s", ""), download_name,
                                 request.GET.get("x"))
    except storage.LinkExpired:
        return _forbidden("this file link has expired; ask for a fresh one")
    except storage.LinkInvalid:
        return _forbidden("invalid file link")
    try:
        size = default_storage.size(name)
        handle = default_storage.open(name, "rb")
    except (FileNotFoundError, OSError):
        return HttpResponse("file not found", status=404, content_type="text/plain; charset=utf-8")

    content_type = storage.content_type_for(name)
    try:
        span = parse_range(request.headers.get("Range", ""), size)
    except ValueError:
        handle.close()
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response

    if span is None:
        response: HttpResponse = FileResponse(handle, content_type=content_type)
        response["Content-Length"] = str(size)
    else:
        first, last = span
        response = StreamingHttpResponse(_read_span(handle, first, last), status=206, content_type=content_type)
        response["Content-Range"] = f"bytes {first}-{last}/{size}"
        response["Content-Length"] = str(last - first + 1)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, max-age=300"
    response["Content-Disposition"] = (storage.content_disposition("attachment", download_name) if download_name
                                       else "inline")
    return response
