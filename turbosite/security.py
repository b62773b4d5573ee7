"""Response headers that browsers enforce, and a cap on how much of an upload the server keeps.

Django 5.2 has no built-in Content-Security-Policy (it arrives in 6.0), so `SecurityHeadersMiddleware` sets it,
with Permissions-Policy, Cross-Origin-Opener-Policy and Cross-Origin-Resource-Policy. Headers a view already set
are left alone, so one page can loosen or tighten its own policy.

The policy: everything from our own origin; no inline or eval'd script; no plugins; no framing; forms post only
to us. Images and video may also come from the S3 public endpoint (presigned output links) and from blob:/data:
URLs (the new-video form previews the chosen file before upload). Inline style attributes are allowed (style-src-attr)
because templates set widths such as progress bars with them; <style> elements and foreign style sheets are not.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse

PERMISSIONS_POLICY = ", ".join([
    "accelerometer=()", "autoplay=(self)", "camera=()", "display-capture=()", "fullscreen=(self)",
    "geolocation=()", "gyroscope=()", "magnetometer=()", "microphone=()", "midi=()", "payment=()",
    "picture-in-picture=(self)", "publickey-credentials-get=()", "usb=()", "xr-spatial-tracking=()",
])


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def storage_origins() -> list[str]:
    """Origins a browser fetches outputs from: the S3 public endpoint (and its bucket subdomain when addressing
    is virtual-hosted), AWS's own names when no endpoint is set, plus settings.TURBO_CSP_MEDIA_ORIGINS (a CDN)."""
    origins: list[str] = []
    bucket = settings.S3_BUCKET
    if bucket:
        endpoint = settings.S3_PUBLIC_ENDPOINT_URL
        virtual = settings.S3_ADDRESSING_STYLE == "virtual"
        if endpoint:
            origin = _origin(endpoint)
            if origin:
                origins.append(origin)
                if virtual:
                    scheme, host = origin.split("://", 1)
                    origins.append(f"{scheme}://{bucket}.{host}")
        else:
            region = settings.S3_REGION
            origins += [f"https://{bucket}.s3.amazonaws.com", f"https://{bucket}.s3.{region}.amazonaws.com",
                        f"https://s3.{region}.amazonaws.com"]
    for extra in settings.TURBO_CSP_MEDIA_ORIGINS:
        origin = _origin(extra)
        if origin:
            origins.append(origin)
    return list(dict.fromkeys(origins))


# Pages whose third-party markup carries <style> blocks we cannot move out: the Swagger UI page of the API docs.
INLINE_STYLE_PATHS = ("/api/docs/",)
# Django's own debug pages (the technical 404 and 500, only with DEBUG on) carry inline <style> and <script>; they
# all have this tag, which none of our templates (templates/404.html and friends) use.
DEBUG_PAGE_MARK = b'<meta name="robots" content="NONE,NOARCHIVE">'


def content_security_policy(*, inline_styles: bool = False, inline_scripts: bool = False) -> str:
    media = " ".join(["'self'", *storage_origins()])
    directives = {
        "default-src": "'self'",
        "script-src": "'self' 'unsafe-inline'" if inline_scripts else "'self'",
        "style-src": "'self' 'unsafe-inline'" if inline_styles else "'self'",
        "style-src-attr": "'unsafe-inline'",
        "img-src": f"{media} blob: data:",
        "media-src": f"{media} blob: data:",
        "font-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class SecurityHeadersMiddleware:
    """Adds CSP, Permissions-Policy, COOP and CORP to every response (pages, API, admin, errors)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # Settings are fixed for a process's life; build the header once.
        self.inline_style_policy = content_security_policy(inline_styles=True)
        self.debug_page_policy = content_security_policy(inline_styles=True, inline_scripts=True)
        self.headers = {
            "Content-Security-Policy": content_security_policy(),
            "Permissions-Policy": PERMISSIONS_POLICY,
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
        }

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(INLINE_STYLE_PATHS):
            response.headers.setdefault("Content-Security-Policy", self.inline_style_policy)
        elif settings.DEBUG and response.status_code >= 400 and self._is_debug_page(response):
            response.headers.setdefault("Content-Security-Policy", self.debug_page_policy)
        for name, value in self.headers.items():
            response.headers.setdefault(name, value)
        return response

    @staticmethod
    def _is_debug_page(response: HttpResponse) -> bool:
        if getattr(response, "streaming", False) or not response.get("Content-Type", "").startswith("text/html"):
            return False
        return DEBUG_PAGE_MARK in response.content[:2000]


class OversizedUpload(UploadedFile):
    """Stands in for a file that went past the limit: no content kept, `size` is how many bytes arrived."""

    truncated = True

    def __init__(self, name: str, content_type: str, size: int, charset: str | None) -> None:
        super().__init__(io.BytesIO(b""), name, content_type, size, charset)


class CappedUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: passes each file's bytes on to Django's handlers up to
    settings.TURBO_MAX_UPLOAD_BYTES, then keeps counting but stores nothing more. An oversized file comes out as
    an OversizedUpload whose size makes normalise_upload answer "too large" by name, instead of the server first
    writing gigabytes to its temporary folder."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0
        self.limit = int(settings.TURBO_MAX_UPLOAD_BYTES)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        # Over the limit: return None so the handlers after this one get no more data.
        return raw_data if self.received <= self.limit else None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self.received <= self.limit:
            return None  # the next handler (memory or temporary file) has the whole file
        return OversizedUpload(self.file_name or "upload", self.content_type or "", self.received,
                               self.charset)
