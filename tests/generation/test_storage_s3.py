"""A file written through default_storage to the real S3 server comes back over plain HTTP through a presigned URL
that is signed for the public endpoint (the address browsers use), not the internal one the servers use."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from generation.storage import signed_url


@pytest.fixture
def stored_file():
    body = b"\x00TurboSite " + uuid.uuid4().bytes
    name = default_storage.save(f"outputs/presign/{uuid.uuid4().hex}.bin", ContentFile(body))
    yield name, body
    default_storage.delete(name)


def test_presigned_url_for_public_endpoint_serves_the_file(stored_file):
    name, body = stored_file
    public = urlsplit(settings.S3_PUBLIC_ENDPOINT_URL)
    internal = urlsplit(settings.S3_ENDPOINT_URL)
    assert public.netloc != internal.netloc, "the test needs different public and internal addresses"

    url = signed_url(name)

    assert urlsplit(url).netloc == public.netloc
    assert int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0]) == settings.SIGNED_URL_MAX_AGE
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == body


def test_presigned_download_name_sets_attachment(stored_file):
    name, body = stored_file

    response = requests.get(signed_url(name, download_name="my video.mp4"), timeout=10)

    assert response.status_code == 200
    assert response.content == body
    assert response.headers["Content-Disposition"].startswith("attachment")


def test_presigned_url_is_bound_to_its_host_and_signature(stored_file):
    name, _ = stored_file
    parts = urlsplit(signed_url(name))

    # A URL signed for the public name does not work when sent to another host name: the host is signed.
    internal = urlsplit(settings.S3_ENDPOINT_URL)
    assert requests.get(urlunsplit(parts._replace(netloc=internal.netloc)), timeout=10).status_code == 403
    # A tampered signature is refused.
    query = parse_qs(parts.query)
    signature = query["X-Amz-Signature"][0]
    query["X-Amz-Signature"] = [("0" if signature[0] != "0" else "1") + signature[1:]]
    tampered = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    assert requests.get(tampered, timeout=10).status_code == 403
    # Without any signature the bucket is private.
    assert requests.get(urlunsplit(parts._replace(query="")), timeout=10).status_code == 403
