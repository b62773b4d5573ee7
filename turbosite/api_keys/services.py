"""Making, finding and revoking API keys (the API, the account page and the authentication class use these)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from turbosite.api_keys.models import KEY_PREFIX, ApiKey, digest, new_key

MAX_KEYS_PER_USER = 50
MAX_NAME_CHARS = 100
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per key and minute, not one per request


class KeyRejected(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class NewKey:
    api_key: ApiKey
    key: str  # shown once, never stored


def create_key(user, *, name: str, read_only: bool = False, expires_at: datetime | None = None) -> NewKey:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise KeyRejected(f"Give the key a name of 1 to {MAX_NAME_CHARS} printable characters.", "name")
    if expires_at is not None and expires_at <= timezone.now():
        raise KeyRejected("expires_at must be in the future.", "expires_at")
    with transaction.atomic():
        if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_KEYS_PER_USER:
            raise KeyRejected(f"You already have {MAX_KEYS_PER_USER} keys; revoke one first.")
        key, prefix = new_key()
        api_key = ApiKey.objects.create(user=user, name=name, prefix=prefix, hashed_key=digest(key),
                                        read_only=bool(read_only), expires_at=expires_at)
    return NewKey(api_key=api_key, key=key)


def revoke_key(api_key: ApiKey) -> bool:
    """False if it was already revoked."""
    return bool(ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def keys_of(user):
    return ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at")


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


def find_key(key: str) -> ApiKey | None:
    """The key's row if `key` is exactly a key we made (revoked and expired ones included), else None."""
    body = key.removeprefix(KEY_PREFIX)
    prefix, _, _ = body.partition("_")
    if not prefix:
        return None
    api_key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if api_key is None or not api_key.matches(key):
        return None
    return api_key


def touch(api_key: ApiKey) -> None:
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
