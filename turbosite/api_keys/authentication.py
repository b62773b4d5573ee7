"""DRF authentication for API keys (`Authorization: Bearer <key>`, or `Token <key>`), and the permission that
keeps read-only keys to GET, HEAD and OPTIONS.

A header that does not carry one of our keys (`Token <legacy token>`) is left to DRF's TokenAuthentication,
which keeps working for one release.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS, BasePermission

from turbosite.api_keys import services
from turbosite.api_keys.models import ApiKey

SCHEMES = (b"bearer", b"token")


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() not in SCHEMES:
            return None
        try:
            key = parts[1].decode()
        except UnicodeError:
            return None
        if not services.looks_like_key(key):
            return None  # a legacy token: TokenAuthentication's business
        api_key = services.find_key(key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key was revoked.")
        if api_key.is_expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        if not api_key.user.is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.")
        services.touch(api_key)
        return api_key.user, api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class ReadOnlyKeys(BasePermission):
    """A read-only key may read, never change anything."""

    message = "This API key is read-only: it can read, not create, cancel or delete."

    def has_permission(self, request, view) -> bool:
        return not (isinstance(request.auth, ApiKey) and request.auth.read_only
                    and request.method not in SAFE_METHODS)


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "An API key from the account page or POST /api/v1/keys/, as `Bearer <key>`."}
