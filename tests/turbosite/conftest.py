"""Project tests (settings, health probes) log users in; the hash is not what they test (tests/factories.py)."""

from __future__ import annotations

import pytest

from tests.factories import FAST_PASSWORD_HASHERS


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = FAST_PASSWORD_HASHERS
