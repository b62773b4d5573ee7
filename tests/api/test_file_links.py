"""Links to a job's files: presigned S3 URLs fetched over real HTTP, and the local folder's signed Django links."""

from __future__ import annotations

import time
from unittest import mock
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from django.core.files.storage import default_storage
from django.test import Client

from generation import storage
from generation.models import Job
from tests.bootstrap import s3_server
from tests.factories import FAKE_JPEG, FAKE_MP4


@pytest.fixture
def alice(user, token_client):
    return token_client(user)


def job_links(client, job) -> dict:
    return client.get(f"/api/v1/jobs/{job.id}/").json()


# -- S3 ----------------------------------------------------------------------------------------------------------

def test_presigned_output_and_poster_download_with_their_content_types(alice, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    body = job_links(alice, job)
    public = f"http://localhost:{s3_server().port}/"
    assert body["output_url"].startswith(public), "links must be signed for the public endpoint"

    video = requests.get(body["output_url"], timeout=10)
    assert video.status_code == 200 and video.content == FAKE_MP4
    assert video.headers["Content-Type"] == "video/mp4"
    poster = requests.get(body["poster_url"], timeout=10)
    assert poster.status_code == 200 and poster.content == FAKE_JPEG
    assert poster.headers["Content-Type"] == "image/jpeg"
    head = s3_server().client().head_object(Bucket=default_storage.bucket_name, Key=job.output_video.name)
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == len(FAKE_MP4)


def test_presigned_link_is_refused_when_tampered_or_unsigned(alice, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    url = job_links(alice, job)["output_url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["X-Amz-Signature"] = "0" * 64
    assert requests.get(f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}", timeout=10).status_code == 403
    assert requests.get(f"{parts.scheme}://{parts.netloc}{parts.path}", timeout=10).status_code == 403


def test_presigned_link_names_the_download_when_asked(user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    url = storage.signed_url(job.output_video.name, download_name="turbosite-video.mp4")
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="turbosite-video.mp4"'


def test_save_bytes_sets_the_content_type_and_replaces(db):
    name = "outputs/0/replace-me.mp4"
    storage.save_bytes(name, b"first", "video/mp4")
    storage.save_bytes(name, b"second", "video/mp4")
    head = s3_server().client().head_object(Bucket=default_storage.bucket_name, Key=name)
    assert head["ContentType"] == "video/mp4" and storage.read_bytes(name) == b"second"
    assert storage.delete_quietly(name) and not default_storage.exists(name)


# -- local folder -----------------------------------------------------------------------------------------------

def local_path(url: str) -> str:
    parts = urlsplit(url)
    assert parts.netloc == "testserver", url
    return f"{parts.path}?{parts.query}"


def test_local_links_serve_the_files_with_types_and_ranges(local_storage, alice, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    assert (local_storage / job.output_video.name).read_bytes() == FAKE_MP4
    body = job_links(alice, job)
    browser = Client()  # no session, no token: the signature is the permission, as with S3

    video = browser.get(local_path(body["output_url"]))
    assert video.status_code == 200 and b"".join(video.streaming_content) == FAKE_MP4
    assert video["Content-Type"] == "video/mp4" and video["Accept-Ranges"] == "bytes"
    assert video["Content-Length"] == str(len(FAKE_MP4))
    poster = browser.get(local_path(body["poster_url"]))
    assert poster["Content-Type"] == "image/jpeg" and b"".join(poster.streaming_content) == FAKE_JPEG
    assert browser.get(local_path(body["input_url"]))["Content-Type"] == "image/png"

    span = browser.get(local_path(body["output_url"]), HTTP_RANGE="bytes=4-11")
    assert span.status_code == 206 and b"".join(span.streaming_content) == FAKE_MP4[4:12]
    assert span["Content-Range"] == f"bytes 4-11/{len(FAKE_MP4)}"
    tail = browser.get(local_path(body["output_url"]), HTTP_RANGE="bytes=-5")
    assert b"".join(tail.streaming_content) == FAKE_MP4[-5:]
    beyond = browser.get(local_path(body["output_url"]), HTTP_RANGE=f"bytes={len(FAKE_MP4)}-")
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(FAKE_MP4)}"


def test_local_links_refuse_tampering_other_names_and_expiry(local_storage, alice, user, other_user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    bobs = make_job(other_user, Job.Status.SUCCEEDED)
    url = job_links(alice, job)["output_url"]
    browser = Client()
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    tampered = browser.get(parts.path, {**query, "s": query["s"][:-2] + "xx"})
    assert tampered.status_code == 403 and b"invalid" in tampered.content
    other_file = browser.get(f"/files/{bobs.output_video.name}", query)
    assert other_file.status_code == 403
    assert browser.get(parts.path).status_code == 403
    as_download = browser.get(parts.path, {**query, "dl": "x.mp4"})  # the download name is signed too
    assert as_download.status_code == 403

    with mock.patch("time.time", return_value=time.time() - 3600):
        old = storage.signed_url(job.output_video.name)
    expired = browser.get(old)
    assert expired.status_code == 403 and b"expired" in expired.content


def test_local_download_name_sets_attachment(local_storage, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    url = storage.signed_url(job.output_video.name, download_name="clip.mp4")
    response = Client().get(url)
    assert response.status_code == 200 and response["Content-Disposition"] == 'attachment; filename="clip.mp4"'


def test_local_delete_removes_files(local_storage, alice, user, make_job):
    job = make_job(user, Job.Status.SUCCEEDED)
    paths = [local_storage / job.input_image.name, local_storage / job.output_video.name,
             local_storage / job.poster.name]
    assert all(p.exists() for p in paths)
    assert alice.delete(f"/api/v1/jobs/{job.id}/").status_code == 204
    assert not any(p.exists() for p in paths)
