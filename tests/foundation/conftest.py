"""Foundation tests log in many times; the hash itself is not what they test, so new hashes use Django's fastest
hasher here (the production hashers stay listed, so hashes made elsewhere still verify)."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

FAST_FIRST = ["django.contrib.auth.hashers.MD5PasswordHasher",
              *[h for h in django_settings.PASSWORD_HASHERS if not h.endswith("MD5PasswordHasher")]]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = FAST_FIRST
