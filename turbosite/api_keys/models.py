"""One API key. Only the SHA-256 of the key is stored; the short `prefix` (part of the key) finds the row."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

KEY_PREFIX = "tsk_"  # so a leaked key is recognisable (secret scanners) and never confused with a legacy token
PREFIX_CHARS = 10


def digest(key: str) -> str:
    # Keys are 190 random bits: a fast hash is enough (nothing to brute-force), unlike passwords.
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(the full key, its lookup prefix)."""
    lookup = secrets.token_hex(PREFIX_CHARS // 2)
    return f"{KEY_PREFIX}{lookup}_{secrets.token_urlsafe(24)}", lookup


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_CHARS, unique=True)
    hashed_key = models.CharField(max_length=64)
    read_only = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…) of {self.user}"

    @property
    def display_prefix(self) -> str:
        return f"{KEY_PREFIX}{self.prefix}"

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.hashed_key, digest(key))

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.is_expired else "active"
