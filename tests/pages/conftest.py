"""Page fixtures: fast password hashing, a logged-in browser-like client, and sample images."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from tests.e2e.worker_process import gpu_worker, live_server  # noqa: F401  (fixtures for the browser tests)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sample_png(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    for x in range(size[0]):  # a gradient, so the picture is not one flat colour
        image.putpixel((x, size[1] // 2), (x * 2 % 256, 50, 90))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(name: str = "photo.png", data: bytes | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, sample_png() if data is None else data, content_type="image/png")


@pytest.fixture
def browser_client(user) -> Client:
    """alice logged in through the session (CSRF checks on, as in a browser)."""
    client = Client(enforce_csrf_checks=False)
    client.force_login(user)
    return client
