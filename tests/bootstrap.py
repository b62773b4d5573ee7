"""pytest plugin loaded with `-p tests.bootstrap` (see pyproject.toml), before Django's settings are read.

It points the suite at the real services: PostgreSQL and Redis on this machine and a SeaweedFS S3 server that it
starts on free loopback ports and stops at the end. Each run gets its own database name, Redis queue namespace and
data folder, so two runs on one machine do not meet. Set TURBO_TEST_EMBEDDED=1 to run on the embedded defaults instead.
"""

from __future__ import annotations

import os
import tempfile

from tests.s3server import SeaweedS3, new_server

_server: SeaweedS3 | None = None
_run_id = f"{os.getpid()}"

if os.environ.get("TURBO_TEST_EMBEDDED") != "1":
    os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/turbosite_{_run_id}")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ.setdefault("QUEUE_NAMESPACE", f"turbosite-test-{_run_id}")
    if "S3_BUCKET" not in os.environ:
        _server = new_server()
        os.environ.update({
            "S3_BUCKET": "turbosite-test",
            "S3_ENDPOINT_URL": _server.endpoint,
            # Browsers reach the same server by another name: URLs must be signed for this one.
            "S3_PUBLIC_ENDPOINT_URL": f"http://localhost:{_server.port}",
            "S3_ACCESS_KEY_ID": _server.access_key,
            "S3_SECRET_ACCESS_KEY": _server.secret_key,
        })
os.environ.setdefault("TURBO_DATA_DIR", tempfile.mkdtemp(prefix="turbosite-data-"))
# Triton decides at import time whether @triton.jit builds for the interpreter, and many suites import the kernels
# indirectly; on these CPU machines the interpreter is the only way the kernel tests can run them.
os.environ.setdefault("TRITON_INTERPRET", "1")


def s3_server() -> SeaweedS3 | None:
    """The S3 server this run started (None when the environment named one or the run is embedded)."""
    return _server


def pytest_configure(config) -> None:
    if _server is not None and _server.process is None:
        _server.start()
        _server.create_bucket(os.environ["S3_BUCKET"])


def pytest_unconfigure(config) -> None:
    if _server is not None:
        _server.stop()
