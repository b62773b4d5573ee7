"""Where a job's files live and how a browser gets them.

Names: inputs/<user>/<job>.png (the normalised image), outputs/<user>/<job>.mp4 and outputs/<user>/<job>.jpg
(the poster). Writes set the content type explicitly, so S3 serves `video/mp4` rather than a guess.

Links: `signed_url` is the only way a file leaves the site, and callers make one only after checking that the
request's user owns the job. On S3 it is a presigned GET signed for the *public* endpoint (what browsers reach,
which may differ from the address the servers use); signing is local HMAC work, no network. On the local folder it
is a Django URL under files/ whose query carries a timestamped HMAC over the name, checked by file_views.
Both expire after settings.SIGNED_URL_MAX_AGE seconds, or after the `max_age` a caller asks for (the compatibility
routes promise their clients one hour); a local link carries its own lifetime inside what is signed.

Bounded waits: every S3 request has connect and read timeouts (settings.STORAGES, TURBO_STORAGE_TIMEOUT_S) and no
retries of botocore's own; `with_retries` retries transient errors within a total deadline per call, short for web
requests (TURBO_STORAGE_DEADLINE_S) and longer for the worker's uploads (TURBO_WORKER_STORAGE_DEADLINE_S). After a
transient failure a web call fails at once for a few seconds (`StorageUnavailable`) instead of tying up another
server thread on a storage that just proved slow.

Nothing half-written stays: a write that failed may still land later (a request the server had received before it
stalled), and a delete may fail, so each such name is recorded as a `PendingDelete`; the reaper deletes it once
no job needs it (`sweep_pending_deletes`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import PurePosixPath
from typing import TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4",
                 ".webp": "image/webp"}
FILE_LINK_SALT = "generation.storage.file-link"
SAVE_ATTEMPTS = 4
WORKER_SAVE_ATTEMPTS = 8
SAVE_BACKOFF_SECONDS = 0.5
# After a transient failure, web calls fail at once for this long (each would otherwise wait a full timeout).
FAIL_FAST_SECONDS = 5.0

_health_lock = threading.Lock()
_unavailable_until = 0.0


class StorageUnavailable(ConnectionError):
    """Storage did not answer in time (or failed moments ago): the caller answers 503 or fails the job."""


class StorageNotTried(StorageUnavailable):
    """Storage failed moments ago, so this web call was not even sent (nothing can land later)."""


# -- names ----------------------------------------------------------------------------------------------------

def input_name(job) -> str:
    return f"inputs/{job.owner_id}/{job.id}.png"


def output_name(job) -> str:
    return f"outputs/{job.owner_id}/{job.id}.mp4"


def poster_name(job) -> str:
    return f"outputs/{job.owner_id}/{job.id}.jpg"


def content_type_for(name: str) -> str:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower(), "application/octet-stream") if dot >= 0 else "application/octet-stream"


# -- writes ---------------------------------------------------------------------------------------------------

def is_transient(exc: BaseException) -> bool:
    """Errors worth another try: the storage service was unreachable, slow, or answered 5xx / SlowDown."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # boto3 is only needed with S3
        return False
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                                          "RequestTimeTooSkewed"}
    return False


def _mark_unavailable() -> None:
    global _unavailable_until
    with _health_lock:
        _unavailable_until = time.monotonic() + FAIL_FAST_SECONDS


def _mark_available() -> None:
    global _unavailable_until
    with _health_lock:
        _unavailable_until = 0.0


def reset_health() -> None:
    """Forget a recent failure (tests, and an operator's shell after fixing the storage)."""
    _mark_available()


def with_retries(action: Callable[[], T], *, what: str, attempts: int = SAVE_ATTEMPTS,
                 backoff: float = SAVE_BACKOFF_SECONDS, deadline_s: float | None = None) -> T:
    """Run `action`, retrying transient storage errors with exponential backoff; other errors pass through.

    `deadline_s` bounds the whole call, retries included: None means a web request's budget
    (TURBO_STORAGE_DEADLINE_S, and an immediate StorageUnavailable while storage failed moments ago); the worker
    passes its own. A new attempt starts only if one more request timeout still fits before the deadline.
    """
    fail_fast = deadline_s is None
    budget = settings.TURBO_STORAGE_DEADLINE_S if deadline_s is None else deadline_s
    deadline = time.monotonic() + budget
    if fail_fast and time.monotonic() < _unavailable_until:
        raise StorageNotTried(f"{what}: storage failed moments ago; not tried")
    for attempt in range(1, attempts + 1):
        try:
            result = action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            _mark_unavailable()
            delay = backoff * 2 ** (attempt - 1)
            fits = time.monotonic() + delay + settings.TURBO_STORAGE_TIMEOUT_S <= deadline
            if attempt == attempts or not fits:
                raise StorageUnavailable(f"{what} failed after {attempt} tries within {budget:g} s "
                                         f"({type(exc).__name__}: {exc})") from exc
            log.warning("storage: %s failed (%s: %s); try %d of %d in %.1fs", what, type(exc).__name__, exc,
                        attempt + 1, attempts, delay)
            time.sleep(delay)
        else:
            _mark_available()
            return result
    raise AssertionError("unreachable")


def save_bytes(name: str, data: bytes, content_type: str | None = None, *, deadline_s: float | None = None) -> str:
    """Store `data` under exactly `name` (replacing what was there) with an explicit content type; returns the name.
    On failure the name is recorded for the reaper: the write may still land after the caller gave up."""
    content = ContentFile(data, name=name.rsplit("/", 1)[-1])
    # django-storages' S3 backend sends `content.content_type` as the object's ContentType.
    content.content_type = content_type or content_type_for(name)

    def save() -> str:
        if not _is_s3() and default_storage.exists(name):
            # FileSystemStorage would pick a new name instead of replacing; S3 overwrites (file_overwrite=True).
            default_storage.delete(name)
        content.seek(0)
        return default_storage.save(name, content)

    try:
        saved = with_retries(save, what=f"saving {name}", deadline_s=deadline_s,
                             attempts=SAVE_ATTEMPTS if deadline_s is None else WORKER_SAVE_ATTEMPTS)
    except StorageNotTried:
        raise
    except Exception:
        remember_for_deletion(name)
        raise
    if saved != name:
        delete_quietly(saved)  # a racing writer made the backend pick another name: leave nothing behind
        raise RuntimeError(f"storage saved {name!r} as {saved!r}; job files must keep their names")
    return saved


def read_bytes(name: str, *, deadline_s: float | None = None) -> bytes:
    def read() -> bytes:
        with default_storage.open(name, "rb") as handle:
            return handle.read()

    return with_retries(read, what=f"reading {name}", deadline_s=deadline_s,
                        attempts=SAVE_ATTEMPTS if deadline_s is None else WORKER_SAVE_ATTEMPTS)


def delete_quietly(name: str | None, *, deadline_s: float | None = None) -> bool:
    """Delete a stored file if it exists; log instead of raising. Returns whether a delete was attempted and worked.
    A failed delete is recorded, so the reaper deletes the file later."""
    if not name:
        return False
    try:
        with_retries(lambda: default_storage.delete(name), what=f"deleting {name}", attempts=2, deadline_s=deadline_s)
        return True
    except Exception as exc:
        log.warning("storage: could not delete %s (%s: %s); the reaper will", name, type(exc).__name__, exc)
        remember_for_deletion(name)
        return False


# -- files to delete later -------------------------------------------------------------------------------------

def remember_for_deletion(name: str) -> None:
    """Record `name` for `sweep_pending_deletes` (never raises: this runs on error paths)."""
    from generation.models import PendingDelete

    try:
        PendingDelete.objects.get_or_create(name=name)
    except Exception:
        log.exception("storage: could not record %s for a later delete", name)


def _still_needed(name: str) -> bool | None:
    """True when a job needs the file (keep it), False when nothing does (delete it), None when its job is still
    running and may write it (decide later). Names carry the job id: inputs/<user>/<job>.png, outputs/<user>/<job>.*"""
    from generation.models import Job

    path = PurePosixPath(name)
    try:
        job_id = uuid.UUID(path.stem)
    except ValueError:
        return False
    job = Job.objects.filter(id=job_id).only("status", "input_image", "output_video", "poster").first()
    if job is None:
        return False
    if name == job.input_image.name:
        return True
    if job.status in Job.ACTIVE:
        return None
    return job.status == Job.Status.SUCCEEDED and name in (job.output_video.name, job.poster.name)


def sweep_pending_deletes(*, settle_s: float | None = None, limit: int = 200) -> list[str]:
    """Delete the recorded files that no job needs. A record goes after two deletes at least `settle_s` apart
    (default: one reaper interval), since a write that stalled may land after the first. Returns the names deleted."""
    from generation.models import PendingDelete

    settle_s = settings.TURBO_REAPER_INTERVAL_S if settle_s is None else settle_s
    deleted: list[str] = []
    for record in PendingDelete.objects.order_by("created_at")[:limit]:
        needed = _still_needed(record.name)
        if needed is None:
            continue
        if needed:
            record.delete()
            continue
        try:
            with_retries(lambda name=record.name: default_storage.delete(name), what=f"deleting {record.name}",
                         attempts=1, deadline_s=settings.TURBO_STORAGE_DEADLINE_S)
        except Exception as exc:
            log.warning("storage: pending delete of %s failed again (%s)", record.name, type(exc).__name__)
            continue
        now = timezone.now()
        deleted.append(record.name)
        if record.deleted_at is not None and now - record.deleted_at >= timedelta(seconds=settle_s):
            record.delete()
        elif record.deleted_at is None:
            PendingDelete.objects.filter(pk=record.pk).update(deleted_at=now)
    if deleted:
        log.info("storage: deleted %d files no job needs: %s", len(deleted), ", ".join(deleted[:10]))
    return deleted


# -- links ----------------------------------------------------------------------------------------------------

def _is_s3() -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:
        return False
    return isinstance(default_storage, S3Storage)


@functools.lru_cache(maxsize=4)
def _public_client(endpoint: str | None, access_key: str | None, secret_key: str | None, region: str | None,
                   addressing_style: str | None, signature_version: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name=region, config=Config(s3={"addressing_style": addressing_style or "auto"},
                                          signature_version=signature_version or "s3v4"),
    )


def _s3_signed_url(name: str, download_name: str | None, max_age: int) -> str:
    storage = default_storage
    endpoint = settings.S3_PUBLIC_ENDPOINT_URL or storage.endpoint_url or None
    client = _public_client(endpoint, storage.access_key or None, storage.secret_key or None, storage.region_name,
                            storage.addressing_style, storage.signature_version)
    location = (storage.location or "").strip("/")
    params: dict[str, str] = {"Bucket": storage.bucket_name, "Key": f"{location}/{name}" if location else name}
    if download_name:
        params["ResponseContentDisposition"] = content_disposition("attachment", download_name)
    return client.generate_presigned_url("get_object", Params=params, ExpiresIn=max_age)


def content_disposition(kind: str, filename: str) -> str:
    safe = "".join(ch for ch in filename if ch.isalnum() or ch in "._-") or "download"
    return f'{kind}; filename="{safe}"'


def _link_payload(name: str, download_name: str | None, max_age: int | None = None) -> str:
    payload = f"{name}\n{download_name or ''}"
    return f"{payload}\n{max_age}" if max_age is not None else payload


def _local_signed_url(name: str, download_name: str | None, max_age: int | None) -> str:
    signed = signing.TimestampSigner(salt=FILE_LINK_SALT).sign(_link_payload(name, download_name, max_age))
    _, stamp, signature = signed.rsplit(":", 2)
    query = {"t": stamp, "s": signature}
    if download_name:
        query["dl"] = download_name
    if max_age is not None:
        query["x"] = str(max_age)
    return f"{reverse('files:serve', kwargs={'name': name})}?{urlencode(query)}"


class LinkExpired(Exception):
    """A local file link whose signature was right but whose time ran out."""


class LinkInvalid(Exception):
    """A local file link that was not made by this site for this name (tampered, truncated, other secret)."""


def check_local_link(name: str, stamp: str, signature: str, download_name: str | None,
                     max_age: str | None = None) -> None:
    """Raise LinkInvalid or LinkExpired unless (stamp, signature) was made by _local_signed_url for these values.
    `max_age` is the link's own lifetime (its "x" parameter), signed with it; absent, the site's default."""
    if not stamp or not signature:
        raise LinkInvalid("the link has no signature")
    lifetime: int | None = None
    if max_age:
        if not max_age.isdigit():
            raise LinkInvalid("the link's lifetime is not a number")
        lifetime = int(max_age)
    signer = signing.TimestampSigner(salt=FILE_LINK_SALT)
    try:
        signer.unsign(f"{_link_payload(name, download_name, lifetime)}:{stamp}:{signature}",
                      max_age=settings.SIGNED_URL_MAX_AGE if lifetime is None else lifetime)
    except signing.SignatureExpired as exc:
        raise LinkExpired(str(exc)) from None
    except signing.BadSignature as exc:
        raise LinkInvalid(str(exc)) from None


def signed_url(name: str, *, download_name: str | None = None, max_age: int | None = None) -> str:
    """A short-lived link to a stored file, valid for `max_age` seconds (default settings.SIGNED_URL_MAX_AGE).
    Call only after checking that the requester may see it."""
    if not name:
        raise ValueError("signed_url needs a stored file name, got an empty one")
    if _is_s3():
        return _s3_signed_url(name, download_name, max_age or settings.SIGNED_URL_MAX_AGE)
    return _local_signed_url(name, download_name, max_age)
