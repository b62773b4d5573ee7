"""Lifecycle fixtures: the queue recorded instead of sent, and a fresh throttle cache (tests/factories.py)."""

from tests.factories import enqueued, fresh_throttle_cache  # noqa: F401
