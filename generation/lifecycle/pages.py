"""Account-page actions that erase: all of a user's videos, or the account with everything in it. Both ask for
the password again, so a left-open browser or a forged form cannot do it."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from generation.lifecycle import retention


def _password_ok(request: HttpRequest) -> bool:
    if request.user.check_password(request.POST.get("password", "")):
        return True
    messages.error(request, "That password is not right; nothing was deleted.")
    return False


@sensitive_post_parameters("password")
@login_required
@require_POST
def delete_all_videos(request: HttpRequest) -> HttpResponse:
    if not _password_ok(request):
        return redirect("account")
    count = retention.delete_all_jobs(request.user)
    messages.success(request, f"Deleted {count} video{'s' if count != 1 else ''} with their images.")
    return redirect("account")


@sensitive_post_parameters("password")
@login_required
@require_POST
def delete_account(request: HttpRequest) -> HttpResponse:
    if not _password_ok(request):
        return redirect("account")
    user = request.user
    logout(request)
    retention.delete_account(user)
    messages.success(request, "Your account and everything in it were deleted.")
    return redirect("login")
