"""Login lockouts are keyed on the real client's address: behind the proxy one attacker cannot lock a user out of
the address she logs in from (X-Forwarded-For counts only from a listed proxy), a valid API token keeps working
during a lockout, and a failure during the lockout does not extend it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client, RequestFactory

from turbosite.client_ip import client_ip

pytestmark = pytest.mark.django_db

PROXY = "10.0.0.2"
ATTACKER = "203.0.113.9"
ALICE_HOME = "198.51.100.7"


@pytest.fixture
def behind_proxy(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]


def _login(client: Client, password: str, *, remote: str, forwarded: str | None = None, username: str = "alice"):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra)


def _fail_until_locked(settings, **where) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(Client(), "guess", **where)


@pytest.mark.parametrize(("remote", "forwarded", "expected"), [
    (PROXY, ALICE_HOME, ALICE_HOME),                                  # one proxy
    (PROXY, f"1.2.3.4, {ALICE_HOME}, 10.0.0.7", ALICE_HOME),          # chain of proxies; leftmost is client-written
    (ATTACKER, ALICE_HOME, ATTACKER),                                 # not a proxy: its header is not believed
    (PROXY, None, PROXY),                                             # a proxy that sent no header
    (PROXY, "garbage", PROXY),
])
def test_client_address_believes_forwarded_for_only_from_listed_proxies(behind_proxy, remote, forwarded, expected):
    extra = {"REMOTE_ADDR": remote} | ({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})
    assert client_ip(RequestFactory().get("/", **extra)) == expected


def test_without_listed_proxies_forwarded_for_is_ignored(settings):
    settings.TRUSTED_PROXIES = []
    assert client_ip(RequestFactory().get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ALICE_HOME)) == PROXY


def test_failures_through_the_proxy_do_not_lock_out_the_user_elsewhere(behind_proxy, user, settings):
    _fail_until_locked(settings, remote=PROXY, forwarded=ATTACKER)

    assert _login(Client(), user.plain_password, remote=PROXY, forwarded=ATTACKER).status_code == 429
    home = _login(Client(), user.plain_password, remote=PROXY, forwarded=ALICE_HOME)
    assert home.status_code == 302, "alice's own address is not locked by someone else's failures"


def test_spoofed_forwarded_for_from_outside_neither_escapes_nor_frames(behind_proxy, user, settings):
    # A client that talks to us directly and writes X-Forwarded-For: each guess claims another address.
    for index in range(settings.AXES_FAILURE_LIMIT):
        _login(Client(), "guess", remote=ATTACKER, forwarded=f"198.51.100.{index + 20}")

    assert _login(Client(), user.plain_password, remote=ATTACKER, forwarded="198.51.100.99").status_code == 429
    assert _login(Client(), user.plain_password, remote=PROXY, forwarded=ALICE_HOME).status_code == 302


def test_a_valid_api_token_works_during_a_lockout(behind_proxy, user, settings, token_client):
    _fail_until_locked(settings, remote=PROXY, forwarded=ALICE_HOME)
    assert _login(Client(), user.plain_password, remote=PROXY, forwarded=ALICE_HOME).status_code == 429

    assert token_client(user).get("/api/v1/jobs/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ALICE_HOME).status_code == 200


def test_a_failure_during_the_lockout_does_not_extend_it(behind_proxy, user, settings):
    where = {"remote": PROXY, "forwarded": ATTACKER}
    _fail_until_locked(settings, **where)
    cooloff = timedelta(hours=settings.AXES_COOLOFF_TIME)
    # Most of the cool-off has passed when the attacker tries again.
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - cooloff
                                 + timedelta(minutes=1))
    assert _login(Client(), "guess again", **where).status_code == 429

    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=2))
    assert _login(Client(), user.plain_password, **where).status_code == 302  # the lockout ended on time
