"""What a locked-out login gets, the same on the login page and the API token endpoint: HTTP 429, a Retry-After
header with the cool-off time, and a message that says what happened and when to try again.

django-axes decides *whether* a login is locked (settings.AXES_*); this module only words the answer. The login
page gets it through settings.AXES_LOCKOUT_CALLABLE, the token endpoint from generation.api.views.TokenView.
"""

from __future__ import annotations

import math
from datetime import timedelta

from axes.helpers import get_cool_off
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKOUT_CODE = "locked_out"


def cool_off_seconds(request: HttpRequest | None = None) -> int:
    cool_off = get_cool_off(request) or timedelta(minutes=15)
    return max(1, int(cool_off.total_seconds()))


def lockout_message(request: HttpRequest | None = None) -> str:
    minutes = math.ceil(cool_off_seconds(request) / 60)
    return (f"Too many failed logins for this account. Try again in {minutes} minutes, or reset your password if "
            "you forgot it.")


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the login page's answer to a locked account."""
    response = render(request, "registration/locked_out.html", {"message": lockout_message(request)}, status=429)
    response["Retry-After"] = str(cool_off_seconds(request))
    return response
