"""Where a job's files live and how a browser gets them.

Names: inputs/<user>/<job>.png (the normalised image), outputs/<user>/<job>.mp4 and outputs/<user>/<job>.jpg
(the poster). Writes set the content type explicitly, so S3 serves `video/mp4` rather than a guess.

Links: `signed_url` is the only way a file leaves the site, and callers make one only after checking that the
request's user owns the job. On S3 it is a presigned GET signed for the *public* endpoint (what browsers reach,
which may differ from the address the servers use); signing is local HMAC work, no network. On the local folder it
is a Django URL under files/ whose query carries a timestamped HMAC over the name, checked by file_views.
Both expire after settings.SIGNED_URL_MAX_AGE seconds, or after the `max_age` a caller asks for (the compatibility
routes promise their clients one hour); a local link carries its own lifetime inside what is signed.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4",
                 ".webp": "image/webp"}
FILE_LINK_SALT = "generation.storage.file-link"
SAVE_ATTEMPTS = 4
SAVE_BACKOFF_SECONDS = 0.5


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


def with_retries(action: Callable[[], T], *, what: str, attempts: int = SAVE_ATTEMPTS,
                 backoff: float = SAVE_BACKOFF_SECONDS) -> T:
    """Run `action`, retrying transient storage errors with exponential backoff; other errors pass through."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = backoff * 2 ** (attempt - 1)
            log.warning("storage: %s failed (%s: %s); try %d of %d in %.1fs", what, type(exc).__name__, exc,
                        attempt + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def save_bytes(name: str, data: bytes, content_type: str | None = None) -> str:
    """Store `data` under exactly `name` (replacing what was there) with an explicit content type; returns the name."""
    content = ContentFile(data, name=name.rsplit("/", 1)[-1])
    # django-storages' S3 backend sends `content.content_type` as the object's ContentType.
    content.content_type = content_type or content_type_for(name)

    def save() -> str:
        if not _is_s3() and default_storage.exists(name):
            # FileSystemStorage would pick a new name instead of replacing; S3 overwrites (file_overwrite=True).
            default_storage.delete(name)
        content.seek(0)
        return default_storage.save(name, content)

    saved = with_retries(save, what=f"saving {name}")
    if saved != name:
        delete_quietly(saved)  # a racing writer made the backend pick another name: leave nothing behind
        raise RuntimeError(f"storage saved {name!r} as {saved!r}; job files must keep their names")
    return saved


def read_bytes(name: str) -> bytes:
    def read() -> bytes:
        with default_storage.open(name, "rb") as handle:
            return handle.read()

    return with_retries(read, what=f"reading {name}")


def delete_quietly(name: str | None) -> bool:
    """Delete a stored file if it exists; log instead of raising. Returns whether a delete was attempted and worked."""
    if not name:
        return False
    try:
        with_retries(lambda: default_storage.delete(name), what=f"deleting {name}", attempts=2)
        return True
    except Exception:
        log.exception("storage: could not delete %s", name)
        return False


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
