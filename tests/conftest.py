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

pytest_plugins = ["tests.browser"]

# WhiteNoise warns on every request when STATIC_ROOT is missing; the suite never collects static files.
_data_dir = os.environ.get("TURBO_DATA_DIR")
if _data_dir:
    Path(_data_dir, "staticfiles").mkdir(parents=True, exist_ok=True)

USER_PASSWORD = "violet-harbour-7319"
OTHER_USER_PASSWORD = "amber-lantern-2846"


@pytest.fixture
def user(db, django_user_model):
    """alice, an ordinary user; `user.plain_password` holds her password."""
    alice = django_user_model.objects.create_user("alice", "alice@example.com", USER_PASSWORD)
    alice.plain_password = USER_PASSWORD
    return alice


@pytest.fixture
def other_user(db, django_user_model):
    """bob, a second ordinary user for isolation tests; `other_user.plain_password` holds his password."""
    bob = django_user_model.objects.create_user("bob", "bob@example.com", OTHER_USER_PASSWORD)
    bob.plain_password = OTHER_USER_PASSWORD
    return bob


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


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Tests create and log in many users; the production hasher costs a quarter second each time on these CPUs.
    What is tested is the flow, not the hash, so tests use Django's fastest hasher."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
