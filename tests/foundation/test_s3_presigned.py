"""A file written through default_storage to the real S3 server comes back over plain HTTP through a presigned URL
that is signed for the public endpoint (the address browsers use), not the internal one the servers use."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import boto3
import pytest
import requests
from botocore.config import Config
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def _presigned_for(endpoint: str, key: str) -> str:
    options = settings.STORAGES["default"]["OPTIONS"]
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"], region_name=options["region_name"],
        config=Config(signature_version="s3v4", s3={"addressing_style": options["addressing_style"]}),
    )
    return client.generate_presigned_url("get_object", Params={"Bucket": options["bucket_name"], "Key": key},
                                         ExpiresIn=settings.SIGNED_URL_MAX_AGE)


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

    url = _presigned_for(settings.S3_PUBLIC_ENDPOINT_URL, name)

    assert urlsplit(url).netloc == public.netloc
    assert int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0]) == settings.SIGNED_URL_MAX_AGE
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == body


def test_presigned_url_is_bound_to_its_host_and_signature(stored_file):
    name, _ = stored_file
    url = _presigned_for(settings.S3_PUBLIC_ENDPOINT_URL, name)
    parts = urlsplit(url)

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
