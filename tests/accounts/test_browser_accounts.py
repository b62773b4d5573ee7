"""Headless Chromium against the live server (PostgreSQL, S3 and Redis behind it): sign up, log out, log in."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.browser import log_in, log_out, sign_up

PASSWORD = "golden-fjord-6612"


@pytest.mark.django_db(transaction=True)
def test_sign_up_then_log_in_in_chromium(live_server, page, console_errors):
    base = live_server.url

    sign_up(page, base, "frida", PASSWORD)
    # Sign-up lands on the home page, which the pages suite owns and tests; from here on this test watches errors.
    console_errors.clear()
    # Sign-up logs in at once: the account page opens without asking for a password.
    page.goto(f"{base}/accounts/")
    assert page.url == f"{base}/accounts/"
    assert page.inner_text("[data-testid=username]") == "frida"
    token = page.input_value("[data-testid=api-token]")
    assert len(token) == 40
    assert get_user_model().objects.get(username="frida").auth_token.key == token

    log_out(page)
    assert page.url.startswith(f"{base}/accounts/login/")
    page.goto(f"{base}/accounts/")
    assert page.url.startswith(f"{base}/accounts/login/?next=/accounts/"), "logged out: the account page needs login"

    page.fill("input[name=username]", "frida")
    page.fill("input[name=password]", "wrong-password-1")
    with page.expect_navigation():
        page.click("form.form button[type=submit]")
    assert "Please enter a correct username and password" in page.inner_text("main")

    log_in(page, base, "frida", PASSWORD, next_path="/accounts/")
    assert page.url == f"{base}/accounts/"
    assert page.inner_text("[data-testid=username]") == "frida"
    # The stylesheet is served and applied (no external assets: the layout is the site's own).
    assert page.evaluate("getComputedStyle(document.querySelector('.card')).borderRadius") == "12px"
    assert console_errors == []


@pytest.mark.django_db(transaction=True)
def test_account_page_fits_phone_width(live_server, page, user):
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, live_server.url, user.username, user.plain_password, next_path="/accounts/")

    assert page.inner_text("[data-testid=username]") == user.username
    # Nothing forces sideways scrolling at phone width.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.is_visible("[data-nav=logout]")
