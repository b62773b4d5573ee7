"""Liveness (`/healthz`) and readiness (`/readyz`) probes.

`/healthz` only proves the process answers. `/readyz` makes one cheap real call to each part a request needs:
the database (SELECT 1), the broker (Redis PING when REDIS_URL is set; the in-process broker is always there)
and the storage (S3 HeadBucket, or a write in the local media folder). It answers 503 naming the failing parts.
The response carries the exception class only; the full message goes to the log, not to whoever probes.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

# Seconds a probe waits on a dependency; an orchestrator's probe usually gives up after a few seconds in all.
PROBE_TIMEOUT = 2.0


class NotReady(Exception):
    """A dependency answered, but not in a usable way."""


def check_database() -> str:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        if cursor.fetchone() != (1,):
            raise NotReady("SELECT 1 did not return 1")
    return connections["default"].vendor


def check_broker() -> str:
    url = settings.REDIS_URL
    if not url:
        return "in-process"
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
    try:
        if not client.ping():
            raise NotReady("Redis PING was not answered with PONG")
    finally:
        client.close()
    return "redis"


@functools.lru_cache(maxsize=8)
def _s3_probe_client(endpoint_url: str | None, access_key: str | None, secret_key: str | None,
                     region: str | None, addressing_style: str | None):
    """A client with short timeouts and no retries: the storage's own client may retry for a minute."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT, retries={"max_attempts": 1},
                    s3={"addressing_style": addressing_style or "auto"})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name=region, config=config,
    )


def check_storage() -> str:
    storage: Storage = storages["default"]
    bucket = getattr(storage, "bucket_name", None)
    if bucket:
        client = _s3_probe_client(storage.endpoint_url, storage.access_key, storage.secret_key,
                                  storage.region_name, storage.addressing_style)
        client.head_bucket(Bucket=bucket)
        return "s3"
    if isinstance(storage, FileSystemStorage):
        folder = Path(storage.location)
        folder.mkdir(parents=True, exist_ok=True)
        # A real write: a folder that exists but is read-only or full must fail the probe.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".readyz-") as probe:
            probe.write(b"ok")
            probe.flush()
        return "local"
    storage.exists(".readyz-probe")
    return type(storage).__name__


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
}


def run_checks() -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            kind = check()
        except Exception as exc:
            logger.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            results[name] = {"ok": False, "error": type(exc).__name__}
        else:
            results[name] = {"ok": True, "kind": kind}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return results


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    checks = run_checks()
    failing = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "unavailable" if failing else "ok", "failing": failing, "checks": checks}
    return JsonResponse(body, status=503 if failing else 200)
