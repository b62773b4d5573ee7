"""The base layout loads only the site's own assets (the Content-Security-Policy allows 'self' alone) and renders
messages and the blocks every page template relies on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.messages import constants
from django.contrib.messages.storage.fallback import FallbackStorage
from django.template import engines
from django.test import RequestFactory

REPO = Path(__file__).resolve().parents[2]
FOUNDATION_FILES = [REPO / "templates" / "base.html", REPO / "static" / "css" / "site.css",
                    *sorted((REPO / "templates" / "registration").glob("*.html")),
                    *sorted((REPO / "templates" / "accounts").glob("*.html"))]
# Anything that makes a browser fetch from elsewhere: script/link/img/iframe sources, CSS url() and @import.
EXTERNAL_LOAD = re.compile(
    r"""(?:<(?:script|img|iframe|source|video|audio)\b[^>]*\bsrc|<link\b[^>]*\bhref)\s*=\s*["']?(?:https?:)?//"""
    r"""|url\(\s*["']?(?:https?:)?//|@import\s+(?:url\()?\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)
INLINE_CODE = re.compile(r"<script\b(?![^>]*\bsrc=)|\bstyle\s*=|<style\b|\bon[a-z]+\s*=\s*[\"']", re.IGNORECASE)


@pytest.mark.parametrize("path", FOUNDATION_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_external_or_inline_assets(path):
    text = path.read_text()
    assert not EXTERNAL_LOAD.search(text), f"{path} loads something from another origin"
    if path.suffix == ".html":
        assert not INLINE_CODE.search(text), f"{path} has inline script/style that a 'self' CSP would block"


def test_detector_catches_what_it_should():
    assert EXTERNAL_LOAD.search('<script src="https://cdn.example.com/x.js"></script>')
    assert EXTERNAL_LOAD.search("body { background: url(//cdn.example.com/a.png) }")
    assert EXTERNAL_LOAD.search('<link rel="stylesheet" href="https://fonts.example.com/css">')
    assert not EXTERNAL_LOAD.search('<a href="https://example.com/docs">docs</a>')
    assert INLINE_CODE.search('<div style="color: red">') and INLINE_CODE.search('<button onclick="x()">')


@pytest.mark.django_db
def test_base_renders_blocks_and_messages(user):
    template = engines["django"].from_string(
        '{% extends "base.html" %}{% block title %}Probe{% endblock %}'
        '{% block content %}<p id="probe">content block</p>{% endblock %}'
        '{% block scripts %}<script src="/static/js/probe.js"></script>{% endblock %}'
    )
    request = RequestFactory().get("/")
    request.user = user
    request.session = {}
    request._messages = FallbackStorage(request)
    request._messages.add(constants.SUCCESS, "Saved <b>safely</b>")

    html = template.render({"messages": request._messages}, request)

    assert "<title>Probe · TurboSite</title>" in html
    assert '<p id="probe">content block</p>' in html
    assert html.index('<script src="/static/js/probe.js">') > html.index("</footer>")
    assert '<li class="message message-success">Saved &lt;b&gt;safely&lt;/b&gt;</li>' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert 'href="/static/css/site.css"' in html
