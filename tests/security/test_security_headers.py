"""Security headers on every kind of response: pages, API, schema, errors, static files."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from turbosite.security import SecurityHeadersMiddleware, content_security_policy, storage_origins

pytestmark = pytest.mark.django_db


def directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


@pytest.mark.parametrize("path", ["/accounts/login/", "/api/v1/jobs/", "/api/schema/", "/healthz",
                                  "/no-such-page/", "/admin/login/"])
def test_headers_on_pages_api_and_errors(client, path):
    response = client.get(path)
    assert response.status_code < 500
    csp = directives(response["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]  # no inline or eval'd script anywhere
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'self'"] and csp["base-uri"] == ["'self'"]
    assert "camera=()" in response["Permissions-Policy"] and "microphone=()" in response["Permissions-Policy"]
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["Cross-Origin-Resource-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_media_may_come_from_the_public_s3_endpoint_and_the_preview(client):
    csp = directives(client.get("/healthz")["Content-Security-Policy"])
    public = settings.S3_PUBLIC_ENDPOINT_URL.rstrip("/")
    assert public.startswith("http://localhost:")  # tests/bootstrap.py signs for another name than the server's
    for name in ("img-src", "media-src"):
        assert csp[name][0] == "'self'"
        assert public in csp[name] and "blob:" in csp[name] and "data:" in csp[name]
    assert settings.S3_ENDPOINT_URL not in csp["img-src"]  # the internal address is never handed to browsers
    assert public not in csp["script-src"] and public not in csp["connect-src"]


def test_middleware_runs_outside_whitenoise_so_static_files_get_headers_too():
    stack = settings.MIDDLEWARE
    assert stack.index("turbosite.security.SecurityHeadersMiddleware") < stack.index(
        "turbosite.static_files.WhiteNoiseMiddleware")


def test_a_view_that_sets_its_own_policy_keeps_it(rf):
    from django.http import HttpResponse

    def view(request):
        response = HttpResponse("x")
        response["Content-Security-Policy"] = "default-src 'none'"
        return response

    response = SecurityHeadersMiddleware(view)(rf.get("/"))
    assert response["Content-Security-Policy"] == "default-src 'none'"
    assert response["Permissions-Policy"]


@override_settings(S3_BUCKET="", TURBO_CSP_MEDIA_ORIGINS=[])
def test_local_storage_needs_no_foreign_origin():
    assert storage_origins() == []
    assert directives(content_security_policy())["img-src"] == ["'self'", "blob:", "data:"]


@override_settings(S3_BUCKET="clips", S3_PUBLIC_ENDPOINT_URL="https://s3.example.org:9000/some/path",
                   S3_ADDRESSING_STYLE="virtual", TURBO_CSP_MEDIA_ORIGINS=["https://cdn.example.org/x", "nonsense"])
def test_virtual_hosted_bucket_and_cdn_origins():
    assert storage_origins() == ["https://s3.example.org:9000", "https://clips.s3.example.org:9000",
                                 "https://cdn.example.org"]


@override_settings(S3_BUCKET="clips", S3_PUBLIC_ENDPOINT_URL="", S3_ENDPOINT_URL="", S3_REGION="eu-west-1")
def test_aws_without_an_endpoint_uses_amazon_names():
    assert "https://clips.s3.eu-west-1.amazonaws.com" in storage_origins()


def test_templates_carry_no_inline_script_or_event_handlers():
    """The CSP would block them in the browser; catch them here instead of as a dead button."""
    import re
    from pathlib import Path

    offenders = []
    for template in Path(settings.BASE_DIR, "templates").rglob("*.html"):
        text = template.read_text()
        for match in re.finditer(r"<script\b([^>]*)>", text, re.IGNORECASE):
            if "src=" not in match.group(1):
                offenders.append(f"{template}: inline <script>")
        if re.search(r"\son[a-z]+\s*=\s*[\"']", text, re.IGNORECASE):
            offenders.append(f"{template}: on* event handler attribute")
        if re.search(r"href\s*=\s*[\"']\s*javascript:", text, re.IGNORECASE):
            offenders.append(f"{template}: javascript: URL")
    assert offenders == []


def test_only_the_api_docs_page_may_use_inline_styles_and_no_page_inline_script(client):
    docs = directives(client.get("/api/docs/")["Content-Security-Policy"])
    assert docs["style-src"] == ["'self'", "'unsafe-inline'"] and docs["script-src"] == ["'self'"]
    for path in ("/accounts/login/", "/api/schema/", "/healthz"):
        assert directives(client.get(path)["Content-Security-Policy"])["style-src"] == ["'self'"], path
