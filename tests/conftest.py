"""Fixtures shared by every suite: two users with known passwords and DRF clients.

Suites add their own fixtures in conftest.py files inside their folders; this file stays small. The browser
fixtures live in tests/browser.py and are loaded here as a plugin so any suite can ask for them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytest_plugins = ["tests.browser"]

# WhiteNoise warns on every request when STATIC_ROOT is missing; the suite never collects static files.
_data_dir = os.environ.get("TURBO_DATA_DIR")
if _data_dir:
    Path(_data_dir, "staticfiles").mkdir(parents=True, exist_ok=True)

USER_PASSWORD = "violet-harbour-7319"
OTHER_USER_PASSWORD = "amber-lantern-2846"


def password_hash(password: str) -> str:
    """The production hasher costs a quarter second per call on these CPUs; a salted hash can be reused across
    test users, so each known password is hashed once per run and hasher. Subprocess servers verify it as usual."""
    return _cached_hash(password, settings.PASSWORD_HASHERS[0])


@functools.cache
def _cached_hash(password: str, hasher: str) -> str:
    return make_password(password)


def make_user(username: str, password: str, **fields):
    """A saved user whose `plain_password` attribute holds the password that logs it in."""
    new_user = get_user_model().objects.create_user(username, f"{username}@example.com", None, **fields)
    new_user.password = password_hash(password)
    new_user.save(update_fields=["password"])
    new_user.plain_password = password
    return new_user


@pytest.fixture
def user(db):
    """alice, an ordinary user; `user.plain_password` holds her password."""
    return make_user("alice", USER_PASSWORD)


@pytest.fixture
def other_user(db):
    """bob, a second ordinary user for isolation tests; `other_user.plain_password` holds his password."""
    return make_user("bob", OTHER_USER_PASSWORD)


@pytest.fixture
def api_client() -> APIClient:
    """An unauthenticated DRF client."""
    return APIClient()


@pytest.fixture
def token_client(db) -> Callable[..., APIClient]:
    """token_client(user) -> a DRF client that sends `Authorization: Token <key>` for that user."""

    def make(for_user) -> APIClient:
        token, _ = Token.objects.get_or_create(user=for_user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        client.token = token.key
        return client

    return make

