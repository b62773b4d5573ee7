"""Account flows through Django's test client: sign-up, log in/out, password change and reset, the API token page."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

pytestmark = pytest.mark.django_db

STRONG = "quiet-meadow-4821"


def _logged_in_user_id(client: Client) -> str | None:
    return client.session.get("_auth_user_id")


def _signup(client: Client, username: str = "carol", email: str = "carol@example.com", password: str = STRONG,
            password2: str | None = None, **extra):
    return client.post("/accounts/signup/", {"username": username, "email": email, "password1": password,
                                             "password2": password if password2 is None else password2, **extra})


def _login(client: Client, username: str, password: str, **extra):
    return client.post("/accounts/login/", {"username": username, "password": password, **extra})


# -- sign-up ----------------------------------------------------------------------------------------------------

def test_signup_creates_user_logs_in_and_issues_token(client):
    page = client.get("/accounts/signup/")
    assert page.status_code == 200
    assert b'name="password1"' in page.content

    response = _signup(client)

    assert response.status_code == 302
    assert response["Location"] == "/"
    carol = get_user_model().objects.get(username="carol")
    assert carol.email == "carol@example.com"
    assert carol.check_password(STRONG)
    assert _logged_in_user_id(client) == str(carol.pk)
    assert Token.objects.filter(user=carol).exists()


def test_signup_follows_safe_next_only(client):
    response = _signup(client, next="/accounts/")
    assert response["Location"] == "/accounts/"

    other = Client()
    response = _signup(other, username="dave", email="dave@example.com", next="https://evil.example.net/")
    assert response["Location"] == "/"


@pytest.mark.parametrize(("password", "message"), [
    ("password", "This password is too common."),
    ("x7!", "This password is too short."),
    ("4829173650", "This password is entirely numeric."),
    ("carol1234", "The password is too similar to the username."),
])
def test_signup_applies_password_validators(client, password, message):
    response = _signup(client, password=password)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not get_user_model().objects.filter(username="carol").exists()
    assert _logged_in_user_id(client) is None


def test_signup_rejects_mismatch_duplicate_name_and_duplicate_email(client, user):
    mismatch = _signup(client, password2=STRONG + "x")
    taken_name = _signup(client, username="alice", email="new@example.com")
    taken_email = _signup(client, email="ALICE@example.com")

    assert "The two password fields" in mismatch.content.decode()
    assert "A user with that username already exists." in taken_name.content.decode()
    assert "An account with this e-mail address already exists." in taken_email.content.decode()
    assert get_user_model().objects.count() == 1


def test_signup_page_sends_logged_in_users_home(client, user):
    client.force_login(user)
    assert client.get("/accounts/signup/")["Location"] == "/"


# -- log in / log out -------------------------------------------------------------------------------------------

def test_login_with_right_password_and_not_with_wrong(client, user):
    wrong = _login(client, "alice", "not-her-password")
    assert wrong.status_code == 200
    assert "Please enter a correct username and password" in wrong.content.decode()
    assert _logged_in_user_id(client) is None

    right = _login(client, "alice", user.plain_password, next="/accounts/")
    assert right.status_code == 302
    assert right["Location"] == "/accounts/"
    assert _logged_in_user_id(client) == str(user.pk)


def test_repeated_failures_lock_the_login(client, user, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "alice", "guess")
    locked = _login(client, "alice", user.plain_password)

    assert locked.status_code == 429
    assert _logged_in_user_id(client) is None


def test_logout_is_post_only(client, user):
    client.force_login(user)

    assert client.get("/accounts/logout/").status_code == 405
    assert _logged_in_user_id(client) == str(user.pk)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert _logged_in_user_id(client) is None


def test_logout_requires_csrf_token(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    assert client.post("/accounts/logout/").status_code == 403
    assert _logged_in_user_id(client) == str(user.pk)


def test_nav_shows_the_right_links(client, user, django_user_model):
    anonymous = client.get("/accounts/login/").content.decode()
    assert 'data-nav="signup"' in anonymous and 'data-nav="logout"' not in anonymous

    client.force_login(user)
    member = client.get("/accounts/").content.decode()
    assert 'data-nav="logout"' in member and 'data-nav="account"' in member
    assert 'data-nav="admin"' not in member

    staff = django_user_model.objects.create_user("erin", "erin@example.com", STRONG, is_staff=True)
    client.force_login(staff)
    assert 'data-nav="admin"' in client.get("/accounts/").content.decode()


# -- password change and reset ----------------------------------------------------------------------------------

def test_password_change_needs_login_and_the_old_password(client, user):
    assert client.get("/accounts/password/change/")["Location"].startswith("/accounts/login/")

    client.force_login(user)
    wrong_old = client.post("/accounts/password/change/", {
        "old_password": "nope", "new_password1": STRONG, "new_password2": STRONG})
    assert "Your old password was entered incorrectly" in wrong_old.content.decode()

    weak = client.post("/accounts/password/change/", {
        "old_password": user.plain_password, "new_password1": "12345678", "new_password2": "12345678"})
    assert "This password is too common." in weak.content.decode()

    done = client.post("/accounts/password/change/", {
        "old_password": user.plain_password, "new_password1": STRONG, "new_password2": STRONG})
    assert done["Location"] == "/accounts/password/change/done/"
    assert _logged_in_user_id(client) == str(user.pk), "the session that changed the password stays logged in"
    user.refresh_from_db()
    assert user.check_password(STRONG) and not user.check_password(user.plain_password)


def test_password_reset_by_email_link(client, user):
    sent = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert sent["Location"] == "/accounts/password/reset/sent/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.com"]
    assert message.subject == "Reset your TurboSite password"
    link = re.search(r"http://testserver(/accounts/password/reset/[^/\s]+/[^/\s]+/)", message.body).group(1)

    form_page = client.get(link, follow=True)
    assert b'name="new_password1"' in form_page.content
    set_url = form_page.redirect_chain[-1][0]
    done = client.post(set_url, {"new_password1": STRONG, "new_password2": STRONG})
    assert done["Location"] == "/accounts/password/reset/done/"

    user.refresh_from_db()
    assert user.check_password(STRONG)
    fresh = Client()
    assert _login(fresh, "alice", STRONG).status_code == 302
    # The link worked once.
    assert "This link does not work" in Client().get(link, follow=True).content.decode()


def test_password_reset_for_unknown_address_sends_nothing_and_reveals_nothing(client, user):
    response = client.post("/accounts/password/reset/", {"email": "nobody@example.com"})

    assert response["Location"] == "/accounts/password/reset/sent/"
    assert mail.outbox == []


# -- account page and API token -----------------------------------------------------------------------------------

def test_account_page_needs_login(client):
    response = client.get("/accounts/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/accounts/"


def test_account_page_shows_own_token_only(client, user, other_user):
    theirs = Token.objects.create(user=other_user)
    client.force_login(user)

    page = client.get("/accounts/").content.decode()

    mine = Token.objects.get(user=user)
    assert f'value="{mine.key}"' in page
    assert theirs.key not in page
    assert "alice@example.com" in page


def test_regenerate_token_replaces_the_old_one(client, user):
    client.force_login(user)
    client.get("/accounts/")
    old = Token.objects.get(user=user).key

    response = client.post("/accounts/token/regenerate/", follow=True)

    new = Token.objects.get(user=user).key
    assert new != old
    assert f'value="{new}"' in response.content.decode()
    assert "The old one no longer works." in response.content.decode()
    auth = TokenAuthentication()
    assert auth.authenticate_credentials(new)[0] == user
    with pytest.raises(AuthenticationFailed):
        auth.authenticate_credentials(old)


def test_regenerate_token_is_post_only_and_csrf_protected(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/accounts/")
    before = Token.objects.get(user=user).key

    assert client.get("/accounts/token/regenerate/").status_code == 405
    assert client.post("/accounts/token/regenerate/").status_code == 403
    assert Token.objects.get(user=user).key == before

    page = client.get("/accounts/").content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert client.post("/accounts/token/regenerate/", {"csrfmiddlewaretoken": csrf}).status_code == 302
    assert Token.objects.get(user=user).key != before


def test_regenerate_token_needs_login(client):
    response = client.post("/accounts/token/regenerate/")
    assert response["Location"].startswith("/accounts/login/")
