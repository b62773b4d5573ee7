"""Fixtures for tests that need a real worker process next to pytest-django's live server."""

from tests.e2e.worker_process import gpu_worker, live_server  # noqa: F401  (fixtures)
