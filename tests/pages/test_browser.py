"""Headless Chromium against the live server and a real worker process (tiny model): sign up, submit a picture,
watch the progress bar move, play the video, and run it again with the same seed."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Error as PlaywrightError

from generation.models import Job
from tests.browser import sign_up
from tests.pages.conftest import sample_png

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "quiet-meadow-5821"
JOB_URL = re.compile(r"/jobs/[0-9a-f-]{36}/$")
PLAYABLE = "() => { const v = document.querySelector('video'); return v && v.readyState >= 1 && v.duration > 0; }"


def progress_until_player(page, timeout_s: float = 180) -> list[float]:
    """Sample the job page's progress bar until the page reloads into the player; returns the values seen."""
    values: list[float] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = page.evaluate("""() => {
                const p = document.querySelector("progress[data-field=progress]");
                return {value: p ? p.value : null, video: !!document.querySelector("video"),
                        error: !!document.querySelector("[data-testid=job-error]")};
            }""")
        except PlaywrightError:  # the page reloaded between two samples
            page.wait_for_load_state()
            continue
        if state["video"] or state["error"]:
            return values
        if state["value"] is not None:
            values.append(state["value"])
        page.wait_for_timeout(150)
    raise AssertionError(f"no player after {timeout_s} s; progress seen: {values}")


def assert_playable(page) -> str:
    video = page.locator("video[data-testid=video]")
    src = video.get_attribute("src")
    response = page.request.get(src)
    assert response.status == 200 and response.headers["content-type"] == "video/mp4"
    page.wait_for_function(PLAYABLE, timeout=20_000)
    duration = page.evaluate("() => document.querySelector('video').duration")
    assert duration > 0
    return src


def test_sign_up_make_a_video_watch_it_and_run_it_again(page, live_server, gpu_worker, console_errors, tmp_path):
    sign_up(page, live_server.url, "carol", PASSWORD)
    page.goto(f"{live_server.url}/")
    image = tmp_path / "lake.png"
    image.write_bytes(sample_png())
    page.set_input_files("input[name=image]", str(image))
    page.wait_for_function("() => !document.getElementById('image-preview').hidden")  # the preview shows
    page.fill("textarea[name=prompt]", "ripples spread across the lake")
    page.click("details.advanced > summary")
    page.fill("input[name=seed]", "2024")
    page.select_option("select[name=num_steps]", "2")
    page.fill("input[name=num_frames]", "17")
    with page.expect_navigation():
        page.click("[data-testid=submit]")
    assert JOB_URL.search(page.url), page.url
    first_url = page.url

    values = progress_until_player(page)
    assert len(set(values)) >= 2 and max(values) > min(values), f"the progress bar did not move: {values}"
    assert page.locator("[data-testid=status]").inner_text().strip().lower() == "succeeded", gpu_worker.log()
    first_src = assert_playable(page)
    assert page.locator("[data-testid=seed]").inner_text() == "2024"

    with page.expect_navigation():
        page.click("[data-testid=rerun]")
    assert JOB_URL.search(page.url) and page.url != first_url
    assert "same settings and seed 2024" in page.content()
    rerun_url = page.url

    # The gallery follows the running job too: its badge turns Succeeded without a reload.
    page.goto(f"{live_server.url}/history/")
    card = page.locator("[data-testid=job-card]").first
    assert card.get_attribute("data-job-poll"), "the newest card is not polling"
    assert card.locator("[data-field=status]").inner_text().strip().lower() in ("queued", "running")
    page.evaluate("() => { window.__sameDocument = true; }")
    card.locator(".badge-succeeded").wait_for(timeout=180_000)
    assert page.evaluate("() => window.__sameDocument === true"), "the gallery reloaded instead of updating"
    assert card.locator("progress").is_hidden()

    page.goto(rerun_url)
    assert page.locator("[data-testid=seed]").inner_text() == "2024"
    assert assert_playable(page) != first_src
    first, rerun = Job.objects.order_by("created_at")
    assert rerun.retry_of_id == first.id and rerun.seed == first.seed == 2024
    assert (rerun.width, rerun.height, rerun.frames) == (first.width, first.height, first.frames) == (
        first.width, first.height, 17)
    assert console_errors == []


def test_pages_fit_a_phone_screen(page, live_server, user, console_errors):
    page.set_viewport_size({"width": 375, "height": 740})
    from tests.browser import log_in

    log_in(page, live_server.url, user.username, user.plain_password)
    for path in ("/", "/history/"):
        page.goto(f"{live_server.url}{path}")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
    assert page.locator("[data-testid=empty-state]").is_visible()
    assert console_errors == []
