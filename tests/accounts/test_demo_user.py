"""`manage.py ensure_demo_user` prints credentials that really log in, and resets the account on every run."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


def _run(*args: str) -> dict[str, str]:
    out = io.StringIO()
    call_command("ensure_demo_user", *args, stdout=out)
    return dict(re.findall(r"^\s+(username|password|API token): (\S+)$", out.getvalue(), re.MULTILINE))


def _logs_in(username: str, password: str) -> bool:
    client = Client()
    client.post("/accounts/login/", {"username": username, "password": password})
    return client.session.get("_auth_user_id") is not None


def test_printed_credentials_log_in_and_token_is_real():
    printed = _run()

    assert printed["username"] == "demo"
    assert _logs_in(printed["username"], printed["password"])
    assert Token.objects.get(user__username="demo").key == printed["API token"]


def test_second_run_resets_password_and_lifts_lockout(settings):
    first = _run()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        Client().post("/accounts/login/", {"username": "demo", "password": "wrong"})
    assert not _logs_in("demo", first["password"]), "the account should be locked now"

    second = _run()

    assert second["password"] != first["password"]
    assert get_user_model().objects.filter(username="demo").count() == 1
    assert _logs_in("demo", second["password"])
    assert not _logs_in("demo", first["password"])
    assert second["API token"] == first["API token"], "resetting the password keeps the API token"


def test_given_password_and_name_are_used_and_validated():
    printed = _run("--username", "showcase", "--password", "sunlit-canyon-5520")
    assert printed == {"username": "showcase", "password": "sunlit-canyon-5520",
                       "API token": Token.objects.get(user__username="showcase").key}
    assert _logs_in("showcase", "sunlit-canyon-5520")

    with pytest.raises(CommandError, match="demo password rejected: This password is too common"):
        _run("--username", "weak", "--password", "password")
    assert not get_user_model().objects.filter(username="weak").exists()
