"""Account-page action for the webhook signing secret (the page itself is turbosite/accounts/views.account)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from generation.webhooks import services


@login_required
@require_POST
def rotate_secret(request: HttpRequest) -> HttpResponse:
    services.rotate_secret(request.user)
    messages.success(request, "A new webhook signing secret was made. Signatures made with the old one stop "
                              "at once; give your receivers the new one.")
    return redirect("account")
