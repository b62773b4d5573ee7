"""Account pages that Django's auth views do not cover: sign-up and the account page with the API token."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework.authtoken.models import Token

from turbosite.accounts.forms import SignUpForm

# Sign-up logs the new user in directly; with axes in AUTHENTICATION_BACKENDS the backend must be named.
_LOGIN_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                   require_https=request.is_secure()):
        return target
    return settings.LOGIN_REDIRECT_URL


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            user = form.save()
            Token.objects.create(user=user)
        login(request, user, backend=_LOGIN_BACKEND)
        messages.success(request, f"Welcome, {user.username}. Your account is ready.")
        return redirect(_safe_next(request))
    return render(request, "registration/signup.html", {"form": form, "next": request.GET.get("next", "")})


@login_required
@require_http_methods(["GET"])
def account(request: HttpRequest) -> HttpResponse:
    from generation.webhooks.services import secret_for
    from turbosite.api_keys import pages as key_pages
    from turbosite.api_keys.services import keys_of

    token, _ = Token.objects.get_or_create(user=request.user)
    api_base = request.build_absolute_uri("/api/v1/")
    return render(request, "accounts/account.html", {
        "token": token, "api_base": api_base, "webhook_secret": secret_for(request.user),
        "api_keys": keys_of(request.user), "new_api_key": key_pages.pop_new_key(request),
        "retention_days": settings.TURBO_RETENTION_DAYS,
    })


@login_required
@require_POST
def regenerate_token(request: HttpRequest) -> HttpResponse:
    # Delete-then-create in one transaction: the old key stops working the moment the new one exists.
    with transaction.atomic():
        Token.objects.filter(user=request.user).delete()
        Token.objects.create(user=request.user)
    messages.success(request, "A new API token was created. The old one no longer works.")
    return redirect("account")
