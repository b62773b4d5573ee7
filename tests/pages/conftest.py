"""Page fixtures: fast password hashing, a logged-in browser-like client, and sample images."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.middleware.csrf import CSRF_SECRET_LENGTH
from django.test import Client
from django.utils.crypto import get_random_string

from tests.e2e.worker_process import gpu_worker, live_server  # noqa: F401  (fixtures for the browser tests)
from tests.factories import FAST_PASSWORD_HASHERS, png_bytes, png_upload


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = FAST_PASSWORD_HASHERS


def sample_png(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    return png_bytes(size[0], size[1], color, gradient_row=True)


def upload(name: str = "photo.png", data: bytes | None = None) -> SimpleUploadedFile:
    return png_upload(name, sample_png() if data is None else data)


class CsrfBrowserClient(Client):
    """A test client that enforces CSRF like the site does for a browser, and sends the token as a page's form
    would: the CSRF cookie's current value with every unsafe request."""

    def __init__(self) -> None:
        super().__init__(enforce_csrf_checks=True)
        self.cookies[settings.CSRF_COOKIE_NAME] = get_random_string(CSRF_SECRET_LENGTH)

    def generic(self, method: str, path: str, *args, **extra):
        if method.upper() not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            extra.setdefault("HTTP_X_CSRFTOKEN", self.cookies[settings.CSRF_COOKIE_NAME].value)
        return super().generic(method, path, *args, **extra)


@pytest.fixture
def browser_client(user) -> Client:
    """alice logged in through the session (CSRF checks on, as in a browser)."""
    client = CsrfBrowserClient()
    client.force_login(user)
    return client
