"""The New video form in headless Chromium, as a new user meets it: no broken-image icon before a picture is
chosen, the chosen picture survives a form error, and only models that can run here can be picked."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from generation import storage
from generation.models import Job
from tests.browser import log_in
from tests.pages.conftest import sample_png

pytestmark = pytest.mark.django_db(transaction=True)


PREVIEW_SHOWN = ("() => { const i = document.getElementById('image-preview');"
                 " return i && !i.hidden && i.complete && i.naturalWidth === 120; }")


@pytest.fixture
def form_page(page, live_server, user):
    log_in(page, live_server.url, "alice", user.plain_password)
    page.goto(f"{live_server.url}/")
    return page


def test_no_broken_image_before_a_picture_is_chosen(form_page, console_errors):
    preview = form_page.locator("#image-preview")
    # hidden must win over the stylesheet's img { display: block }: nothing drawn, no empty <img> box or icon
    assert form_page.evaluate("() => getComputedStyle(document.getElementById('image-preview')).display") == "none"
    assert preview.bounding_box() is None
    assert form_page.locator("#image-placeholder").is_visible()
    assert console_errors == []


def test_the_chosen_picture_survives_a_form_error(form_page, live_server, user, tmp_path, console_errors):
    picture = tmp_path / "harbour.png"
    picture.write_bytes(sample_png(size=(120, 90)))
    form_page.set_input_files("input[type=file]", str(picture))
    form_page.wait_for_function(PREVIEW_SHOWN)
    form_page.fill("textarea[name=prompt]", "   ")  # blank: the server refuses it
    with form_page.expect_navigation() as sent:
        form_page.click("[data-testid=submit]")
    assert sent.value.status == 400
    assert form_page.locator("#new-video-form .errorlist").first.is_visible()

    # The same picture is back in the form (and previewed) without choosing it again...
    form_page.wait_for_function("() => document.querySelector('input[type=file]').files.length === 1")
    assert form_page.evaluate("() => document.querySelector('input[type=file]').files[0].name") == "harbour.png"
    form_page.wait_for_function(PREVIEW_SHOWN)
    assert form_page.locator("#image-placeholder").is_hidden()

    # ...and it is what the corrected form sends.
    form_page.fill("textarea[name=prompt]", "boats rock in the harbour")
    with form_page.expect_navigation(url=lambda url: "/jobs/" in url):
        form_page.click("[data-testid=submit]")
    job = Job.objects.get(owner=user)
    assert job.prompt == "boats rock in the harbour"
    assert Image.open(io.BytesIO(storage.read_bytes(job.input_image.name))).size == (120, 90)
    storage.delete_quietly(job.input_image.name)

    # A fresh visit of the form starts empty: the kept picture is forgotten.
    form_page.goto(f"{live_server.url}/")
    form_page.wait_for_timeout(300)
    assert form_page.evaluate("() => document.querySelector('input[type=file]').files.length") == 0
    assert [text for text in console_errors if "Content Security Policy" in text] == []


def test_only_installed_models_can_be_picked(form_page, settings):
    options = form_page.locator("select[name=model] option")
    states = {option.get_attribute("value"): (option.is_disabled(), option.text_content())
              for option in options.all()}
    # No TURBO_MODEL_DIR in the suite: only the tiny model (random weights) can run.
    assert states["tiny"][0] is False
    assert states["wan2.2-i2v-a14b"][0] is True
    assert "not installed" in states["wan2.2-i2v-a14b"][1]
    assert form_page.locator("select[name=model]").input_value() == "tiny"
