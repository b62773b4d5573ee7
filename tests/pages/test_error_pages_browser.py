"""Error pages and the favicon in headless Chromium: no Content-Security-Policy violation on a 404, a CSRF
failure or Django's own debug pages, and /favicon.ico answers from our static files."""

from __future__ import annotations

import pytest
from django.test import RequestFactory
from django.views import defaults

from tests.browser import log_in

pytestmark = pytest.mark.django_db(transaction=True)



def csp_errors(console_errors: list[str]) -> list[str]:
    return [text for text in console_errors if "Content Security Policy" in text]


def test_not_found_and_csrf_failure_pages_raise_no_violation(page, live_server, user, console_errors):
    log_in(page, live_server.url, "alice", user.plain_password)
    missing = page.goto(f"{live_server.url}/no-such-page/")
    assert missing.status == 404
    assert page.locator("[data-testid=error-page] h1").inner_text() == "Page not found"
    # our stylesheet applied (not the browser's default serif page): the CSP let it load
    assert page.evaluate("() => getComputedStyle(document.querySelector('.site-header')).position") == "sticky"

    page.goto(f"{live_server.url}/")
    page.evaluate("() => document.querySelector('#new-video-form input[name=csrfmiddlewaretoken]').value = 'forged'")
    with page.expect_navigation() as sent:
        page.click("[data-testid=submit]")
    assert sent.value.status == 403
    assert page.locator("[data-testid=error-page] h1").inner_text() == "This form has expired"
    assert csp_errors(console_errors) == []


def test_debug_pages_raise_no_violation(page, live_server, settings, console_errors):
    """`make run` serves with DEBUG on, where Django's own 404 page (inline <style>) is what a new user meets."""
    settings.DEBUG = True
    response = page.goto(f"{live_server.url}/no-such-page/")
    assert response.status == 404
    assert "DEBUG = True" in page.content()
    page.wait_for_load_state("load")
    assert csp_errors(console_errors) == []


def test_favicon_is_served_from_static(page, live_server):
    response = page.request.get(f"{live_server.url}/favicon.ico")
    assert response.status == 200
    assert response.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert response.body()[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert response.url.startswith(f"{live_server.url}/static/")


def test_server_error_page_stands_alone_without_inline_code():
    html = defaults.server_error(RequestFactory().get("/")).content.decode()
    assert "Something went wrong on our side" in html
    assert "<style" not in html and "<script" not in html and "favicon" in html
