"""Account tests log in many times; the hash itself is not what they test, so new hashes use Django's fastest
hasher here (the production hashers stay listed, so hashes made elsewhere still verify)."""

from __future__ import annotations

import pytest

from tests.factories import FAST_PASSWORD_HASHERS


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = FAST_PASSWORD_HASHERS
