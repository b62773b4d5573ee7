"""Headless Chromium on the account page against the live server: make an API key (shown once), call the API
with it over HTTP, revoke it; the webhook secret is shown and rotates; the page still fits a phone."""

from __future__ import annotations

import pytest
import requests

from tests.browser import log_in
from turbosite.api_keys.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


def test_make_use_and_revoke_a_key_in_chromium(live_server, page, user, console_errors):
    base = live_server.url
    log_in(page, base, user.username, user.plain_password, next_path="/accounts/")
    page.fill("#key-name", "render farm")
    page.select_option("#key-expiry", "30")
    page.check("input[name=read_only]")
    with page.expect_navigation():
        page.click("text=Make a key")
    key = page.input_value("[data-testid=new-api-key]")
    assert key.startswith("tsk_")
    row = page.inner_text("[data-testid=api-key-row]")
    assert "render farm" in row and "read-only" in row
    last_used = "[data-testid=api-key-row] td:nth-child(6)"
    assert page.inner_text(last_used) == "never"

    jobs = f"{base}/api/v1/jobs/"
    assert requests.get(jobs, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    refused = requests.post(jobs, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]

    page.reload()
    assert page.locator("[data-testid=new-api-key]").count() == 0  # shown once
    assert page.inner_text(last_used) != "never"
    assert ApiKey.objects.get().last_used_at is not None

    with page.expect_navigation():
        page.click("[data-testid=api-key-row] button:has-text('Revoke')")
    assert "revoked" in page.inner_text("[data-testid=api-key-row]")
    assert requests.get(jobs, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 401
    assert console_errors == []


def test_webhook_secret_rotates_and_the_page_fits_a_phone(live_server, page, user, console_errors):
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, live_server.url, user.username, user.plain_password, next_path="/accounts/")
    before = page.input_value("[data-testid=webhook-secret]")
    assert before.startswith("whsec_")
    with page.expect_navigation():
        page.click("text=Rotate secret")
    after = page.input_value("[data-testid=webhook-secret]")
    assert after.startswith("whsec_") and after != before
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert console_errors == []
