"""Account-page actions for API keys. A new key is shown once: it rides in the session to the next account page
and is removed from it there."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from turbosite.api_keys import services
from turbosite.api_keys.models import ApiKey

SESSION_NEW_KEY = "api_keys:new"
EXPIRY_CHOICES = {"": None, "30": 30, "90": 90, "365": 365}


def pop_new_key(request: HttpRequest) -> dict | None:
    return request.session.pop(SESSION_NEW_KEY, None)


@login_required
@require_POST
def create(request: HttpRequest) -> HttpResponse:
    days = EXPIRY_CHOICES.get(request.POST.get("expires_in_days", ""))
    try:
        made = services.create_key(request.user, name=request.POST.get("name", ""),
                                   read_only=request.POST.get("read_only") == "on",
                                   expires_at=timezone.now() + timedelta(days=days) if days else None)
    except services.KeyRejected as exc:
        messages.error(request, exc.message)
        return redirect("account")
    request.session[SESSION_NEW_KEY] = {"name": made.api_key.name, "key": made.key}
    return redirect("account")


@login_required
@require_POST
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    api_key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    services.revoke_key(api_key)
    messages.success(request, f"The key “{api_key.name}” was revoked; programs using it are refused from now on.")
    return redirect("account")
