"""Browser fixtures: pytest-django's live server driven by Playwright with Debian's Chromium (no browser download).

Loaded for every suite through `pytest_plugins` in tests/conftest.py. Ask for `page` (a fresh browser context per
test, so no cookies leak between tests) together with `live_server`; `live_server.url` is the site's base URL.
The live server runs the same settings as the rest of the suite: PostgreSQL, Redis and the S3 server (its
database access is transactional, so rows are truly committed and visible to the server thread).

Why the environment flag: Playwright's sync API keeps its asyncio loop registered as running on the main thread
while a browser is open, and Django refuses ORM calls from a thread with a running loop. The ORM calls a browser
test makes are ordinary synchronous ones, so the check is lifted only while a browser module is active.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("TURBO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the test machines run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
]
DEFAULT_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator:
    """One headless Chromium per test module. Playwright gives each launch a fresh temporary profile directory."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package (make browser)")
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Console errors and uncaught page exceptions seen by `page` during the test (CSP violations land here)."""
    return []


@pytest.fixture
def page(chromium_browser, console_errors: list[str]) -> Iterator:
    """A page in a fresh browser context (own cookies and storage); `page.set_viewport_size` for phone width."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    browser_page = context.new_page()
    browser_page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    browser_page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    try:
        yield browser_page
    finally:
        context.close()


# -- steps that several browser tests take ------------------------------------------------------------------------

def sign_up(page, base_url: str, username: str, password: str, email: str | None = None) -> None:
    """Fill and send the sign-up form; afterwards the browser is logged in (the caller checks where it landed)."""
    page.goto(f"{base_url}/accounts/signup/")
    page.fill("input[name=username]", username)
    page.fill("input[name=email]", email or f"{username}@example.com")
    page.fill("input[name=password1]", password)
    page.fill("input[name=password2]", password)
    with page.expect_navigation():
        page.click("form.form button[type=submit]")


def log_in(page, base_url: str, username: str, password: str, next_path: str = "") -> None:
    page.goto(f"{base_url}/accounts/login/" + (f"?next={next_path}" if next_path else ""))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form.form button[type=submit]")


def log_out(page) -> None:
    with page.expect_navigation():
        page.click("[data-nav=logout]")
