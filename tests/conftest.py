"""Fixtures shared by every suite: two users with known passwords and DRF clients.

Suites add their own fixtures in conftest.py files inside their folders; this file stays small. The browser
fixtures live in tests/browser.py and are loaded here as a plugin so any suite can ask for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import make_user, password_hash  # noqa: F401  (make_user is imported from here too)

pytest_plugins = ["tests.browser"]

# WhiteNoise warns on every request when STATIC_ROOT is missing; the suite never collects static files.
_data_dir = os.environ.get("TURBO_DATA_DIR")
if _data_dir:
    Path(_data_dir, "staticfiles").mkdir(parents=True, exist_ok=True)

USER_PASSWORD = "violet-harbour-7319"
OTHER_USER_PASSWORD = "amber-lantern-2846"


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

